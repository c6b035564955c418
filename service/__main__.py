"""`python -m service` / `vaeserve serve`: one uvicorn worker (the batcher is in-process)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings


def serve(overrides: dict[str, Any] | None = None) -> int:
    settings = Settings(**(overrides or {}))
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, workers=1, timeout_graceful_shutdown=int(settings.shutdown_drain_timeout_s))
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
