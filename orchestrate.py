#!/usr/bin/env python3
"""Run a federated IMDB experiment end to end: ``python orchestrate.py --help`` (the same as ``fedimdb run``)."""

import sys

from fedimdb.console import run_command

if __name__ == "__main__":
    sys.exit(run_command("run", sys.argv[1:]))
