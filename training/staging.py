"""Write an export into a staging folder beside its target and move it in only once it is complete, so
a refused or failed export leaves the target (an artifacts folder, a repository) exactly as it was."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from model.manifest import MANIFEST_NAME

T = TypeVar("T")


def staged_write(target: Path, write: Callable[[Path], T]) -> T:
    """write(staging) the whole export, then move it to target (manifest.json last, so a service that
    rescans meanwhile never sees a manifest before its files). On any error the staging folder, and
    any parent folder this call created, are removed."""
    target = Path(target)
    if target.is_symlink():  # make run's `artifacts` links into its repository: never rewrite a served version
        raise ValueError(f"{target} is a link (to {target.resolve()}); export to a folder of its own, or with "
                         "--repository to a new version")
    created = _first_missing(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A dot name: never a version folder of a repository (model/repository.py), never served.
    staging = target.parent / f".{target.name}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = write(staging)
        if not target.exists():
            staging.rename(target)
        else:
            for path in sorted(staging.iterdir(), key=lambda p: p.name == MANIFEST_NAME):
                os.replace(path, target / path.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(target.parent, up_to=created)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return result


def _first_missing(folder: Path) -> Path | None:
    """The outermost ancestor of folder (or folder itself) that does not exist yet; None if it exists."""
    missing = None
    for path in [folder, *folder.parents]:
        if path.exists():
            break
        missing = path
    return missing


def _remove_empty(folder: Path, *, up_to: Path | None) -> None:
    """Remove folder and its parents up to `up_to` (the folders this export created) while empty."""
    if up_to is None:
        return
    for path in [folder, *folder.parents]:
        try:
            path.rmdir()
        except OSError:  # not empty (someone else wrote there) or already gone
            return
        if path == up_to:
            return
