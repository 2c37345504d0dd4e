"""Reading the arrays of a reply: zero-copy ``.npy`` views and a cheap finiteness test (BENCHMARKS.md:
aggregation). Both are exact: anything but the plain layout falls back to Flower's ``Array.numpy()``."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["all_finite", "npy_view"]

_NPY_MAGIC = b"\x93NUMPY"
_NUMERIC_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex: no objects, no pickles


def all_finite(arr: np.ndarray) -> bool:
    """True iff no element is NaN or ±inf.

    For float16/float32 this is one float64 sum, without the boolean array ``np.isfinite`` makes: finite values
    of at most 32 bits cannot overflow a float64 sum, while any NaN or infinity makes the sum NaN or infinite.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and arr.dtype.itemsize <= 4:
        return bool(np.isfinite(arr.sum(dtype=np.float64)))
    return bool(np.isfinite(arr).all())


@functools.lru_cache(maxsize=4096)
def _npy_layout(dtype: str, shape: tuple[int, ...]) -> tuple[np.dtype, bytes, int] | None:
    """(dtype, the header ``np.save`` writes for a C-ordered array of it, element count); None if not numeric."""
    try:
        descr = np.dtype(dtype)
    except TypeError:
        return None
    if descr.kind not in _NUMERIC_KINDS or descr.hasobject:
        return None
    header = f"{{'descr': '{descr.str}', 'fortran_order': False, 'shape': {shape!r}, }}".encode("latin1")
    return descr, header, math.prod(shape)


def npy_view(data: bytes, *, dtype: str, shape: Sequence[int]) -> np.ndarray | None:
    """A read-only, zero-copy view of ``.npy`` bytes (what Flower's ``Array`` carries), or None.

    Flower's ``Array.numpy()`` parses each array's header with ``np.load`` (a Python literal parse per array,
    the main cost of reading a reply of many small tensors) and copies the data. This returns a view over
    ``data`` instead, but only when the header is exactly what ``np.save`` writes for a C-ordered array of the
    declared numeric ``dtype`` and ``shape`` and the payload has exactly that many bytes; anything else gives
    None, and the caller falls back to ``Array.numpy()``.
    """
    shape = tuple(int(d) for d in shape)
    layout = _npy_layout(str(dtype), shape)
    if layout is None or data[:6] != _NPY_MAGIC or len(data) < 10:
        return None
    descr, expected, count = layout
    if data[6] == 1:
        start, header_len = 10, int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        start, header_len = 12, int.from_bytes(data[8:12], "little")
    else:
        return None
    offset = start + header_len
    if (data[start:start + len(expected)] != expected or data[start + len(expected):offset].strip(b" \n")
            or len(data) - offset != count * descr.itemsize):
        return None
    return np.frombuffer(data, dtype=descr, count=count, offset=offset).reshape(shape)
