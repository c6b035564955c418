"""The layout of a model repository, shared by export (writes) and the service (reads). No torch.

    <root>/<model-name>/<version>/manifest.json (+ the graphs the manifest lists)
    <root>/<model-name>/policy.json            (optional: which versions serve, canary, shadow)

Versions are folder names: integers order numerically and come after any other names, which
order as strings, so "latest" is the highest integer (as in Triton's model repository).
"""

from __future__ import annotations

import re
from pathlib import Path

POLICY_NAME = "policy.json"
# Names travel in URLs (/models/{name}/..., v2 `<model>.<graph>`): keep them plain.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: non-integer names first (by string), then integers by value."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


def latest(versions: list[str] | set[str]) -> str:
    return max(versions, key=version_key)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} must be letters, digits, '-' or '_' (at most 128, no dots)")
    return name


def check_version(version: str) -> str:
    if not VERSION_PATTERN.match(version):
        raise ValueError(f"version {version!r} must be letters, digits, '.', '-' or '_' (at most 64)")
    return version


def next_version(root: Path, name: str) -> str:
    """One more than the highest integer version of `name` in the repository ("1" for a new model)."""
    folder = Path(root) / name
    numbers = [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit()] if folder.is_dir() else []
    return str(max(numbers, default=0) + 1)


def version_dir(root: Path, name: str, version: str) -> Path:
    return Path(root) / check_name(name) / check_version(version)
