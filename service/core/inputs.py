"""Turn request items (flat lists, nested lists, base64 PNG) into a checked float32 matrix, and back.

Every message names the field and the item index, so a client can find its mistake.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from model.config import VAEConfig
from model.table_schema import TableSchema
from service.core.errors import InvalidInput, PayloadTooLarge

Layout = Literal["flat", "nested", "png", "npy", "records"]
# Images are opened as these formats only, never by Pillow's autodetection: an EPS body would reach
# Ghostscript (a remote-code-execution path where it is installed), and the API says PNG or JPEG.
IMAGE_FORMATS = ("PNG", "JPEG")
# Decoding is bounded before it starts, from each image's header: an item may decode to at most
# ITEM_PIXEL_FACTOR times the model's pixels (at least MIN_ITEM_PIXELS), and a request to at most
# REQUEST_PIXEL_FACTOR times the pixels of its items at the model's size (at least MIN_REQUEST_PIXELS).
# Decoding runs at ~5 ns a pixel here (a 5.5 kB, 5792x5792 1-bit PNG took 170 ms), so a request's
# budget costs tens of milliseconds, not the 43 s that 256 such items took with 2 x 4096^2 per item.
ITEM_PIXEL_FACTOR = 64
MIN_ITEM_PIXELS = 1 << 20
REQUEST_PIXEL_FACTOR = 16
MIN_REQUEST_PIXELS = 1 << 22
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class InputSpec:
    """What one item must look like, from the manifest."""

    shape: tuple[int, ...]  # e.g. (1, 28, 28) or (30,)
    value_range: tuple[float, float] | None  # (0, 1) for images, None for tabular features
    is_image: bool
    table: TableSchema | None = None  # a table model: items are records, encoded by this schema
    features: int = field(init=False)
    # Flat, the full shape, and for one-channel images the shape without the channel.
    accepted_shapes: frozenset[tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:  # derived once: these are read on every request
        features = int(np.prod(self.shape))
        shapes = {(features,), self.shape}
        if self.is_image and self.shape[0] == 1:
            shapes.add(self.shape[1:])
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "accepted_shapes", frozenset(shapes))

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> InputSpec:
        """From a manifest (or a model card, which carries the same `input` and `config`)."""
        value_range = manifest["input"].get("range")
        table = manifest["input"].get("table")
        return cls(shape=tuple(manifest["input"]["shape"]), value_range=tuple(value_range) if value_range else None,
                   is_image=VAEConfig.from_dict(manifest["config"]).is_image,
                   table=TableSchema.from_dict(table) if table else None)


def parse_items(value: Any, *, field: str, spec: InputSpec, max_items: int,
                resize: bool = False) -> tuple[np.ndarray, Layout]:
    """A non-empty list of items (or an .npy array) -> ((n, F) float32, the layout to answer in).
    resize: an image of another size than the model's is resized to it (bilinear) instead of refused."""
    if isinstance(value, np.ndarray):
        return _parse_array(value, field=field, spec=spec, max_items=max_items), "npy"
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field}: must be a non-empty list of items, got {_describe(value)}")
    if len(value) > max_items:
        raise PayloadTooLarge(f"{field}: {len(value)} items exceed the limit of {max_items} per request")
    if isinstance(value[0], str):
        return _parse_pngs(value, field=field, spec=spec, resize=resize), "png"
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput(_ragged_message(value, field=field, spec=spec)) from None
    if array.dtype.kind not in "fiu":
        raise InvalidInput(_type_message(value, field=field))
    return _parse_array(array, field=field, spec=spec, max_items=max_items), "flat" if array.ndim == 2 else "nested"


def _parse_array(array: np.ndarray, *, field: str, spec: InputSpec, max_items: int) -> np.ndarray:
    """Numbers (from JSON lists or an .npy body) -> (n, F) float32, shape and values checked."""
    if array.ndim == 0 or len(array) == 0:
        raise InvalidInput(f"{field}: the .npy array must hold at least one item")
    if len(array) > max_items:
        raise PayloadTooLarge(f"{field}: {len(array)} items exceed the limit of {max_items} per request")
    if array.dtype.kind not in "fiu":
        raise InvalidInput(f"{field}: the .npy array must be numeric, got dtype {array.dtype}")
    if array.shape[1:] not in spec.accepted_shapes:
        raise InvalidInput(f"{field}: each item must have shape {_shapes_text(spec)}, got {list(array.shape[1:])}")
    items = array.reshape(len(array), spec.features)
    check_values(items, field=field, spec=spec)
    return items.astype(np.float32)


