"""manifest.json: the one contract between training and serving. No torch here.

The service calls load_manifest(), which checks the schema version and every file's sha256
before anything is loaded, so a truncated or tampered artifact never reaches a runtime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from model.config import VAEConfig

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"


class ArtifactError(Exception):
    """The artifacts folder is missing, incomplete, corrupted or of an unknown schema."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write manifest.json with the sha256 of every file it lists."""
    files = manifest.setdefault("files", {})
    for name in list(files):
        files[name] = {"sha256": sha256_file(directory / name), "bytes": (directory / name).stat().st_size}
    manifest["schema_version"] = SCHEMA_VERSION
    path = directory / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def load_manifest(directory: Path, *, verify_files: bool = True) -> dict[str, Any]:
    """Read and verify manifest.json; raise ArtifactError with a plain reason on any problem."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST_NAME} in {directory}: run `vaeserve export` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{path}: schema_version {found!r} is not the supported {SCHEMA_VERSION}")
    for key in ("model", "config", "graphs", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path}: required key {key!r} is missing")
    try:
        VAEConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: invalid model config: {exc}") from exc
    if verify_files:
        for name in manifest["files"]:
            verified_file(directory, name, manifest)
    return manifest


def verified_bytes(path: Path, expected_sha256: str) -> bytes:
    """The file's bytes, once its sha256 matches the manifest's: load from these same bytes, so what
    runs is exactly what was verified. ArtifactError, naming the file, when it is missing or differs."""
    if not path.is_file():
        raise ArtifactError(f"artifact file {path.name} is missing from {path.parent}")
    return check_sha256(path.read_bytes(), expected_sha256, path)


def check_sha256(data: bytes, expected_sha256: str, path: Path) -> bytes:
    """The bytes read from path, if their sha256 is the manifest's; else ArtifactError naming the file."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ArtifactError(
            f"artifact file {path.name} is corrupted: sha256 {actual[:12]}… != manifest {expected_sha256[:12]}…"
        )
    return data


def verified_file(directory: Path, file_name: str, manifest: dict[str, Any]) -> bytes:
    """A file the manifest lists, verified (verified_bytes); ArtifactError if it is not listed."""
    meta = manifest["files"].get(file_name)
    if meta is None:
        raise ArtifactError(f"{file_name} is not listed in the manifest's files")
    return verified_bytes(Path(directory) / file_name, meta["sha256"])
