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
import re
import tokenize

import numpy as np
from numpy.lib import format as npy_format

from service.core.errors import InvalidInput, MalformedBody, PayloadTooLarge

# What numpy's header parser raises on bytes a client made up: its own ValueErrors, and what escapes
# it from tokenize (a header that is not a complete literal) and ast (nesting past the recursion limit).
HEADER_ERRORS = (ValueError, TypeError, OSError, EOFError, SyntaxError, RecursionError, tokenize.TokenError)
OBJECT_REPR = re.compile(r"<([\w.]+) object at 0x[0-9a-fA-F]+>")
MAX_REASON_CHARS = 300  # numpy's messages quote the header, which may be 10 kB


def load_npy(body: bytes, *, field: str, max_items: int) -> np.ndarray:
    """The numeric array an .npy body holds (a read-only view of the body; no pickles)."""
    stream = io.BytesIO(body)
    try:
        version = npy_format.read_magic(stream)
        # Versions 2.0 and 3.0 share the 4-byte header length; the header itself is bounded (10 kB).
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
    except HEADER_ERRORS as exc:
        raise MalformedBody(f"{field}: the body is not a valid .npy array: {_reason(exc)}") from None
    if dtype.hasobject or dtype.kind not in "fiu":
        raise InvalidInput(f"{field}: the .npy array must be numeric, got dtype {dtype}")
    if any(d < 0 for d in shape):
        raise MalformedBody(f"{field}: the body is not a valid .npy array: negative dimension in shape {shape}")
    if shape and shape[0] > max_items:
        raise PayloadTooLarge(f"{field}: the .npy header claims {shape[0]} items; the limit is {max_items} per request")
    count = math.prod(shape)  # Python ints: a claimed shape cannot overflow
    claimed, offset = count * dtype.itemsize, stream.tell()
    if claimed != len(body) - offset:
        raise InvalidInput(f"{field}: the .npy header claims shape {list(shape)} of {dtype} ({claimed} bytes), "
                           f"but the body holds {len(body) - offset} bytes after the header")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran_order else "C")


def _reason(exc: BaseException) -> str:
    """Why the header was refused, without object reprs (no heap addresses in answers)."""
    if isinstance(exc, (tokenize.TokenError, RecursionError)):
        return "the header is not a Python literal"
    text = OBJECT_REPR.sub(lambda m: m.group(1), str(exc)) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + "..."


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as an .npy body (no pickles): answers with `Accept: application/x-npy`, and the client's requests."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()