def parse_latents(value: Any, *, field: str, latent_dim: int, max_items: int = 1) -> np.ndarray:
    """One latent vector (list of latent_dim numbers) -> (latent_dim,) float32."""
    if not isinstance(value, list) or len(value) != latent_dim:
        raise InvalidInput(f"{field}: must be a list of {latent_dim} numbers, got {_describe(value)}")
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput(f"{field}: must be a flat list of {latent_dim} numbers") from None
    if array.dtype.kind not in "fiu" or array.ndim != 1:
        raise InvalidInput(f"{field}: must be a flat list of {latent_dim} numbers")
    if not np.isfinite(array).all():
        raise InvalidInput(f"{field}: contains NaN, infinite or out-of-float32-range values")
    if np.abs(array).max() > 1e4:
        raise InvalidInput(f"{field}: latent values must be within ±10000")
    return array.astype(np.float32)


def format_items(values: np.ndarray, *, layout: Layout, spec: InputSpec) -> list[Any]:
    """Answer in the caller's layout: flat lists, nested lists in the manifest's shape, PNG, or a table's records."""
    if spec.table is not None and layout != "npy":
        return spec.table.decode(values)
    if layout == "png":
        return [encode_png(row, spec=spec) for row in values]
    if layout == "npy":
        return values.tolist()
    if layout == "nested":
        return values.reshape(len(values), *spec.shape).tolist()
    return values.tolist()


def to_pixels(rows: np.ndarray, *, spec: InputSpec) -> np.ndarray:
    """Items (N, F) in [0, 1], channels first, as uint8 images (N, H, W) or (N, H, W, 3)."""
    channels, height, width = (spec.shape[0], spec.shape[-2], spec.shape[-1]) if len(spec.shape) == 3 else (
        1, spec.shape[-2], spec.shape[-1])
    pixels = (np.clip(rows, 0, 1) * 255).round().astype(np.uint8).reshape(len(rows), channels, height, width)
    return pixels[:, 0] if channels == 1 else pixels.transpose(0, 2, 3, 1)


def png_bytes(pixels: np.ndarray) -> bytes:
    """One uint8 image, (H, W) grey or (H, W, 3) RGB, as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png(row: np.ndarray, *, spec: InputSpec) -> str:
    """One image item as base64 PNG (grey or RGB, as the model is)."""
    return base64.b64encode(png_bytes(to_pixels(row[None], spec=spec)[0])).decode("ascii")


def heatmap_png(feature_nll: np.ndarray, *, spec: InputSpec) -> str:
    """Per-pixel NLL (summed over a colour model's channels) scaled to 0..1 by its own maximum, as a
    grey base64 PNG."""
    values = np.clip(np.asarray(feature_nll, dtype=np.float64), 0, None)
    per_pixel = values.reshape(-1, spec.shape[-2], spec.shape[-1]).sum(0)  # (H, W)
    top = per_pixel.max()
    pixels = (np.clip(per_pixel / top if top > 0 else per_pixel, 0, 1) * 255).round().astype(np.uint8)
    return base64.b64encode(png_bytes(pixels)).decode("ascii")


def is_image_list(value: Any) -> bool:
    """Items that are images (base64 strings): decoding them is work to do off the event loop."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], str)


def _parse_pngs(value: list[Any], *, field: str, spec: InputSpec, resize: bool) -> np.ndarray:
    if not spec.is_image:
        raise InvalidInput(f"{field}: this model takes numeric feature lists, not images")
    from PIL import Image

    height, width = spec.shape[-2], spec.shape[-1]
    item_limit = max(MIN_ITEM_PIXELS, ITEM_PIXEL_FACTOR * height * width)
    budget = max(MIN_REQUEST_PIXELS, REQUEST_PIXEL_FACTOR * height * width * len(value))
    images = []
    for i, item in enumerate(value):  # headers first: nothing is decoded until the whole request fits
        if not isinstance(item, str):
            raise InvalidInput(f"{field}[{i}]: mix of images and numbers; send one kind per request")
        try:
            raw = base64.b64decode(item.split(",", 1)[-1], validate=True)  # a data: URL prefix is allowed
            opened = Image.open(io.BytesIO(raw), formats=IMAGE_FORMATS)  # reads the header only
        except Image.DecompressionBombError:  # Pillow's own bound (~179 Mpx): far past ours, refused alike
            raise PayloadTooLarge(f"{field}[{i}]: the image is larger than this {width}x{height} model accepts "
                                  f"({item_limit} pixels at most); resize it first") from None
        except (binascii.Error, ValueError, OSError, SyntaxError) as exc:
            raise InvalidInput(f"{field}[{i}]: not a valid base64-encoded PNG or JPEG image: {_reason(exc)}") from None
        area = opened.size[0] * opened.size[1]
        if area > item_limit:
            raise PayloadTooLarge(f"{field}[{i}]: a {opened.size[0]}x{opened.size[1]} image is larger than this "
                                  f"{width}x{height} model accepts ({item_limit} pixels at most); resize it first")
        budget -= area
        if budget < 0:
            raise PayloadTooLarge(f"{field}: the images of this request hold more pixels than it may decode "
                                  f"({max(MIN_REQUEST_PIXELS, REQUEST_PIXEL_FACTOR * height * width * len(value))} "
                                  "in all); send smaller images or fewer per request")
        images.append(opened)
    for i, opened in enumerate(images):  # after the bounds: too many pixels is a 413 whatever the sizes
        if opened.size != (width, height) and not resize:
            raise InvalidInput(f"{field}[{i}]: a {opened.size[0]}x{opened.size[1]} image; this model takes "
                               f"{width}x{height} (send \"resize\": true to have it resized)")
    colour = len(spec.shape) == 3 and spec.shape[0] == 3
    rows = np.empty((len(value), spec.features), dtype=np.float32)
    for i, opened in enumerate(images):
        try:
            with opened:  # grey or RGB as the model is, whatever the file is
                image = opened.convert("RGB" if colour else "L")
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)  # (H, W) or (H, W, 3)
                rows[i] = (pixels.transpose(2, 0, 1) if colour else pixels).reshape(-1) / 255.0  # channels first
        except (ValueError, OSError, SyntaxError) as exc:  # a header that promised more than the data holds
            raise InvalidInput(f"{field}[{i}]: not a valid image: {_reason(exc)}") from None
    return rows


