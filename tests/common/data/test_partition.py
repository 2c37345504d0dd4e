"""Partitioners: exact, seeded partitions of rows into sites (natural, Dirichlet label skew, quantity skew)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.partition import (
    PARTITIONERS,
    PartitionError,
    dirichlet_partition,
    natural_partition,
    partition_from_spec,
    quantity_partition,
)

labels_strategy = st.lists(st.integers(0, 3), min_size=0, max_size=80).map(lambda v: np.asarray(v, dtype=np.int64))
drawn = st.sampled_from([dirichlet_partition, quantity_partition])
alphas = st.sampled_from([0.05, 0.5, 1.0, 10.0, 1e4])


def _assert_exact_partition(parts: list[np.ndarray], n: int) -> None:
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(n))  # disjoint and covering


@settings(max_examples=80, deadline=None)
@given(fn=drawn, labels=labels_strategy, num_sites=st.integers(1, 12), alpha=alphas, seed=st.integers(0, 2**32 - 1))
def test_drawn_partitions_are_exact_and_deterministic(fn, labels, num_sites, alpha, seed) -> None:
    parts = fn(labels=labels, num_sites=num_sites, alpha=alpha, seed=seed, min_size=0)
    assert len(parts) == num_sites
    _assert_exact_partition(parts, labels.size)
    again = fn(labels=labels.tolist(), num_sites=num_sites, alpha=alpha, seed=seed, min_size=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


@settings(max_examples=40, deadline=None)
@given(
    fn=drawn,
    n=st.integers(60, 200),
    num_sites=st.integers(1, 5),
    alpha=st.sampled_from([1.0, 10.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_min_size_is_respected_by_redrawing(fn, n, num_sites, alpha, seed) -> None:
    # Reachable settings: a single draw meets min_size with probability >= 0.3, so 100 redraws always suffice.
    parts = fn(labels=np.arange(n) % 2, num_sites=num_sites, alpha=alpha, seed=seed, min_size=3)
    assert min(len(p) for p in parts) >= 3
    _assert_exact_partition(parts, n)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_sites=st.integers(2, 6))
def test_large_alpha_gives_every_site_about_the_global_label_mix(seed, num_sites) -> None:
    labels = np.repeat(np.arange(3), [600, 300, 300])
    parts = dirichlet_partition(labels=labels, num_sites=num_sites, alpha=1e5, seed=seed)
    for part in parts:
        share = np.bincount(labels[part], minlength=3) / part.size
        np.testing.assert_allclose(share, [0.5, 0.25, 0.25], atol=0.03)
        assert abs(part.size - labels.size / num_sites) <= 0.03 * labels.size


def test_small_alpha_skews_labels() -> None:
    labels = np.arange(2000) % 2
    first_draw = dirichlet_partition(labels=labels, num_sites=5, alpha=0.3, seed=1, min_size=0)
    parts = dirichlet_partition(labels=labels, num_sites=5, alpha=0.3, seed=1, min_size=10)
    shares = [labels[p].mean() for p in parts]
    assert max(shares) - min(shares) > 0.6
    assert min(len(p) for p in first_draw) < 10 <= min(len(p) for p in parts)  # the first draw was redrawn


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 500), num_sites=st.integers(1, 20), alpha=alphas, seed=st.integers(0, 2**32 - 1))
def test_quantity_skew_sizes_sum_to_the_total(n, num_sites, alpha, seed) -> None:
    parts = quantity_partition(labels=np.zeros(n, dtype=np.int64), num_sites=num_sites, alpha=alpha, seed=seed,
                               min_size=0)
    assert sum(len(p) for p in parts) == n


def test_quantity_alpha_controls_size_spread() -> None:
    labels = np.zeros(10_000, dtype=np.int64)
    skewed = [len(p) for p in quantity_partition(labels=labels, num_sites=10, alpha=0.3, seed=1)]
    even = [len(p) for p in quantity_partition(labels=labels, num_sites=10, alpha=1e5, seed=1)]
    assert max(skewed) > 3 * min(skewed)
    assert max(even) - min(even) < 100


def test_seed_changes_the_partition() -> None:
    labels = np.arange(300) % 3
    for fn in (dirichlet_partition, quantity_partition):
        first = fn(labels=labels, num_sites=4, alpha=1.0, seed=0)
        second = fn(labels=labels, num_sites=4, alpha=1.0, seed=1)
        assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_natural_partition_groups_by_site_in_sorted_or_given_order() -> None:
    sites = np.array(["va", "cleveland", "va", "hungary", "cleveland"], dtype=object)
    labels = np.zeros(5, dtype=np.int64)
    parts = natural_partition(labels=labels, sites=sites)
    assert [p.tolist() for p in parts] == [[1, 4], [3], [0, 2]]
    ordered = natural_partition(labels=labels, sites=list(sites), order=["va", "hungary", "cleveland"])
    assert [p.tolist() for p in ordered] == [[0, 2], [3], [1, 4]]
    numeric = natural_partition(labels=np.zeros(4, np.int64), sites=[10, 2, 10, 1])
    assert [p.tolist() for p in numeric] == [[3], [1], [0, 2]]  # numbers sort as numbers


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": ["a", None, "b"]}, r"rows \[1\] have no site"),
        ({"sites": ["a", "b"]}, "one value per row"),
        ({"sites": ["a", "b", "c"], "order": ["a", "b"]}, r"missing from order: \['c'\]"),
        ({"sites": ["a", "b", "b"], "order": ["a", "b", "a"]}, "twice"),
        ({"sites": ["a", "b", "b"], "min_size": 2}, r"fewer than min_size=2 rows: \{'a': 1\}"),
        ({"sites": ["a", "a", "a"], "order": ["a", "z"]}, r"fewer than min_size=1 rows: \{'z': 0\}"),
    ],
)
def test_natural_partition_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        natural_partition(labels=np.zeros(3, dtype=np.int64), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_sites": 0}, "num_sites must be an integer >= 1"),
        ({"alpha": 0.0}, "alpha must be"),
        ({"alpha": float("inf")}, "alpha must be"),
        ({"num_sites": 11, "min_size": 1}, "11 sites of at least 1 rows need 11 rows, but there are only 10"),
        ({"labels": np.zeros((2, 5), np.int64)}, "1-D"),
        ({"labels": np.linspace(0, 1, 10)}, "integers"),
    ],
)
def test_drawn_partitions_reject_bad_settings(kwargs: dict, message: str) -> None:
    settings = {"labels": np.arange(10) % 2, "num_sites": 2, "alpha": 1.0, "seed": 0, **kwargs}
    for fn in (dirichlet_partition, quantity_partition):
        with pytest.raises(PartitionError, match=message):
            fn(**settings)


def test_unreachable_min_size_fails_after_bounded_retries() -> None:
    labels = np.arange(40) % 2
    with pytest.raises(PartitionError, match="no draw in 5 gave every one of 8 sites at least 5 rows"):
        dirichlet_partition(labels=labels, num_sites=8, alpha=0.01, seed=0, min_size=5, max_retries=5)


def test_spec_from_a_scenario_file_names_the_partitioner() -> None:
    labels = np.arange(400) % 2
    spec = {"kind": "dirichlet", "alpha": 0.5, "num-sites": 20, "seed": 0, "min-size": 2}
    parts = partition_from_spec(spec, labels=labels)
    expected = dirichlet_partition(labels=labels, num_sites=20, alpha=0.5, seed=0, min_size=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, expected, strict=True))
    natural = partition_from_spec({"kind": "natural"}, labels=np.zeros(3, np.int64), sites=["b", "a", "b"])
    assert [p.tolist() for p in natural] == [[1], [0, 2]]
    assert set(PARTITIONERS) == {"natural", "dirichlet", "quantity"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "iid"}, r"kind 'iid' is unknown; expected one of \['dirichlet', 'natural', 'quantity'\]"),
        ({"alpha": 1.0}, "kind None is unknown"),
        ({"kind": "quantity", "alpha": 1.0, "num-sites": 3, "seed": 0, "beta": 2}, r"unknown settings \['beta'\]"),
        ({"kind": "dirichlet", "alpha": 1.0, "seed": 0}, r"missing settings \['num_sites'\]"),
        ({"kind": "natural"}, "needs the site column"),
    ],
)
def test_bad_specs_fail_with_what_to_change(spec: dict, message: str) -> None:
    with pytest.raises(PartitionError, match=message):
        partition_from_spec(spec, labels=np.arange(30) % 2)
