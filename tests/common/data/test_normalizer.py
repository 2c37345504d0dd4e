"""common.data.tabular: statistics from observed training values only, mask 1 = observed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common.data.tabular import TABULAR_FEATURES, NormalizerStats, fit_normalizer, transform


def _frame(**columns: list) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_feature_list_is_the_spec() -> None:
    assert TABULAR_FEATURES == ("age", "trestbps", "chol", "fbs", "thalch", "oldpeak", "ca")


def test_stats_ignore_missing_values() -> None:
    train = _frame(a=[1.0, 3.0, np.nan, 5.0], b=[np.nan, np.nan, np.nan, np.nan], c=[2.0, 2.0, 2.0, np.nan])
    stats = fit_normalizer(train, features=("a", "b", "c"))
    assert stats.mean == (3.0, 0.0, 2.0)
    assert stats.std == pytest.approx((np.sqrt(8 / 3), 1.0, 1.0))  # never observed / constant -> std 1
    assert stats.n_observed == (3, 0, 3)


def test_transform_standardises_observed_and_zeroes_missing() -> None:
    stats = NormalizerStats(features=("a", "b"), mean=(10.0, 0.0), std=(2.0, 1.0), n_observed=(5, 5))
    x, mask = transform(_frame(a=[12.0, np.nan, 6.0], b=[1.5, -1.0, np.nan]), stats)
    assert x.dtype == np.float32 and mask.dtype == np.float32
    np.testing.assert_array_equal(x, np.array([[1.0, 1.5], [0.0, -1.0], [-2.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(mask, np.array([[1, 1], [0, 1], [1, 0]], dtype=np.float32))


def test_nullable_booleans_become_zero_one() -> None:
    frame = _frame(fbs=pd.array([True, False, None, True], dtype="boolean"))
    stats = fit_normalizer(frame, features=("fbs",))
    assert stats.mean == pytest.approx((2 / 3,))
    _, mask = transform(frame, stats)
    assert mask[:, 0].tolist() == [1.0, 1.0, 0.0, 1.0]


def test_only_training_rows_shape_the_statistics() -> None:
    train = _frame(a=[0.0, 2.0])
    test = _frame(a=[1000.0, -1000.0])
    stats = fit_normalizer(train, features=("a",))
    assert (stats.mean, stats.std) == ((1.0,), (1.0,))
    x, _ = transform(test, stats)
    assert x[:, 0].tolist() == [999.0, -1001.0]


def test_missing_feature_column_is_named() -> None:
    with pytest.raises(KeyError, match=r"\['chol'\] are not columns"):
        fit_normalizer(_frame(age=[1.0]), features=("age", "chol"))


def test_inconsistent_stats_are_refused() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        NormalizerStats(features=("a", "b"), mean=(0.0,), std=(1.0,), n_observed=(1,))
    with pytest.raises(ValueError, match="std must be > 0"):
        NormalizerStats(features=("a",), mean=(0.0,), std=(0.0,), n_observed=(1,))
