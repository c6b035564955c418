"""Each artifact file's sha256 checked once per version, not on every load.

A model repository loads and unloads versions all day (LRU, a memory budget); hashing every graph
again on each load is most of a cold load's reading. The first load verifies the bytes it read (the
manifest's one verifier, model/manifest.py) and remembers the file's identity: size, modification
time, inode and device, taken from the open file before and after the read. A later load of the same
unchanged file reads its bytes once and skips the hash; a file rewritten since is verified again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from model.manifest import ArtifactError, check_sha256

FileIdentity = tuple[int, int, int, int]  # size, mtime_ns, inode, device


class VerifiedFiles:
    """path -> (identity, sha256) of files whose bytes matched the manifest; shared by every load."""

    def __init__(self) -> None:
        self._known: dict[Path, tuple[FileIdentity, str]] = {}
        self._lock = threading.Lock()
        self.hashed = 0  # files hashed (tests and benchmarks read it)

    def read(self, directory: Path, file_name: str, manifest: dict[str, Any]) -> bytes:
        """The file's bytes, verified against the manifest now or on an earlier read of the same file."""
        meta = manifest["files"].get(file_name)
        if meta is None:
            raise ArtifactError(f"{file_name} is not listed in the manifest's files")
        path, expected = Path(directory).resolve() / file_name, str(meta["sha256"])
        try:
            with path.open("rb") as handle:
                before = _identity(os.fstat(handle.fileno()))
                data = handle.read()
                after = _identity(os.fstat(handle.fileno()))
        except (FileNotFoundError, IsADirectoryError):
            raise ArtifactError(f"artifact file {file_name} is missing from {directory}") from None
        with self._lock:
            known = self._known.get(path)
        if known == (before, expected) and after == before and len(data) == before[0]:
            return data
        check_sha256(data, expected, path)
        self.hashed += 1
        if after == before:  # written to while read: verified this time, never remembered
            with self._lock:
                self._known[path] = (before, expected)
        return data


def _identity(stat: os.stat_result) -> FileIdentity:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev
