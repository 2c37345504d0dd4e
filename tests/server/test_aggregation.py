"""Modality-aware aggregation: exact expected arrays; the fast paths equal the plain ones bit for bit."""

import io

import numpy as np
import pytest
from flwr.app import Array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server import aggregation
from server.aggregation import Update, UpdateError, all_finite, check_update, merge_weighted, npy_view

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


# ------------------------------------------------------------- speed work must not change the arithmetic
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def merge_reference(global_arrays, updates):
    """The merge as first written: a float64 copy of each update times its weight share, summed in order."""
    merged = {}
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


@FAST
@given(data=st.data(), n=st.integers(1, 12), dtype=st.sampled_from([np.float32, np.float64]),
       shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=7))
def test_the_blocked_merge_equals_the_reference_bit_for_bit(data, n, dtype, shape):
    elements = st.floats(-1e6, 1e6, allow_nan=False, width=32)
    global_arrays = {"w": data.draw(hnp.arrays(dtype, shape, elements=elements)),
                     "b": data.draw(hnp.arrays(np.float32, (3,), elements=elements))}
    updates = [Update(f"s{i}", {k: data.draw(hnp.arrays(v.dtype, v.shape, elements=elements))
                                for k, v in global_arrays.items() if k == "w" or data.draw(st.booleans())},
                      data.draw(st.floats(0.5, 1e4)))
               for i in range(n)]
    expected = merge_reference(global_arrays, updates)
    for block in (aggregation.BLOCK, 1, 5):  # blocks that split every tensor, too
        old, aggregation.BLOCK = aggregation.BLOCK, block
        try:
            merged = merge_weighted(global_arrays, updates)
        finally:
            aggregation.BLOCK = old
        for key in global_arrays:
            assert merged[key].dtype == expected[key].dtype and merged[key].shape == expected[key].shape
            np.testing.assert_array_equal(merged[key], expected[key])


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@FAST
@given(a=hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_, np.dtype(">f4")]),
                    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6)))
def test_npy_view_reads_what_flower_sends_without_copying(a):
    arr = Array(a)
    view = npy_view(arr.data, dtype=arr.dtype, shape=arr.shape)
    assert view is not None
    np.testing.assert_array_equal(view, arr.numpy())
    assert view.dtype == a.dtype and view.shape == a.shape and not view.flags.writeable
    if view.size:
        assert np.shares_memory(view, np.frombuffer(arr.data, dtype=np.uint8))  # a view, not a copy


def test_npy_view_declines_anything_but_the_plain_layout():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = _npy(a)
    assert npy_view(data, dtype="float32", shape=(2, 3)) is not None
    assert npy_view(data, dtype="float32", shape=(3, 2)) is None  # the declared shape is not the header's
    assert npy_view(data, dtype="float64", shape=(2, 3)) is None  # nor the dtype
    assert npy_view(data[:-1], dtype="float32", shape=(2, 3)) is None  # truncated payload
    assert npy_view(data + b"\0", dtype="float32", shape=(2, 3)) is None  # trailing bytes
    assert npy_view(_npy(np.asfortranarray(a)), dtype="float32", shape=(2, 3)) is None  # Fortran order
    assert npy_view(b"PK\x03\x04" + data, dtype="float32", shape=(2, 3)) is None  # not .npy at all
    assert npy_view(_npy(np.array(["x"])), dtype="<U1", shape=(1,)) is None  # not numeric


@FAST
@given(a=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64]),
                    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6),
                    elements=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=16),
                                       st.sampled_from([65504.0, -65504.0, 0.0]))))
def test_all_finite_agrees_with_numpy(a):
    assert all_finite(a) == bool(np.all(np.isfinite(a)))


def test_all_finite_does_not_overflow_on_huge_finite_float32():
    big = np.full(10_000, np.finfo(np.float32).max, dtype=np.float32)
    assert all_finite(big) and all_finite(-big)
    big[7] = np.inf
    assert not all_finite(big)
    big[7], big[8] = np.inf, -np.inf  # their sum is NaN
    assert not all_finite(big)
    assert all_finite(np.arange(5, dtype=np.int32))  # integers are always finite
