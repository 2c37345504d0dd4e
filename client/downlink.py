"""A train or evaluate message's global arrays, as the tensors of this site's OWN model.

The server sends the global model's trainable arrays packed, one flat float32 array per branch under the branch's
name (``server/downlink.py``, ``common/packing.py``). The site splits each with the names and shapes of the model
it builds itself (:meth:`client.round.SiteRound.layout`), never with anything the server says; a packed branch
must be float32, one-dimensional and exactly as long as this model's tensors of that branch, or the message fails
with a :class:`~client.round.MessageError` before anything is reserved or spent. Per-tensor arrays (Flower's own
layout) are taken as they are: :meth:`~client.round.SiteRound.model` checks their names and shapes, and
:func:`~client.round.check_global_values` the values of both layouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from client.round import MessageError
from common.models.params import BRANCHES
from common.packing import branch_layout, unpack_branch

__all__ = ["received_state"]


def _branch(branch: str, flat: np.ndarray, layout: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The tensors of ``branch`` in ``flat``, split with this site's ``layout``; refused unless it fits exactly."""
    tensors = branch_layout(branch, layout)
    size = sum(math.prod(shape) for _, shape in tensors)
    if not tensors:
        held = sorted({b for b in BRANCHES if branch_layout(b, layout)})
        raise MessageError(f"the server sent a packed {branch!r} branch; this site's model has no {branch} tensors "
                           f"(its branches: {held}); nothing was trained or spent")
    if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != size:
        raise MessageError(f"the server's packed {branch!r} branch is {flat.dtype} of shape {flat.shape}; this site's "
                           f"model expects float32 of shape ({size},), its {len(tensors)} {branch} tensors; "
                           "nothing was trained or spent")
    return {k: torch.from_numpy(v) for k, v in unpack_branch(branch, flat, layout).items()}


def received_state(arrays: Mapping[str, np.ndarray],
                   layout: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """``{tensor name: tensor}`` of a message's ``arrays``: packed branches (keys in ``BRANCHES``) split with this
    site's own ``layout`` (name -> shape of its model's trainable tensors, in the model's order) and given in that
    order, then per-tensor arrays as they came.

    Raises
    ------
    MessageError
        If a packed branch is not float32, not 1-D or not exactly this model's length for the branch, if this
        model has no tensors of that branch, or if a tensor arrives both packed and on its own.
    """
    packed: dict[str, torch.Tensor] = {}
    single: dict[str, torch.Tensor] = {}
    for key, value in arrays.items():
        part = _branch(key, value, layout) if key in BRANCHES else {key: torch.from_numpy(np.asarray(value))}
        twice = sorted(set(part) & (set(packed) | set(single)))
        if twice:
            raise MessageError(f"the server sent {twice[:3]} both packed and on its own; nothing was trained or spent")
        (packed if key in BRANCHES else single).update(part)
    # packed tensors in this model's own parameter order (a central-mode reply keeps the order it was given, and
    # the server's global model is in that order too); per-tensor arrays in the order they came
    return {k: packed[k] for k in layout if k in packed} | single
