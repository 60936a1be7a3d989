"""`python -m cli` runs the `digits` command."""

import sys

from cli.main import main

sys.exit(main())
