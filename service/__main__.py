"""`python -m service`: the same as `vaeserve serve` (service/server/main.py), settings from VAESERVE_*."""

import sys

from service.server.main import serve

sys.exit(serve())
