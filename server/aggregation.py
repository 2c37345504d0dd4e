"""Modality-aware weighted averaging: pure numpy, no Flower.

Sites hold different modalities, so each reply carries only the tensors of the branches
that site trained. Each tensor is averaged over the sites that sent it, weighted by their
example counts, and merged into the current global arrays: a tensor nobody trained this
round keeps its global value (a hospital without notes neither dilutes nor erases the text
branch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["Update", "UpdateError", "check_update", "merge_weighted"]


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
        if not np.all(np.isfinite(arr)):
            raise UpdateError(f"site '{update.site}': tensor '{key}' contains NaN or inf")


def merge_weighted(global_arrays: Mapping[str, np.ndarray], updates: Sequence[Update]) -> dict[str, np.ndarray]:
    """Per-tensor weighted mean over the updates that carry it; other tensors stay global.

    Call :func:`check_update` on each update first (invalid ones are dropped by the caller).
    """
    merged: dict[str, np.ndarray] = {}
    for key, current in global_arrays.items():
        holders = [u for u in updates if key in u.arrays]
        if not holders:
            merged[key] = np.array(current, copy=True)
            continue
        total = sum(u.weight for u in holders)
        acc = np.zeros(current.shape, dtype=np.float64)
        for u in holders:
            acc += np.asarray(u.arrays[key], dtype=np.float64) * (u.weight / total)
        merged[key] = acc.astype(current.dtype)
    return merged
