#!/usr/bin/env python3
"""Run a federated IMDB experiment end to end: ``python orchestrate.py --help``."""

import sys

from fedimdb.cli import main

if __name__ == "__main__":
    sys.exit(main())
