"""What models and versions exist on disk: a repository scan, or one artifacts folder. No loading.

A scan reads only each version's manifest.json bytes (for a fingerprint, and the single-folder
case's name and version); verifying and loading the graphs is the registry's job, per version.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from model.manifest import MANIFEST_NAME
from model.repository import NAME_PATTERN, POLICY_NAME, VERSION_PATTERN
from service.core.policy import PolicyError, TrafficPolicy


@dataclass(frozen=True)
class VersionSource:
    path: Path
    # Changes when the manifest does (a re-export in place), so a rescan reloads that version.
    fingerprint: str


@dataclass
class ModelSource:
    name: str
    versions: dict[str, VersionSource]
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    primary: str = ""
    available: list[str] = field(default_factory=list)
    problem: str | None = None  # why the model cannot serve at all (bad policy, no versions)


def fingerprint(folder: Path) -> str:
    try:
        return hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError:
        return "no-manifest"


def scan_repository(root: Path) -> dict[str, ModelSource]:
    """Every `<root>/<name>/<version>/` folder; names that are not plain are skipped."""
    if not root.is_dir():
        raise FileNotFoundError(f"model repository {root} is not a folder")
    models: dict[str, ModelSource] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name)):
        versions = {v.name: VersionSource(v, fingerprint(v)) for v in model_dir.iterdir()
                    if v.is_dir() and VERSION_PATTERN.match(v.name)}
        source = ModelSource(model_dir.name, versions)
        try:
            source.policy = TrafficPolicy.read(model_dir / POLICY_NAME)
            source.primary, source.available = source.policy.resolve(set(versions))
        except PolicyError as exc:
            source.problem = f"{model_dir / POLICY_NAME}: {exc}" if versions else "no version folders"
        models[source.name] = source
    return models


def single_folder(artifacts_dir: Path) -> ModelSource:
    """VAESERVE_ARTIFACTS_DIR as a one-model repository: name and version from its manifest (or the
    folder's name while the manifest cannot be read; loading then reports why)."""
    name, version = artifacts_dir.resolve().name or "model", "unknown"
    try:
        meta = json.loads((artifacts_dir / MANIFEST_NAME).read_text())["model"]
        name, version = str(meta["name"]), str(meta["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return ModelSource(name, {version: VersionSource(artifacts_dir, fingerprint(artifacts_dir))},
                       primary=version, available=[version])
