"""Item parsing: every accepted layout, and a message naming field and index for every bad value."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.core.errors import InvalidInput, PayloadTooLarge
from service.core.inputs import InputSpec, format_items, parse_items, parse_latents

IMAGE = InputSpec(shape=(1, 28, 28), value_range=(0.0, 1.0), is_image=True)
TABULAR = InputSpec(shape=(5,), value_range=None, is_image=False)


def png_of(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize("item,layout", [([0.5] * 784, "flat"), ([[0.5] * 28] * 28, "nested"), ([[[0.5] * 28] * 28], "nested")])
def test_flat_and_nested_items_become_one_matrix(item: list, layout: str) -> None:  # type: ignore[type-arg]
    x, got_layout = parse_items([item, item], field="inputs", spec=IMAGE, max_items=10)
    assert x.shape == (2, 784) and x.dtype == np.float32 and got_layout == layout
    assert np.shape(format_items(x, layout=got_layout, spec=IMAGE)[0]) == ((784,) if layout == "flat" else (1, 28, 28))


def test_png_items_are_decoded_to_unit_pixels_and_answered_as_png() -> None:
    pixels = np.linspace(0, 1, 784).reshape(28, 28)
    x, layout = parse_items([png_of(pixels)], field="inputs", spec=IMAGE, max_items=10)
    assert layout == "png"
    np.testing.assert_allclose(x[0], pixels.reshape(-1), atol=1 / 255)
    back, _ = parse_items(format_items(x, layout="png", spec=IMAGE), field="inputs", spec=IMAGE, max_items=10)
    np.testing.assert_allclose(back, x, atol=1 / 255)


BAD_ITEMS = [
    ("not a list", "inputs: must be a non-empty list"),
    ([], "inputs: must be a non-empty list"),
    ([[0.5] * 783], "each item must have shape"),
    ([[0.5] * 784, [0.5] * 10], "inputs[1]: shape [10] differs"),
    ([[0.5] * 783 + ["x"]], "inputs[0]: every value must be a number"),
    ([[0.5] * 783 + [None]], "inputs[0]: every value must be a number"),
    ([[0.5] * 784, [0.5] * 783 + [float("nan")]], "inputs[1]: contains NaN"),
    ([[0.5] * 783 + [float("inf")]], "inputs[0]: contains NaN"),
    ([[0.5] * 783 + [1e300]], "inputs[0]: contains NaN, infinite or out-of-float32-range"),
    ([[0.5] * 784, [0.5] * 783 + [1.5]], "inputs[1]: values must be in [0, 1]"),
    ([[-0.1] * 784], "inputs[0]: values must be in [0, 1]"),
    (["bm90IGEgcG5n"], "inputs[0]: not a valid base64-encoded PNG or JPEG image"),
    (["%%%"], "inputs[0]: not a valid base64-encoded PNG or JPEG image"),
    ([{"a": 1}], "every value must be a number"),
]


@pytest.mark.parametrize("value,message", BAD_ITEMS)
def test_bad_items_name_the_field_and_index(value: object, message: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_items(value, field="inputs", spec=IMAGE, max_items=10)
    assert message in error.value.message


def test_too_many_items_is_payload_too_large() -> None:
    with pytest.raises(PayloadTooLarge, match="11 items exceed the limit of 10"):
        parse_items([[0.5] * 784] * 11, field="inputs", spec=IMAGE, max_items=10)


def test_tabular_models_take_any_finite_numbers_but_no_images() -> None:
    x, _ = parse_items([[1e6, -3, 0, 2.5, 7]], field="inputs", spec=TABULAR, max_items=4)
    assert x.shape == (1, 5)
    with pytest.raises(InvalidInput, match="not images"):
        parse_items([png_of(np.zeros((28, 28)))], field="inputs", spec=TABULAR, max_items=4)


@pytest.mark.parametrize("value,message", [([0.0] * 3, "list of 4 numbers"), ("x", "list of 4 numbers"),
                                           ([0, 0, 0, float("nan")], "NaN"), ([0, 0, 0, 1e9], "within"),
                                           ([0, 0, 0, [1]], "flat list")])
def test_bad_latents_are_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_latents(value, field="z_start", latent_dim=4)
