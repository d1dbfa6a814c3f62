"""`python -m babyllama ...` (also what `torchrun ... -m babyllama ...` runs)."""

import sys

from babyllama.cli import main

sys.exit(main())
