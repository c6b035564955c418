"""The JSON fast path gives exactly orjson's fields, with plain rows of numbers as an array, and
leaves everything it cannot prove to orjson (so answers and error messages do not change)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.http import json_body

pytestmark = pytest.mark.skipif(json_body.simdjson is None, reason="pysimdjson is not installed")

FAST = [
    b'{"inputs": [[0.1, 0.25, 1]], "mc_samples": 1}',
    b'{"inputs": [[0, 1, 2], [3.5e-3, -0.0, 7]], "seed": 3, "score": "elbo", "explain": false, "target_fpr": null}',
    b'{"mc_samples": 16, "inputs": [[1e-300, 123456789.125, -2]]}',
    b'{"inputs": [[5]], "note": "no brackets here"}',
]
SLOW = [
    b'{"inputs": [[1, 2], [3]]}',  # ragged
    b'{"inputs": [[1, 2, 3], [4]], "x": 1}',
    b'{"inputs": [[[1, 2], [3, 4]]]}',  # nested image layout: answered nested
    b'{"inputs": [[[], 1, [2, 3]]]}',  # a row whose flattening has the right length
    b'{"inputs": [[1, true]]}',
    b'{"inputs": [[1, null]]}',
    b'{"inputs": [[1, "2"]]}',
    b'{"inputs": ["iVBORw0KGgo="]}',  # PNG strings
    b'{"inputs": [1, 2]}',
    b'{"inputs": []}',
    b'{"inputs": [[]]}',
    b'{"inputs": [[9007199254740993, 1]]}',  # not exactly a double
    b'{"inputs": [[1]], "inputs": [[2]]}',  # duplicate key: orjson keeps the last
    b'{"inputs": [[1]], "start": [0.5]}',  # a list field beside it
    b'{"inputs": [[1]], "options": {"a": 1}}',
    b'{"inputs": [[1]], "note": "a [ bracket"}',
    b'[{"inputs": [[1]]}]',
]
BAD = [b'{"inputs": [[1, 2]]', b'{"inputs": [[1e400]]}', b'{"inputs": [[NaN]]}', b'', b'{"inputs": [[1,]]}']


@pytest.mark.parametrize("body", FAST)
def test_plain_rows_of_numbers_come_back_as_the_same_doubles(body: bytes) -> None:
    fast, reference = json_body.loads(body), orjson.loads(body)
    assert isinstance(fast["inputs"], np.ndarray) and fast["inputs"].dtype == np.float64
    rows, expected = fast.pop("inputs"), np.asarray(reference.pop("inputs"), dtype=np.float64)
    np.testing.assert_array_equal(rows, expected)
    assert np.signbit(rows).tolist() == np.signbit(expected).tolist()  # -0.0 stays -0.0
    assert fast == reference and [type(v) for v in fast.values()] == [type(v) for v in reference.values()]


@pytest.mark.parametrize("body", SLOW)
def test_anything_else_is_exactly_what_orjson_returns(body: bytes) -> None:
    assert json_body.loads(body) == orjson.loads(body)


@pytest.mark.parametrize("body", BAD)
def test_invalid_json_raises_orjsons_error(body: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError) as fast:
        json_body.loads(body)
    with pytest.raises(orjson.JSONDecodeError) as reference:
        orjson.loads(body)
    assert str(fast.value) == str(reference.value)
