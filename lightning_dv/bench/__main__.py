"""``python -m lightning_dv.bench``: run the benchmark protocol (or ``overhead``) from the shell."""

import sys

from lightning_dv.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
