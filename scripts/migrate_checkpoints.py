#!/usr/bin/env python3
"""Convert Hamlet training checkpoints to inference checkpoints (the seed's script name).

    python scripts/migrate_checkpoints.py runs/L2_partial_observability/2025-11-05_123456/checkpoints/

A thin wrapper around ``hamlet-model migrate``; every option of that command works here.
"""

import sys

from townlet.inference.cli import main

if __name__ == "__main__":
    sys.exit(main(["migrate", *sys.argv[1:]]))
