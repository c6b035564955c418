"""`python -m service.server.healthcheck`: exit 0 when this container's /readyz answers 200 (the slim image has no curl)."""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from typing import Any

from service.settings import Settings

WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}


def readyz_url(settings: Settings) -> str:
    """Where the local server answers: a wildcard bind address is reached on loopback."""
    host = WILDCARD_HOSTS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/readyz"


def main(overrides: dict[str, Any] | None = None, *, timeout_s: float = 2.0) -> int:
    url = readyz_url(Settings(**(overrides or {})))
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as exc:  # 503 while loading or shutting down
        status = exc.code
    except OSError as exc:  # refused, timed out
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url} answered {status}", file=sys.stderr)
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
