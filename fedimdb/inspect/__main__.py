"""``python -m fedimdb.inspect``: see fedimdb/inspect/cli.py."""

import sys

from fedimdb.inspect.cli import main

sys.exit(main())