def _reason(exc: BaseException) -> str:
    """An exception's message without object reprs (no heap addresses in answers)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(exc)) or type(exc).__name__


def check_values(items: np.ndarray, *, field: str, spec: InputSpec) -> None:
    """Finite, within float32, within the manifest's range; the fast path is two reductions."""
    if spec.value_range is not None:
        low, high = spec.value_range
        if items.min() >= low and items.max() <= high:  # False for NaN too, so NaN goes the slow way
            return
    elif np.abs(items).max() <= FLOAT32_MAX:  # False for NaN and inf
        return
    with np.errstate(invalid="ignore"):
        finite = (np.abs(items) <= FLOAT32_MAX).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise InvalidInput(f"{field}[{i}]: contains NaN, infinite or out-of-float32-range values")
    if spec.value_range is not None:
        bad = (items < low).any(axis=1) | (items > high).any(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidInput(f"{field}[{i}]: values must be in [{low:g}, {high:g}] (pixel intensities), "
                               f"got min {items[i].min():g} max {items[i].max():g}")


def _ragged_message(value: list[Any], *, field: str, spec: InputSpec) -> str:
    expected = None
    for i, item in enumerate(value):
        try:
            shape = np.shape(item)
        except ValueError:
            return f"{field}[{i}]: nested lists of unequal length; expected shape {_shapes_text(spec)}"
        expected = shape if expected is None else expected
        if shape != expected:
            return f"{field}[{i}]: shape {list(shape)} differs from item 0's {list(expected)}; expected {_shapes_text(spec)}"
    return f"{field}: items must be equal-shaped lists of numbers, expected {_shapes_text(spec)}"


def _type_message(value: list[Any], *, field: str) -> str:
    for i, item in enumerate(value):
        flat = np.asarray(item, dtype=object).reshape(-1)
        for element in flat:
            if isinstance(element, bool) or not isinstance(element, (int, float)):
                return f"{field}[{i}]: every value must be a number, got {_describe(element)}"
    return f"{field}: every value must be a number"


def _shapes_text(spec: InputSpec) -> str:
    return " or ".join(str(list(s)) for s in sorted(spec.accepted_shapes, key=len))


def _describe(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return f"{type(value).__name__} of length {len(value)}"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}"
