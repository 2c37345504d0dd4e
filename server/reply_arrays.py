"""The arrays of a trained reply: a vectorised fast path, then the exact checks that decide and word every refusal.

A reply's arrays travel in one of two layouts (``common/packing.py``): one flat array per branch under the branch's
name (what a sample-mode site sends), or Flower's own one array per tensor (central mode). Either way the server
accepts only float32 tensors of the global model in the branches the site holds (whole branches, the shared head
included), of the global shapes, finite, with an update whose L2 norm is within ``max-update-norm``.

:meth:`server.flat_arrays.ReplyLayout.read` accepts a reply only when it certainly passes every one of those checks
(both layouts); anything else is read again here, array by array, and the first check that fails says why.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from common.models.params import BRANCHES, branch_of
from common.packing import branch_layout, unpack_branch
from server.array_io import all_finite, npy_view
from server.flat_arrays import ReplyLayout
from server.identity import RegisteredSite

__all__ = ["ReadArrays", "Rejected", "read_arrays"]


class Rejected(ValueError):
    """Why the server fails a reply (the message is the server's own words; it is logged and recorded)."""


class ReadArrays(NamedTuple):
    """A reply's validated update: its tensors by name, and each branch that came packed as its flat vector."""

    tensors: dict[str, np.ndarray]
    #: branch -> its tensors flattened in packing order (``common/packing.py``): the same values as ``tensors``,
    #: which are views of it; the merge averages it in one piece
    packed: dict[str, np.ndarray]


@lru_cache(maxsize=64)
def _dtype_name(dtype: np.dtype) -> str:
    """``str(dtype)``, once per dtype (numpy builds the name anew each call: ~0.1 ms, 18 000 times a 1000-site round)."""
    return str(dtype)


def _held(branch: str, what: str, site: RegisteredSite) -> None:
    if branch not in site.branches:
        raise Rejected(f"{what} belongs to the {branch} branch, which site '{site.name}' does not hold "
                       f"(registered modalities: {', '.join(site.modalities)})")


def _read(array: Any, what: str, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` (a Flower ``Array``) as numpy, exactly of ``dtype`` and ``shape`` and finite, or Rejected."""
    if array.dtype != _dtype_name(dtype) or tuple(array.shape) != shape:
        raise Rejected(f"{what} is {array.dtype} {tuple(array.shape)}; expected exactly {dtype} {shape}, as sent")
    try:  # a zero-copy view where the .npy header is the plain one, else Flower's copy
        value = npy_view(array.data, dtype=array.dtype, shape=array.shape)
        value = array.numpy() if value is None else value
    except Exception as err:  # noqa: BLE001 - whatever the bytes are, they are not the declared array
        raise Rejected(f"{what} cannot be read as a numpy array ({type(err).__name__})") from None
    if value.dtype != dtype or value.shape != shape:
        raise Rejected(f"{what} declares {array.dtype} {tuple(array.shape)} but holds {value.dtype} {value.shape}")
    if not all_finite(value):
        raise Rejected(f"{what} contains NaN or inf")
    return value


def _packed(branch: str, array: Any, site: RegisteredSite, global_arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """A branch sent as one flat array (``common/packing.py``), checked against the global model's names and shapes."""
    what = f"packed branch '{branch}'"
    _held(branch, what, site)
    layout = branch_layout(branch, global_arrays)
    dtypes = {global_arrays[k].dtype for k, _ in layout}
    if len(dtypes) != 1:
        raise Rejected(f"the global model's {branch} branch has {'no tensor' if not dtypes else 'mixed dtypes'}; "
                       f"it cannot be sent packed")
    size = sum(math.prod(shape) for _, shape in layout)
    return _read(array, what, dtypes.pop(), (size,))


def read_arrays(items: Iterable[tuple[str, Any]], site: RegisteredSite, global_arrays: Mapping[str, np.ndarray],
                layout: ReplyLayout, max_update_norm: float) -> ReadArrays:
    """A reply's (name, ``flwr.app.Array``) pairs as a validated update of ``site``.

    Raises
    ------
    Rejected
        Naming the first array check the reply fails.
    """
    items = list(items)
    fast = layout.read(items, site.branches, max_update_norm)
    if fast is not None:
        return ReadArrays(*fast)
    out: dict[str, np.ndarray] = {}
    packed: dict[str, np.ndarray] = {}
    for key, array in items:
        current = global_arrays.get(key)
        if current is None and key in BRANCHES:  # a whole branch in one array (common/packing.py)
            packed[key] = _packed(key, array, site, global_arrays)
            tensors = unpack_branch(key, packed[key], global_arrays)
        elif current is None:
            raise Rejected(f"tensor '{key}' is not part of the global model")
        else:  # Flower's own layout: one array per tensor
            _held(branch_of(key), f"tensor '{key}'", site)
            tensors = {key: _read(array, f"tensor '{key}'", current.dtype, current.shape)}
        twice = sorted(set(tensors) & set(out))
        if twice:
            raise Rejected(f"tensors {twice[:3]} are sent twice (packed and on their own)")
        out.update(tensors)
    sent = {branch_of(k) for k in out}
    if "head" not in sent:
        raise Rejected("the update carries no tensor of the shared head")
    for branch in sorted(sent):
        missing = [k for k in global_arrays if branch_of(k) == branch and k not in out]
        if missing:
            raise Rejected(f"the {branch} branch is incomplete: {missing[:3]} missing")
    if max_update_norm > 0:
        norm = math.sqrt(sum(float(np.sum(np.square(v.astype(np.float64) - global_arrays[k])))
                             for k, v in out.items()))
        if not norm <= max_update_norm:
            raise Rejected(f"the update's L2 norm {norm:.4g} exceeds max-update-norm {max_update_norm:g}")
    return ReadArrays(out, packed)
