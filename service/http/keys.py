"""API keys: which paths need one, the key a request presents (parsed once), and the check.

Keys are held and compared as sha256 digests, in constant time, so timing reveals neither a key
nor its position, and a quota file may list digests instead of keys.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from service.core.errors import Forbidden, MalformedHeader, Unauthorized

# Probes must work without secrets (load balancers, kubelets); /metrics is opt-in protected.
ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
ADMIN_PREFIX = "/admin/"


def is_admin(path: str) -> bool:
    """/admin/*, the v2 repository extension's load and unload, and a model's threshold recalibration
    and revert change what the service serves."""
    return path.startswith(ADMIN_PREFIX) or (
        path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload"))) or (
        path.startswith("/models/") and path.endswith(("/threshold/recalibrate", "/threshold/revert")))


def is_page(path: str) -> bool:
    """The web page and its static assets hold no data; the API calls they make still need a key."""
    return path == "/" or path.startswith("/static/")


def is_upkeep(path: str) -> bool:
    """Probes, scrapes and the page: not load, so never counted in flight nor charged to a quota."""
    return path in ALWAYS_OPEN or path == "/metrics" or is_page(path)


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def key_matches(presented: bytes, keys: list[bytes]) -> bool:
    """Compare with every key, constant time each, so timing reveals neither key nor position."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The sha256 of the request's `Authorization: Bearer <key>`, None without one. Two Authorization
    headers are refused: the key check and the quota must never read different ones."""
    found: bytes | None = None
    for name, value in headers:
        if name == b"authorization":
            if found is not None:
                raise MalformedHeader("Authorization: send it once; this request has two")
            found = value
    if found is None:
        return None
    scheme, _, key = found.partition(b" ")
    key = key.strip()
    return digest(key) if scheme.lower() == b"bearer" and key else None


@dataclass
class KeyRing:
    """The accepted keys as sha256 digests, shared by the edge and SIGHUP, which swaps the lists in place."""

    keys: list[bytes] = field(default_factory=list)
    admin_keys: list[bytes] = field(default_factory=list)

    @classmethod
    def of(cls, api_keys: list[str], admin_api_keys: list[str], *, extra_digests: list[bytes] | None = None) -> KeyRing:
        return cls([digest(k) for k in api_keys] + list(extra_digests or []), [digest(k) for k in admin_api_keys])

    def replace(self, other: KeyRing) -> None:
        self.keys, self.admin_keys = other.keys, other.admin_keys

    def check(self, path: str, key: bytes | None, *, open_paths: frozenset[str]) -> None:
        """Unauthorized without a valid key where one is needed; admin routes need an admin key
        (Forbidden when none is configured)."""
        if is_admin(path):
            self._require(key, self.admin_keys, "admin routes are disabled: set VAESERVE_ADMIN_API_KEYS")
        elif self.keys and path not in open_paths and not is_page(path):
            self._require(key, self.keys, "")

    @staticmethod
    def _require(key: bytes | None, keys: list[bytes], disabled_message: str) -> None:
        if not keys:
            raise Forbidden(disabled_message)
        if key is None:
            raise Unauthorized("missing API key: send Authorization: Bearer <key>")
        if not key_matches(key, keys):
            raise Unauthorized("invalid API key")
