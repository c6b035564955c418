"""One copy of a model's weights for all of its graphs.

The exported graphs (encoder, decoder, scorer, scorer_core, sampler) are separate ONNX files, and
each holds its own copy of the weights it uses: the encoder's are in three files, the decoder's in
three more. Loaded as they are, every ONNX Runtime session keeps its own copy. Here the verified
bytes of every graph are read for their initializers (a few lines of protobuf reading, so the serve
image needs no `onnx` package); initializers with the same dtype, shape and bytes become one array,
handed to each session with `SessionOptions.add_initializer` (ONNX Runtime uses it in place).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ONNX TensorProto.DataType -> numpy; initializers of other types stay inside their graph.
DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
          10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
MIN_SHARED_BYTES = 1024  # smaller initializers (scalars, shapes) are not worth a name lookup
# Field numbers of onnx.proto3: ModelProto.graph, GraphProto.initializer, and in TensorProto dims,
# data_type, name, raw_data, data_location (1 = EXTERNAL).
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
TENSOR_DIMS, TENSOR_TYPE, TENSOR_NAME, TENSOR_RAW, TENSOR_LOCATION = 1, 2, 8, 9, 14


@dataclass(frozen=True)
class Initializer:
    """One initializer of a graph: its name, and where its raw bytes lie in the file."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass
class SharedWeights:
    """The arrays a model's sessions share, one per distinct (dtype, shape, bytes)."""

    arrays: dict[bytes, np.ndarray] = field(default_factory=dict)  # digest -> array (kept alive with the sessions)
    values: dict[int, Any] = field(default_factory=dict)  # id(array) -> its onnxruntime.OrtValue (no copy)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())

    def for_graph(self, data: bytes) -> dict[str, np.ndarray]:
        """name -> the shared array, for each large initializer of one graph's ONNX bytes."""
        view = memoryview(data)
        named = {}
        for init in initializers(data):
            raw = view[init.start:init.end]
            digest = hashlib.blake2b(raw, digest_size=20, person=f"{init.dtype.str}{init.shape}"[:16].encode()).digest()
            array = self.arrays.get(digest)
            if array is None:
                # A copy: the graph's bytes are dropped once its session exists.
                array = self.arrays[digest] = np.frombuffer(raw, dtype=init.dtype).reshape(init.shape).copy()
            named[init.name] = array
        return named

    def ort_value(self, array: np.ndarray) -> Any:
        """The one OrtValue over a shared array (it reads the array's memory: no copy)."""
        import onnxruntime as ort

        value = self.values.get(id(array))
        if value is None:
            value = self.values[id(array)] = ort.OrtValue.ortvalue_from_numpy(array)
        return value


def initializers(data: bytes) -> Iterator[Initializer]:
    """The top-level graph's large initializers held as raw_data (what the exporter writes for weights)."""
    for number, start, end in _fields(data, 0, len(data)):
        if number == MODEL_GRAPH:
            for inner, s, e in _fields(data, start, end):
                if inner == GRAPH_INITIALIZER:
                    init = _tensor(data, s, e)
                    if init is not None and init.end - init.start >= MIN_SHARED_BYTES:
                        yield init


def _tensor(data: bytes, start: int, end: int) -> Initializer | None:
    dims: list[int] = []
    dtype = name = raw = None
    for number, s, e in _fields(data, start, end):
        if number == TENSOR_DIMS:
            dims.extend(_varints(data, s, e) if e >= 0 else [s])
        elif number == TENSOR_TYPE:
            dtype = DTYPES.get(s)
        elif number == TENSOR_NAME:
            name = data[s:e].decode()
        elif number == TENSOR_RAW:
            raw = (s, e)
        elif number == TENSOR_LOCATION and s == 1:
            return None  # external data: not in these bytes
    if dtype is None or name is None or raw is None:
        return None
    np_dtype = np.dtype(dtype).newbyteorder("<")
    if raw[1] - raw[0] != int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize:
        return None  # not what the header says: leave it to ONNX Runtime to judge
    return Initializer(name, np_dtype, tuple(dims), raw[0], raw[1])


def _fields(data: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field; (number, value, -1) of each varint."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value, -1
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > end:
                raise ValueError("ONNX bytes: a field runs past its message")
            yield number, pos, pos + length
            pos += length
        elif wire in (1, 5):  # fixed64, fixed32
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"ONNX bytes: unsupported protobuf wire type {wire}")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("ONNX bytes: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _varints(data: bytes, start: int, end: int) -> list[int]:
    values, pos = [], start
    while pos < end:
        value, pos = _varint(data, pos)
        values.append(value)
    return values
