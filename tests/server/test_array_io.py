"""Reading reply arrays (server/array_io.py): the zero-copy view equals what Flower's Array.numpy() gives, and
declines anything else; the one-sum finiteness test agrees with numpy."""

import io

import numpy as np
from flwr.app import Array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from server.array_io import all_finite, npy_view

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
