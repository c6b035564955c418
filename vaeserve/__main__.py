"""`python -m vaeserve ...`: the same as the `vaeserve` command."""

import sys

from vaeserve.cli import main

sys.exit(main())
