"""stratified_split: a deterministic partition that keeps each class's share."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.split import class_test_size, stratified_split

labels_strategy = st.lists(st.integers(min_value=0, max_value=3), min_size=0, max_size=60)
fraction_strategy = st.floats(min_value=0.05, max_value=0.95)


@settings(max_examples=60, deadline=None)
@given(labels=labels_strategy, test_fraction=fraction_strategy, seed=st.integers(0, 2**32 - 1))
def test_split_is_a_partition_with_per_class_sizes(labels: list[int], test_fraction: float, seed: int) -> None:
    y = np.asarray(labels, dtype=np.int64)
    train, test = stratified_split(y, test_fraction=test_fraction, seed=seed)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(y)))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    for label in np.unique(y):
        n = int((y == label).sum())
        assert int((y[test] == label).sum()) == class_test_size(n, test_fraction=test_fraction)
        if n >= 2:  # both sides see every class that has at least two rows
            assert (y[train] == label).any() and (y[test] == label).any()


@settings(max_examples=30, deadline=None)
@given(labels=labels_strategy, test_fraction=fraction_strategy, seed=st.integers(0, 2**32 - 1))
def test_split_is_deterministic(labels: list[int], test_fraction: float, seed: int) -> None:
    first = stratified_split(labels, test_fraction=test_fraction, seed=seed)
    second = stratified_split(list(labels), test_fraction=test_fraction, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_seed_changes_the_split() -> None:
    y = np.array([0] * 50 + [1] * 50)
    _, test_a = stratified_split(y, test_fraction=0.3, seed=0)
    _, test_b = stratified_split(y, test_fraction=0.3, seed=1)
    assert not np.array_equal(test_a, test_b)


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(8, 0.3, 2), (115, 0.3, 35), (5, 0.3, 2), (3, 0.1, 1), (2, 0.9, 1), (1, 0.5, 0), (0, 0.5, 0), (10, 0.25, 3)],
)
def test_class_test_size(n: int, fraction: float, expected: int) -> None:
    assert class_test_size(n, test_fraction=fraction) == expected


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        ([0, 1], 0.0, "strictly between 0 and 1"),
        ([0, 1], 1.0, "strictly between 0 and 1"),
        ([[0, 1]], 0.3, "must be 1-D"),
        ([0.5, 1.0], 0.3, "must be integers"),
    ],
)
def test_bad_arguments_are_refused(labels: list, fraction: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        stratified_split(labels, test_fraction=fraction, seed=0)
