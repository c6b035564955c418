"""score_id: a self-describing, HMAC-signed token per scored item, so feedback can quote a score
without the service writing anything per request.

A token carries what feedback needs (model, version, score variant, the score, the threshold it was
compared with, whether it was flagged, when) and a per-request nonce with the item's index, which
makes it unique. It is signed with HMAC-SHA256 (truncated to 128 bits) under a key every worker
shares (VAESERVE_SCORE_ID_SECRET, or one generated once and kept in the store), so a token the
service did not issue, or one edited on the way, is refused. Issuing one costs a few microseconds
(a struct, a copied HMAC, base64); docs/feedback-and-jobs.md compares it with writing each score.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import struct
import time
from dataclasses import dataclass

from service.core.errors import InvalidInput

FORMAT = 1
MAC_BYTES = 16
NONCE_BYTES = 8
_FIXED = struct.Struct("<B8sIddBI")  # format, nonce, item index, score, threshold (NaN: none), flagged, issued (s)


@dataclass(frozen=True)
class ScoreRecord:
    """What a valid score_id says."""

    key: str  # unique per scored item: "<nonce hex>:<index>"
    model: str
    version: str
    variant: str
    score: float
    threshold: float | None
    flagged: bool
    issued_at: int  # unix seconds


class ScoreIds:
    """Issue and read score_ids under one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the score_id secret must be at least 16 bytes")
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def issue(self, *, model: str, version: str, variant: str, scores: list[float], threshold: float | None,
              flags: list[bool]) -> list[str]:
        """One token per item of a request (scores and flags in item order)."""
        nonce = os.urandom(NONCE_BYTES)
        names = _names(model, version, variant)
        now = int(time.time())
        cut = math.nan if threshold is None else threshold
        tokens = []
        for index, (score, flagged) in enumerate(zip(scores, flags)):
            payload = _FIXED.pack(FORMAT, nonce, index, score, cut, flagged, now) + names
            mac = self._mac.copy()
            mac.update(payload)
            tokens.append(base64.urlsafe_b64encode(payload + mac.digest()[:MAC_BYTES]).rstrip(b"=").decode("ascii"))
        return tokens

    def read(self, token: object, *, field: str) -> ScoreRecord:
        """The record a token carries; InvalidInput naming `field` when it is not one this service signed."""
        if not isinstance(token, str) or not 0 < len(token) <= 1024:
            raise InvalidInput(f"{field}: a score_id is the string an /anomaly-score result carries")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidInput(f"{field}: not a score_id (not base64url)") from None
        payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        expected = self._mac.copy()
        expected.update(payload)
        if len(raw) <= _FIXED.size + MAC_BYTES or not hmac.compare_digest(mac, expected.digest()[:MAC_BYTES]):
            raise InvalidInput(f"{field}: not a score_id this service issued (unknown, forged or altered)")
        fmt, nonce, index, score, cut, flagged, issued = _FIXED.unpack_from(payload)
        if fmt != FORMAT:
            raise InvalidInput(f"{field}: score_id format {fmt} is not supported")
        model, version, variant = _unnames(payload[_FIXED.size:])
        return ScoreRecord(f"{nonce.hex()}:{index}", model, version, variant, score,
                           None if math.isnan(cut) else cut, bool(flagged), issued)


def _names(*names: str) -> bytes:
    out = b""
    for name in names:
        raw = name.encode("utf-8")
        out += struct.pack("<H", len(raw)) + raw
    return out


def _unnames(raw: bytes) -> tuple[str, str, str]:
    names, at = [], 0
    for _ in range(3):
        (size,) = struct.unpack_from("<H", raw, at)
        names.append(raw[at + 2:at + 2 + size].decode("utf-8"))
        at += 2 + size
    return names[0], names[1], names[2]
