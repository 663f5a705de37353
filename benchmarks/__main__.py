"""``python -m benchmarks``: run the benchmark protocol (or ``overhead``) from the shell."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
