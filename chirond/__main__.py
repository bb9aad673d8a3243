"""`python -m chirond ...` is `chirond ...` (the local backend starts simulated servers this way)."""

import sys

from chirond.cli import chirond_main

sys.exit(chirond_main())
