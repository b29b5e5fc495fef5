#!/usr/bin/env python3
"""Convert Hamlet training checkpoints to inference checkpoints (the seed's script name).

    python scripts/migrate_checkpoints.py runs/L2_partial_observability/2025-11-05_123456/checkpoints/

The ``hamlet-model migrate`` command under this script's name: same options, output and exit codes.
"""

import sys

from townlet.inference.cli import migrate_main

if __name__ == "__main__":
    sys.exit(migrate_main())
