"""A model's traffic policy (`<repository>/<model>/policy.json`): which versions serve, canary, shadow.

    {"serve": "latest" | "all" | ["1", "2"],        which versions answer (default "latest")
     "canary": {"3": 0.1},                           share of un-pinned requests per candidate
     "shadow": {"version": "3", "fraction": 0.05}}   share of requests also scored by a candidate

The primary (default) version is the highest served one; it takes what the canaries leave. A
request pinned to a version (versioned route or X-Model-Version) may use any available version:
the served ones, the canaries and the shadow. Shadow scores go to metrics only.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.repository import latest, version_key


class PolicyError(ValueError):
    """policy.json cannot be read or says something impossible."""


@dataclass(frozen=True)
class Shadow:
    version: str
    fraction: float


@dataclass(frozen=True)
class TrafficPolicy:
    serve: str | tuple[str, ...] = "latest"
    canary: dict[str, float] = field(default_factory=dict)
    shadow: Shadow | None = None

    @classmethod
    def read(cls, path: Path) -> TrafficPolicy:
        """The policy in `path`, or the default (serve latest) when there is no such file."""
        if not path.is_file():
            return cls()
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PolicyError(f"{path} is not valid JSON: {exc}") from None

    @classmethod
    def from_dict(cls, data: Any) -> TrafficPolicy:
        if not isinstance(data, dict) or set(data) - {"serve", "canary", "shadow"}:
            raise PolicyError('policy must be an object with keys among "serve", "canary", "shadow"')
        serve = data.get("serve", "latest")
        if isinstance(serve, list) and serve and all(isinstance(v, str) for v in serve):
            serve = tuple(serve)
        elif serve not in ("latest", "all"):
            raise PolicyError('serve: "latest", "all" or a non-empty list of version strings')
        canary = data.get("canary") or {}
        if not isinstance(canary, dict) or not all(isinstance(w, (int, float)) and 0 <= w <= 1 for w in canary.values()):
            raise PolicyError("canary: an object of version -> weight in [0, 1]")
        if sum(canary.values()) > 1:
            raise PolicyError(f"canary: weights sum to {sum(canary.values()):g}, more than 1")
        shadow = data.get("shadow")
        if shadow is not None:
            if (not isinstance(shadow, dict) or not isinstance(shadow.get("version"), str)
                    or not isinstance(shadow.get("fraction"), (int, float)) or not 0 <= shadow["fraction"] <= 1):
                raise PolicyError('shadow: {"version": "<version>", "fraction": <0..1>}')
            shadow = Shadow(shadow["version"], float(shadow["fraction"]))
        return cls(serve, {str(k): float(w) for k, w in canary.items()}, shadow)

    def to_dict(self) -> dict[str, Any]:
        return {"serve": list(self.serve) if isinstance(self.serve, tuple) else self.serve, "canary": self.canary,
                "shadow": None if self.shadow is None else {"version": self.shadow.version,
                                                            "fraction": self.shadow.fraction}}

    def resolve(self, present: set[str]) -> tuple[str, list[str]]:
        """(primary version, every available version) given the versions present on disk."""
        if not present:
            raise PolicyError("no versions")
        if self.serve == "latest":
            served = {latest(present)}
        elif self.serve == "all":
            served = set(present)
        else:
            served = set(self.serve) & present
            if not served:
                raise PolicyError(f"serve: none of {list(self.serve)} is present (present: {sorted(present, key=version_key)})")
        extra = set(self.canary) | ({self.shadow.version} if self.shadow else set())
        if extra - present:
            raise PolicyError(f"canary/shadow versions {sorted(extra - present)} are not present")
        return latest(served), sorted(served | extra, key=version_key)

    def route(self, primary: str, rng: random.Random) -> str:
        """The version for one un-pinned request: a canary with its weight, else the primary."""
        if self.canary:
            draw = rng.random()
            for version, weight in self.canary.items():
                if draw < weight:
                    return version
                draw -= weight
        return primary

    def shadows(self, rng: random.Random) -> str | None:
        """The shadow version when this request should also be computed by it."""
        if self.shadow is not None and rng.random() < self.shadow.fraction:
            return self.shadow.version
        return None
