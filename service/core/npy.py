"""An .npy request body read without trusting its header.

np.load allocates what the header claims before it reads the data: a 200-byte body claiming shape
(10**12, 784) made it try 2.79 PiB (MemoryError, a 500), and a claim of a few GB is allocated
before the short read is noticed. Here the claimed shape and dtype are checked against the item
limit and the bytes that actually came, and the array is a view of the body, so nothing the client
claims is allocated.
"""

from __future__ import annotations

import io
import math

import numpy as np
from numpy.lib import format as npy_format

from service.core.errors import InvalidInput, MalformedBody, PayloadTooLarge


def load_npy(body: bytes, *, field: str, max_items: int) -> np.ndarray:
    """The numeric array an .npy body holds (a read-only view of the body; no pickles)."""
    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        # Versions 2.0 and 3.0 share the 4-byte header length; the header itself is bounded (10 kB).
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except (ValueError, TypeError, OSError, EOFError) as exc:
        raise MalformedBody(f"body is not a valid .npy array: {exc}") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise InvalidInput(f"{field}: the .npy array must be numeric, got dtype {dtype}")
    if any(d < 0 for d in shape):
        raise MalformedBody(f"body is not a valid .npy array: negative dimension in shape {shape}")
    if shape and shape[0] > max_items:
        raise PayloadTooLarge(f"{field}: the .npy header claims {shape[0]} items; the limit is {max_items} per request")
    count = math.prod(shape)  # Python ints: a claimed shape cannot overflow
    claimed, offset = count * dtype.itemsize, stream.tell()
    if claimed != len(body) - offset:
        raise InvalidInput(f"{field}: the .npy header claims shape {list(shape)} of {dtype} ({claimed} bytes), "
                           f"but the body holds {len(body) - offset} bytes after the header")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as an .npy body (no pickles): answers with `Accept: application/x-npy`, and the client's requests."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
