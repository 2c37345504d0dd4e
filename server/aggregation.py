"""Modality-aware weighted averaging: pure numpy, no Flower.

Sites hold different modalities, so each reply carries only the tensors of the branches
that site trained. Each tensor is averaged over the sites that sent it, weighted by their
example counts, and merged into the current global arrays: a tensor nobody trained this
round keeps its global value (a hospital without notes neither dilutes nor erases the text
branch).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["BLOCK", "Update", "UpdateError", "all_finite", "check_update", "merge_weighted", "npy_view"]

_NPY_MAGIC = b"\x93NUMPY"
BLOCK = 1 << 15  # elements per block of merge_weighted: 256 KiB of float64 accumulator + 256 KiB scratch
_NUMERIC_KINDS = frozenset("biufc")  # bool, signed, unsigned, float, complex: no objects, no pickles


@dataclass(frozen=True)
class Update:
    site: str  # who sent it (for error messages)
    arrays: Mapping[str, np.ndarray]  # the tensors it trained
    weight: float  # number of training examples


class UpdateError(ValueError):
    """An update that cannot be merged (unknown tensor, wrong shape, bad weight)."""


def check_update(global_arrays: Mapping[str, np.ndarray], update: Update) -> None:
    """Raise :class:`UpdateError` naming the site and tensor if ``update`` does not fit."""
    if not (update.weight > 0 and np.isfinite(update.weight)):
        raise UpdateError(f"site '{update.site}': weight must be a positive number of examples, got {update.weight}")
    for key, arr in update.arrays.items():
        if key not in global_arrays:
            raise UpdateError(f"site '{update.site}': tensor '{key}' is not part of the global model")
        if arr.shape != global_arrays[key].shape:
            raise UpdateError(f"site '{update.site}': tensor '{key}' has shape {arr.shape}, "
                              f"the global model has {global_arrays[key].shape}")
        if not all_finite(arr):
            raise UpdateError(f"site '{update.site}': tensor '{key}' contains NaN or inf")


def all_finite(arr: np.ndarray) -> bool:
    """True iff no element is NaN or ±inf.

    For float16/float32 this is one float64 sum, without the boolean array ``np.isfinite`` makes: finite values
    of at most 32 bits cannot overflow a float64 sum, while any NaN or infinity makes the sum NaN or infinite.
    """
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and arr.dtype.itemsize <= 4:
        return bool(np.isfinite(arr.sum(dtype=np.float64)))
    return bool(np.isfinite(arr).all())


def merge_weighted(global_arrays: Mapping[str, np.ndarray], updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Per-tensor weighted mean over the updates that carry it; other tensors stay global.

    Call :func:`check_update` on each update first (invalid ones are dropped by the caller). Each element is
    accumulated in float64, ``sum_i float64(x_i) * (w_i / W)`` in the order of ``updates``, then cast to the
    global dtype. For speed the elements go in blocks of :data:`BLOCK`: a block's accumulator and scratch stay
    in the CPU cache while every update's slice is added, so memory traffic is one read of each update, and
    nothing is allocated per update.
    """
    merged: dict[str, np.ndarray] = {}
    for key, current in global_arrays.items():
        holders = [u for u in updates if key in u.arrays]
        if not holders:
            merged[key] = np.array(current, copy=True)
            continue
        total = sum(u.weight for u in holders)
        scales = [u.weight / total for u in holders]
        flats = [np.ravel(u.arrays[key]) for u in holders]  # views of C-ordered arrays
        acc = np.zeros(current.size, dtype=np.float64)
        scratch = np.empty(min(current.size, BLOCK), dtype=np.float64)
        for lo in range(0, current.size, BLOCK):
            hi = min(lo + BLOCK, current.size)
            block, tmp = acc[lo:hi], scratch[: hi - lo]
            for flat, scale in zip(flats, scales):
                np.multiply(flat[lo:hi], scale, out=tmp, dtype=np.float64)
                block += tmp
        merged[key] = acc.reshape(current.shape).astype(current.dtype)
    return merged


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
