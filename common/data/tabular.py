"""Tabular features of the heart table: standardisation fitted on training rows, with a missing-value mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["TABULAR_FEATURES", "NormalizerStats", "fit_normalizer", "transform"]

# numeric (and 0/1) columns the tabular encoder sees, in this order
TABULAR_FEATURES = ("age", "trestbps", "chol", "fbs", "thalch", "oldpeak", "ca")


@dataclass(frozen=True)
class NormalizerStats:
    """Per-feature standardisation fitted on one site's training rows."""

    features: tuple[str, ...]  # column names, in the order of the model's input columns
    mean: tuple[float, ...]  # mean of the observed training values (0.0 if a feature was never observed)
    std: tuple[float, ...]  # population std of the observed values (1.0 if never observed or constant)
    n_observed: tuple[int, ...]  # how many training rows had the feature observed

    def __post_init__(self) -> None:
        lengths = {len(self.features), len(self.mean), len(self.std), len(self.n_observed)}
        if len(lengths) != 1:
            raise ValueError(f"NormalizerStats: features, mean, std, n_observed differ in length ({lengths})")
        if any(not s > 0 for s in self.std):
            raise ValueError(f"NormalizerStats: every std must be > 0, got {self.std}")


def _values(df: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """(n, F) float64 matrix of the features, NaN where not recorded (booleans become 0/1)."""
    missing = [f for f in features if f not in df.columns]
    if missing:
        raise KeyError(f"tabular features {missing} are not columns of the table (columns: {list(df.columns)})")
    columns = [df[f].to_numpy(dtype=np.float64, na_value=np.nan) for f in features]
    return np.stack(columns, axis=1) if columns else np.empty((len(df), 0))


def fit_normalizer(train_df: pd.DataFrame, *, features: tuple[str, ...] = TABULAR_FEATURES) -> NormalizerStats:
    """Fit mean and std per feature from the observed (non-missing) values of the training rows only.

    Parameters
    ----------
    train_df
        Training rows of one site (columns as returned by ``load_heart_disease``).
    features
        Columns to standardise.

    Returns
    -------
    NormalizerStats
        Never-observed features get mean 0 / std 1; constant ones std 1 (their standardised value is then 0).
    """
    values = _values(train_df, features)
    observed = ~np.isnan(values)
    means, stds = [], []
    for column, seen in zip(values.T, observed.T, strict=True):
        kept = column[seen]
        mean = float(kept.mean()) if kept.size else 0.0
        std = float(kept.std()) if kept.size else 0.0
        means.append(mean)
        stds.append(std if std > 1e-12 else 1.0)
    return NormalizerStats(
        features=tuple(features),
        mean=tuple(means),
        std=tuple(stds),
        n_observed=tuple(int(n) for n in observed.sum(axis=0)),
    )


def transform(df: pd.DataFrame, stats: NormalizerStats) -> tuple[np.ndarray, np.ndarray]:
    """Standardise the features of ``df`` with ``stats``.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(x, mask)``, both float32 of shape ``(n, F)``: ``x`` is ``(value - mean) / std`` where observed and 0 where
        missing; ``mask`` is 1 where observed and 0 where missing (the model gets the mask as input too).
    """
    values = _values(df, stats.features)
    mask = ~np.isnan(values)
    x = (values - np.asarray(stats.mean)) / np.asarray(stats.std)
    return np.where(mask, x, 0.0).astype(np.float32), mask.astype(np.float32)
