"""One site's rows as train and test arrays, for any domain: seeded stratified split, train-only standardisation.

Domain modules (:mod:`common.data.heart_site`, :mod:`common.data.credit_site`) call :func:`split_rows` with their
table's tabular columns and their note generator; everything else (the split, the normaliser, the arrays' shape)
is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from common.data.split import stratified_split
from common.data.tabular import NormalizerStats, fit_normalizer, transform

__all__ = ["NoteMaker", "SiteSplit", "split_rows"]

#: rows of a domain's canonical table -> one generated note per row
NoteMaker = Callable[[pd.DataFrame], tuple[str, ...]]


@dataclass(frozen=True)
class SiteSplit:
    """The rows of one site's train or test set; row i of every field is the same record."""

    ids: np.ndarray  # int64 (n,), record ids (the schema's id feature)
    labels: np.ndarray  # int64 (n,), the binary label (heart: disease; credit: bad risk)
    tabular: np.ndarray  # float32 (n, F), standardised tabular features, 0 where missing
    tabular_mask: np.ndarray  # float32 (n, F), 1 = observed, 0 = missing
    notes: tuple[str, ...]  # n generated notes (categorical fields only; see common.data.notes / credit_notes)

    def __post_init__(self) -> None:
        n = len(self.ids)
        lengths = {
            "labels": len(self.labels),
            "tabular": len(self.tabular),
            "tabular_mask": len(self.tabular_mask),
            "notes": len(self.notes),
        }
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"SiteSplit: ids has {n} rows but {wrong}")
        if self.tabular.shape != self.tabular_mask.shape:
            raise ValueError(f"SiteSplit: tabular {self.tabular.shape} and mask {self.tabular_mask.shape} differ")

    def __len__(self) -> int:
        return len(self.ids)


def _site_split(rows: pd.DataFrame, stats: NormalizerStats, notes: NoteMaker) -> SiteSplit:
    tabular, mask = transform(rows, stats)
    return SiteSplit(
        ids=rows["id"].to_numpy(dtype=np.int64),
        labels=rows["label"].to_numpy(dtype=np.int64),
        tabular=tabular,
        tabular_mask=mask,
        notes=notes(rows),
    )


def split_rows(
    rows: pd.DataFrame, *, features: tuple[str, ...], notes: NoteMaker, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """Split one site's rows (stratified by ``label``) and standardise with its own training rows only.

    Parameters
    ----------
    rows
        One site's rows of a canonical table with ``id``, ``label`` and ``features`` columns, in the order the split
        should see them.
    features
        The tabular columns, in model order.
    notes
        The domain's note generator (called on the train rows and on the test rows).
    test_fraction
        Share of each class held out for testing (see ``common.data.split.stratified_split``).
    seed
        Seed of the split; the same arguments always give the same split.

    Returns
    -------
    tuple[SiteSplit, SiteSplit]
        ``(train, test)``; test rows never influence the normalisation.
    """
    rows = rows.reset_index(drop=True)
    train_idx, test_idx = stratified_split(rows["label"].to_numpy(), test_fraction=test_fraction, seed=seed)
    train_rows, test_rows = rows.iloc[train_idx], rows.iloc[test_idx]
    stats = fit_normalizer(train_rows, features=features)  # this site's training rows only
    return _site_split(train_rows, stats, notes), _site_split(test_rows, stats, notes)
