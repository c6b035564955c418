"""What a job scores: an uploaded file (.npy, .csv, .parquet, or a .zip of PNG images) or a file under
the configured input directory, checked in full before the job is accepted, so a job never fails
half-way on a bad item. Every refusal names the problem (service/core/errors.py types)."""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

import numpy as np

from service.core.bulk import located
from service.core.errors import Forbidden, InvalidInput, NotFound, PayloadTooLarge
from service.core.inputs import InputSpec, parse_items
from service.core.itemfiles import Items, read_items

FORMATS = ("npy", "csv", "parquet", "zip")
MAX_ZIP_RATIO = 100  # a member that inflates more than this is treated as a zip bomb (PNGs compress ~1-3x)
CHECK_ITEMS = 4096  # items checked per call of parse_items


def format_of(name: str | None, content_type: str | None) -> str:
    """The upload's format from its file name (?filename=) or content type."""
    suffix = PurePosixPath(name).suffix.lower().lstrip(".") if name else ""
    by_type = {"application/x-npy": "npy", "text/csv": "csv", "application/zip": "zip",
               "application/vnd.apache.parquet": "parquet", "application/x-parquet": "parquet"}
    found = suffix if suffix in FORMATS else by_type.get((content_type or "").split(";")[0].strip().lower())
    if found is None:
        raise InvalidInput(f"upload: give ?filename= ending in one of {', '.join('.' + f for f in FORMATS)} (or a "
                           f"matching content-type); got filename {name!r}, content-type {content_type!r}")
    return found


def unzip_images(archive: Path, into: Path, *, max_items: int, max_bytes: int) -> Path:
    """The PNG members of a zip, flattened into a folder (their names sorted as `vaeserve score` sorts
    a folder); refuses a zip bomb (total size past max_bytes, or a member inflating > MAX_ZIP_RATIO x)."""
    try:
        bundle = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise InvalidInput("upload: not a zip archive (format zip)") from None
    with bundle:
        members = [m for m in bundle.infolist() if not m.is_dir() and m.filename.lower().endswith(".png")]
        if not members:
            raise InvalidInput("upload: the zip holds no .png images")
        if len(members) > max_items:
            raise PayloadTooLarge(f"upload: {len(members)} images exceed the job limit of {max_items} items")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise PayloadTooLarge(f"upload: the zip inflates to {total} bytes, more than the limit of {max_bytes} "
                                  "(a zip bomb?)")
        for m in members:
            if m.file_size > MAX_ZIP_RATIO * max(m.compress_size, 1):
                raise InvalidInput(f"upload: {m.filename} inflates {m.file_size / max(m.compress_size, 1):.0f}x "
                                   f"(more than {MAX_ZIP_RATIO}x): refused as a zip bomb")
        names = [PurePosixPath(m.filename).name for m in members]
        if len(set(names)) != len(names):
            raise InvalidInput("upload: two .png members of the zip have the same file name")
        into.mkdir(parents=True, exist_ok=True)
        for member, name in zip(members, names):
            with bundle.open(member) as source:
                data = source.read(member.file_size + 1)  # never more than it declared
            if len(data) != member.file_size:
                raise InvalidInput(f"upload: {member.filename} is not the size the zip declares")
            (into / name).write_bytes(data)
    return into


def under_input_dir(path: str, input_dir: Path | None) -> Path:
    """A path a job may read: inside input_dir after resolving links and '..'."""
    if input_dir is None:
        raise Forbidden("path: jobs from files are off on this service (set VAESERVE_INPUT_DIR); upload the file")
    root = input_dir.resolve()
    candidate = (root / path).resolve()
    if not candidate.is_relative_to(root):
        raise Forbidden(f"path: {path!r} is outside the input directory")
    if not candidate.exists():
        raise NotFound(f"path: {path!r} does not exist in the input directory")
    return candidate


def load_items(path: Path, *, spec: InputSpec, max_items: int) -> Items:
    """The file's items, every one checked as /anomaly-score checks it (shape, values)."""
    try:
        items = read_items(path, spec=spec)
    except (ValueError, FileNotFoundError) as exc:
        raise InvalidInput(f"input: {str(exc).replace(str(path), path.name)}") from None
    if len(items) > max_items:
        raise PayloadTooLarge(f"input: {len(items)} items exceed the job limit of {max_items}")
    for start in range(0, len(items), CHECK_ITEMS):
        try:
            parse_items(np.ascontiguousarray(items.array[start:start + CHECK_ITEMS]), field="inputs", spec=spec,
                        max_items=CHECK_ITEMS)
        except InvalidInput as exc:  # named by its index in the file, as `vaeserve score` names it
            raise InvalidInput(located(exc.message, start).replace("INPUT item", "input item", 1)
                               .replace("inputs:", "input:", 1)) from None
    return items
