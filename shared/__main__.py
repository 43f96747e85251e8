"""`python -m shared <command>`: see shared/cli.py."""

import sys

from .cli import main

sys.exit(main())
