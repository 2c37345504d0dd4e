"""Modality-aware aggregation: exact expected arrays."""

import numpy as np
import pytest

from server.aggregation import Update, UpdateError, check_update, merge_weighted

GLOBAL = {
    "encoders.tabular.w": np.array([1.0, 1.0], dtype=np.float32),
    "projections.text.w": np.array([[5.0, 5.0]], dtype=np.float32),
    "head.b": np.array([0.0], dtype=np.float32),
}


def test_each_tensor_is_averaged_over_the_sites_that_trained_it():
    a = Update("a", {"encoders.tabular.w": np.array([2.0, 4.0]), "projections.text.w": np.array([[1.0, 3.0]]),
                     "head.b": np.array([1.0])}, weight=100)
    b = Update("b", {"encoders.tabular.w": np.array([4.0, 8.0]), "head.b": np.array([4.0])}, weight=300)
    merged = merge_weighted(GLOBAL, [a, b])
    # tabular: (100*[2,4] + 300*[4,8]) / 400 = [3.5, 7.0]
    np.testing.assert_array_equal(merged["encoders.tabular.w"], np.array([3.5, 7.0], dtype=np.float32))
    # text: only site a holds notes -> its value, not diluted by b's 300 examples
    np.testing.assert_array_equal(merged["projections.text.w"], np.array([[1.0, 3.0]], dtype=np.float32))
    # head: (100*1 + 300*4)/400 = 3.25
    np.testing.assert_array_equal(merged["head.b"], np.array([3.25], dtype=np.float32))
    assert all(merged[k].dtype == GLOBAL[k].dtype for k in GLOBAL)


def test_a_round_in_which_nobody_trains_the_text_branch_keeps_it():
    b = Update("b", {"encoders.tabular.w": np.array([0.0, 2.0]), "head.b": np.array([2.0])}, weight=10)
    merged = merge_weighted(GLOBAL, [b])
    np.testing.assert_array_equal(merged["projections.text.w"], GLOBAL["projections.text.w"])
    assert merged["projections.text.w"] is not GLOBAL["projections.text.w"]  # a copy, not an alias
    np.testing.assert_array_equal(merged["encoders.tabular.w"], np.array([0.0, 2.0], dtype=np.float32))


def test_no_updates_returns_the_global_arrays():
    merged = merge_weighted(GLOBAL, [])
    assert set(merged) == set(GLOBAL)
    for k in GLOBAL:
        np.testing.assert_array_equal(merged[k], GLOBAL[k])


@pytest.mark.parametrize(
    "update, match",
    [
        (Update("x", {"unknown.w": np.zeros(2)}, 1), "'unknown.w' is not part of the global model"),
        (Update("x", {"head.b": np.zeros(3)}, 1), r"shape \(3,\)"),
        (Update("x", {"head.b": np.array([np.nan])}, 1), "NaN"),
        (Update("x", {"head.b": np.zeros(1)}, 0), "positive number of examples"),
    ],
)
def test_bad_updates_are_named(update, match):
    with pytest.raises(UpdateError, match=match):
        check_update(GLOBAL, update)
