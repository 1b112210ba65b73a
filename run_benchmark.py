"""Entry point: ``python run_benchmark.py [command] ...``; all logic lives in ``benchmark.cli``."""

import sys

from benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
