"""How a trained reply's update travels: one flat array per branch, split again by the server.

Flower ships every array of an ``ArrayRecord`` as objects of its own: a 128-byte ``.npy`` header, a chunk, an
``Array`` with its dtype and shape, and its 64-hex object id twice in the record (~465 bytes a tensor). For the
default model's 18 tensors that was 11 % of its 76 KB (BENCHMARKS.md, "Aggregation and bytes"). A sample-mode
reply (and a release without DP) therefore carries each branch it trained as ONE array under the branch's name:
its tensors flattened and concatenated in the sorted order of their names. The server splits it with the names
and shapes of the global model it sent itself (:func:`branch_layout`), so names and shapes need not travel; every
check it made per tensor it still makes (``server/replies.py``). Nothing is added or removed: the same values,
in the same dtype.

A central-mode reply keeps Flower's own layout (one array per tensor): Flower's ``FedAvg`` and its DP wrapper
average and clip it by tensor name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from common.models.params import BRANCHES, branch_of

__all__ = ["REPLY_LAYOUTS", "branch_layout", "pack_branches", "per_tensor", "reply_arrays", "unpack_branch",
           "unpack_reply"]


def branch_layout(branch: str, shapes: Mapping[str, Any]) -> list[tuple[str, tuple[int, ...]]]:
    """The (name, shape) of each tensor of ``branch`` among ``shapes`` (name -> array or shape), in packing order."""
    return [(k, tuple(getattr(v, "shape", v))) for k, v in sorted(shapes.items()) if branch_of(k) == branch]


def pack_branches(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{branch: one flat array}`` of ``state`` (name -> CPU tensor or array): the tensors of each branch,
    flattened and concatenated in the sorted order of their names, in their common dtype.

    Raises
    ------
    ValueError
        If the tensors of one branch do not share one dtype (a flat array has one; nothing would be converted).
    """
    out: dict[str, np.ndarray] = {}
    for branch in BRANCHES:
        parts = [np.asarray(state[k]).reshape(-1) for k, _ in branch_layout(branch, state)]
        if not parts:
            continue
        if len({p.dtype for p in parts}) != 1:
            raise ValueError(f"the {branch} branch mixes dtypes {sorted({str(p.dtype) for p in parts})}: it cannot "
                             "travel as one array without converting values")
        out[branch] = np.concatenate(parts)
    return out


def unpack_branch(branch: str, flat: np.ndarray, shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Views of ``flat`` (what :func:`pack_branches` made of ``branch``) as the tensors of the global ``shapes``.

    Raises
    ------
    ValueError
        If ``flat`` is not one-dimensional with exactly as many values as the branch's tensors hold.
    """
    layout = branch_layout(branch, shapes)
    sizes = [math.prod(shape) for _, shape in layout]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise ValueError(f"the packed {branch} branch holds {flat.size} values in shape {flat.shape}; the global "
                         f"model's {len(layout)} {branch} tensors hold {sum(sizes)}")
    out, start = {}, 0
    for (name, shape), size in zip(layout, sizes):
        out[name] = flat[start:start + size].reshape(shape)
        start += size
    return out


def unpack_reply(arrays: Mapping[str, np.ndarray], shapes: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A reply's arrays in either layout as ``{tensor name: array}``: packed branches split (:func:`unpack_branch`)
    with the global ``shapes``, per-tensor arrays as they are."""
    out: dict[str, np.ndarray] = {}
    for key, value in arrays.items():
        out.update(unpack_branch(key, value, shapes) if key in BRANCHES else {key: value})
    return out


def per_tensor(state: Mapping[str, Any]) -> dict[str, Any]:
    """Flower's own layout: one array per tensor, under its name."""
    return dict(state)


#: a reply's privacy ``mode`` -> the layout its arrays travel in (the server's reader for that mode expects it)
REPLY_LAYOUTS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "sample": pack_branches,  # read by server/replies.py
    "none": pack_branches,  # a release without DP, in a sample-mode federation: the same reader
    "central": per_tensor,  # Flower's FedAvg + DifferentialPrivacyServerSideFixedClipping pair tensors by name
}


def reply_arrays(state: Mapping[str, Any], *, mode: str) -> dict[str, Any]:
    """The arrays of a trained reply whose privacy record says ``mode``, in that mode's layout.

    Raises
    ------
    ValueError
        If ``mode`` has no layout (a new mode must say how its arrays travel).
    """
    try:
        layout = REPLY_LAYOUTS[mode]
    except KeyError:
        raise ValueError(f"privacy mode {mode!r} has no reply layout; known: {sorted(REPLY_LAYOUTS)}") from None
    return layout(state)
