"""``python -m hamlet_client.loadtest``: the same as ``hamlet-bench``."""

import sys

from hamlet_client.loadtest.cli import main

sys.exit(main())
