"""`python -m shared <command>`: the operator's command line.

Only starts shared/cli.py's `main` and exits with its code."""

import sys

from .cli import main

sys.exit(main())
