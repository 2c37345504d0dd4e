"""Deterministic stratified train/test split of one site's rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["stratified_split", "class_test_size"]


def class_test_size(n: int, *, test_fraction: float) -> int:
    """How many of a class's ``n`` rows go to the test set.

    ``n * test_fraction`` rounded half up, then kept within ``[1, n - 1]`` when ``n >= 2`` so that both sets see
    every class a site has (Switzerland has only 8 negatives); a class with a single row stays in training.
    """
    if n < 2:
        return 0
    return min(max(int(np.floor(n * test_fraction + 0.5)), 1), n - 1)


def stratified_split(
    labels: Sequence[int] | np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions into train and test, keeping each class's share.

    Parameters
    ----------
    labels
        One integer class label per row (1-D).
    test_fraction
        Share of each class that goes to the test set, strictly between 0 and 1 (see :func:`class_test_size`).
    seed
        Seed of the shuffle; the same labels, fraction and seed always give the same split.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(train_idx, test_idx)``: sorted int64 positions into ``labels``, disjoint, together covering every row.
    """
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"stratified_split: labels must be 1-D, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"stratified_split: labels must be integers, got dtype {y.dtype}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"stratified_split: test_fraction must be strictly between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed)
    test_parts = []
    for label in np.unique(y):  # sorted, so the draw order does not depend on row order
        members = np.flatnonzero(y == label)
        chosen = rng.permutation(members)[: class_test_size(members.size, test_fraction=test_fraction)]
        test_parts.append(chosen)
    test_idx = np.sort(np.concatenate(test_parts)) if test_parts else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(y.size), test_idx)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)
