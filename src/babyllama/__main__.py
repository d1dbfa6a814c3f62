"""`python -m babyllama ...` (also what `torchrun ... -m babyllama ...` runs)."""

from babyllama.cli import entry

entry()
