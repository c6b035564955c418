"""Bearer API keys as pure ASGI middleware: constant-time comparison, health probes exempt."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import json_error

# Probes must work without secrets (load balancers, kubelets); /metrics is opt-in protected.
ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
ADMIN_PREFIX = "/admin/"


def is_admin(path: str) -> bool:
    """/admin/* and the v2 repository extension's load and unload change what the service serves."""
    return path.startswith(ADMIN_PREFIX) or (
        path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload")))


def is_page(path: str) -> bool:
    """The web page and its static assets hold no data; the API calls they make still need a key."""
    return path == "/" or path.startswith("/static/")


def key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Compare with every key, constant time each, so timing reveals neither key nor position."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass
class KeyRing:
    """The accepted keys as sha256 digests (so a quota file may list digests instead of keys), shared
    by the middleware and SIGHUP, which swaps the lists in place."""

    keys: list[bytes] = field(default_factory=list)
    admin_keys: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, api_keys: list[str], admin_api_keys: list[str], *, extra_digests: list[bytes] | None = None) -> KeyRing:
        return cls([digest(k) for k in api_keys] + list(extra_digests or []), [digest(k) for k in admin_api_keys])

    def replace(self, other: KeyRing) -> None:
        self.keys, self.admin_keys = other.keys, other.admin_keys


class ApiKeyMiddleware:
    """401 without a valid `Authorization: Bearer <key>`; admin routes (is_admin) need an admin key (403 if
    none set)."""

    def __init__(self, app: ASGIApp, *, keyring: KeyRing, protect_metrics: bool) -> None:
        self.app = app
        self.keyring = keyring
        self.open_paths = ALWAYS_OPEN if protect_metrics else ALWAYS_OPEN | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if is_admin(path):
            problem = self._check(scope, self.keyring.admin_keys, "admin routes are disabled: set VAESERVE_ADMIN_API_KEYS")
        elif self.keyring.keys and path not in self.open_paths and not is_page(path):
            problem = self._check(scope, self.keyring.keys, "")
        else:
            problem = None
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, message, kind = problem
        response = json_error(status, message, kind, {"WWW-Authenticate": "Bearer"} if status == 401 else None)
        await response(scope, receive, send)

    @staticmethod
    def _check(scope: Scope, keys: list[bytes], disabled_message: str) -> tuple[int, str, str] | None:
        if not keys:
            return 403, disabled_message, "forbidden"
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer" or not presented:
            return 401, "missing API key: send Authorization: Bearer <key>", "unauthorized"
        if not key_matches(digest(presented.strip()), keys):
            return 401, "invalid API key", "unauthorized"
        return None
