"""Per-key quotas: token buckets on requests/s and on items x Monte Carlo samples per second.

VAESERVE_KEY_QUOTAS (JSON) or VAESERVE_KEY_QUOTAS_FILE (a JSON file, re-read on SIGHUP):

    {"default": {"requests_per_s": 20, "item_samples_per_s": 50000},          keys not listed below
     "keys": {"team-a":  {"key": "s3cret", "requests_per_s": 5, "item_samples_per_s": 2000, "burst_s": 2},
              "nightly": {"key_sha256": "<hex sha256 of the key>", "requests_per_s": null}}}

A listed key is also an accepted API key; its name (never the key) labels the metrics. A bucket
holds rate x burst_s tokens (burst_s defaults to 1 s) and refills continuously; null or a missing
rate means unlimited. The request bucket is charged before the request runs, the items x samples
bucket once the request is parsed (service.http.deps.admit_work), before anything is queued. The control
plane (service.http.keys.is_admin: /admin/*, v2 repository load and unload) is never charged.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.core.errors import PayloadTooLarge, QuotaExceeded
from service.core.metrics import Metrics
from service.http.keys import KeyRing, is_admin, is_upkeep
from service.http.keys import digest as key_digest
from service.settings import Settings

log = logging.getLogger("vaeserve.quotas")
DEFAULT_NAME = "default"  # the metrics label of every key that is not listed
# Buckets kept, the least recently used dropped first: listed keys are few, but with a `default` and
# no API keys any presented key gets one (that configuration meters, it cannot authenticate).
MAX_TRACKED_KEYS = 10_000
KEY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests_per_s: float | None = Field(None, gt=0)
    item_samples_per_s: float | None = Field(None, gt=0)
    burst_s: float = Field(1.0, gt=0)


class KeyEntry(Limits):
    key: str | None = Field(None, min_length=1)
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def one_key(self) -> KeyEntry:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of `key` and `key_sha256`")
        return self

    def digest(self) -> bytes:
        return key_digest(self.key) if self.key else bytes.fromhex(self.key_sha256 or "")


class QuotaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    default: Limits | None = None
    keys: dict[str, KeyEntry] = Field(default_factory=dict)


class TokenBucket:
    """capacity = rate x burst_s tokens, refilled at rate per second; take() or say how long to wait."""

    def __init__(self, rate_per_s: float, burst_s: float) -> None:
        self.rate, self.capacity = rate_per_s, max(1.0, rate_per_s * burst_s)
        self.tokens, self.updated = self.capacity, time.monotonic()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def take(self, amount: float, now: float) -> float:
        """0.0 if the tokens were taken, else the seconds until there will be enough."""
        self._refill(now)
        if amount <= self.tokens:
            self.tokens -= amount
            return 0.0
        return (amount - self.tokens) / self.rate

    def headers(self, now: float, *, retry_after_s: float = 0.0) -> list[tuple[bytes, bytes]]:
        """RateLimit-Limit/Remaining/Reset (IETF draft-ietf-httpapi-ratelimit-headers), and Retry-After."""
        self._refill(now)
        reset = math.ceil((self.capacity - self.tokens) / self.rate)
        headers = [(b"ratelimit-limit", b"%d" % self.capacity), (b"ratelimit-remaining", b"%d" % self.tokens),
                   (b"ratelimit-reset", b"%d" % reset)]
        if retry_after_s > 0:
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(retry_after_s))))
        return headers


@dataclass
class KeyQuota:
    name: str
    limits: Limits
    requests: TokenBucket | None
    item_samples: TokenBucket | None

    @classmethod
    def of(cls, name: str, limits: Limits) -> KeyQuota:
        def bucket(rate: float | None) -> TokenBucket | None:
            return TokenBucket(rate, limits.burst_s) if rate else None
        return cls(name, limits, bucket(limits.requests_per_s), bucket(limits.item_samples_per_s))


class QuotaBook:
    """The parsed configuration and one KeyQuota per key seen (unlisted keys each get the default's)."""

    def __init__(self, config: QuotaConfig, previous: QuotaBook | None = None) -> None:
        self.config = config
        self.listed = {entry.digest(): (name, Limits(**entry.model_dump(include=set(Limits.model_fields))))
                       for name, entry in config.keys.items()}
        self.active = bool(self.listed) or config.default is not None
        self._quotas: OrderedDict[bytes, KeyQuota] = OrderedDict()
        for digest, old in (previous._quotas.items() if previous else ()):
            name, limits = self._policy(digest)
            if limits == old.limits and name == old.name:  # unchanged: keep its buckets' state
                self._quotas[digest] = old

    @classmethod
    def from_settings(cls, settings: Settings, previous: QuotaBook | None = None) -> QuotaBook:
        """Parse VAESERVE_KEY_QUOTAS or the file; ValueError with the reason when it is wrong."""
        raw: Any = settings.key_quotas or {}
        source = "VAESERVE_KEY_QUOTAS"
        if settings.key_quotas_file is not None:
            source = str(settings.key_quotas_file)
            try:
                raw = json.loads(settings.key_quotas_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ValueError(f"{source}: {exc}") from None
        try:
            config = QuotaConfig.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{source}: {problems}") from None
        bad = [name for name in config.keys if not KEY_NAME.match(name)]
        if bad:
            raise ValueError(f"{source}: key names must match {KEY_NAME.pattern} (they label metrics): {bad}")
        return cls(config, previous)

    def _policy(self, digest: bytes) -> tuple[str, Limits | None]:
        return self.listed.get(digest) or (DEFAULT_NAME, self.config.default)

    def quota(self, digest: bytes) -> KeyQuota | None:
        found = self._quotas.get(digest)
        if found is None:
            name, limits = self._policy(digest)
            if limits is None:
                return None
            found = self._quotas[digest] = KeyQuota.of(name, limits)
            if len(self._quotas) > MAX_TRACKED_KEYS:  # keys nobody vouched for (a default without API
                self._quotas.popitem(last=False)  # keys) must not grow memory without bound
        else:
            self._quotas.move_to_end(digest)
        return found


class QuotaGate:
    """The quota step of a request, in two parts: its request rate at the edge (admit_request), and
    its items x samples once a route has parsed it, before anything is queued (charge_items)."""

    def __init__(self, *, state: Any, metrics: Metrics) -> None:
        self.state, self.metrics = state, metrics  # state.quotas: the QuotaBook, swapped on SIGHUP

    def admit_request(self, key: bytes | None, path: str) -> KeyQuota | None:
        """The key's quota (None: no quota applies) after charging one request; QuotaExceeded when
        it is over its request rate. Probes, scrapes, the page and the control plane are free."""
        book: QuotaBook = self.state.quotas
        free = is_upkeep(path) or is_admin(path)
        quota = book.quota(key) if key is not None and book.active and not free else None
        if quota is None:
            return None
        now = time.monotonic()
        wait_s = quota.requests.take(1, now) if quota.requests else 0.0
        if wait_s > 0:
            assert quota.requests is not None, "only a request bucket makes a request wait"
            self.metrics.key_refusals.labels(key=quota.name, limit="requests").inc()
            raise over_quota(f"key {quota.name!r} is over its quota of {quota.limits.requests_per_s:g} requests per "
                             "second", quota.requests, now, wait_s)
        self.metrics.key_requests.labels(key=quota.name).inc()
        return quota

    def charge_items(self, quota: KeyQuota, cost: int) -> None:
        """Take items x samples from the key's budget; PayloadTooLarge for more than it may ever spend
        at once, QuotaExceeded when it must wait."""
        bucket = quota.item_samples
        if bucket is None:
            return
        if cost > bucket.capacity:
            self.metrics.key_refusals.labels(key=quota.name, limit="item_samples").inc()
            raise PayloadTooLarge(f"the request costs {cost} items x samples, more than key {quota.name!r} may "
                                  f"spend at once ({bucket.capacity:.0f}); split it")
        now = time.monotonic()
        wait_s = bucket.take(cost, now)
        if wait_s > 0:
            self.metrics.key_refusals.labels(key=quota.name, limit="item_samples").inc()
            raise over_quota(f"key {quota.name!r} is over its quota of {quota.limits.item_samples_per_s:g} items x "
                             "samples per second", bucket, now, wait_s)
        self.metrics.key_item_samples.labels(key=quota.name).inc(cost)


def over_quota(message: str, bucket: TokenBucket, now: float, wait_s: float) -> QuotaExceeded:
    headers = {k.decode(): v.decode() for k, v in bucket.headers(now, retry_after_s=wait_s)}
    return QuotaExceeded(f"{message}; retry after {headers['retry-after']}s", headers=headers)


def load_keys_and_quotas(settings: Settings, previous: QuotaBook | None = None) -> tuple[KeyRing, QuotaBook]:
    """The accepted keys (settings, key file, keys listed in the quotas) and the quota book."""
    book = QuotaBook.from_settings(settings, previous)
    ring = KeyRing.of(settings.accepted_api_keys(), settings.admin_api_keys, extra_digests=list(book.listed))
    if book.config.default is not None and not ring.keys:
        log.warning("VAESERVE_KEY_QUOTAS has a default but no API keys are configured: a request without a key "
                    "gets no quota, and each key a client makes up gets its own; configure API keys to meter "
                    "clients")
    return ring, book


def reload_keys_and_quotas(state: Any) -> None:
    """SIGHUP: re-read the key file and the quotas; on any error keep the old ones (and say why)."""
    try:
        ring, book = load_keys_and_quotas(state.settings, state.quotas)
    except (OSError, ValueError) as exc:
        log.error("keys and quotas not reloaded, the previous ones stay: %s", exc)
        return
    state.keyring.replace(ring)
    state.quotas = book
    log.info("reloaded %d API keys and %d key quotas", len(ring.keys), len(book.listed))
