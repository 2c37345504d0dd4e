"""Modality-aware aggregation: each branch over its holders, by each aggregator; exact expected arrays."""

import numpy as np
import pytest

from common.config import ConfigError
from server.aggregation import AGGREGATORS, Update, check_aggregation, merge, merge_weighted, minimum_holders

GLOBAL = {
    "encoders.tabular.w": np.array([1.0, 1.0], dtype=np.float32),
    "projections.text.w": np.array([[5.0, 5.0]], dtype=np.float32),
    "head.b": np.array([0.0], dtype=np.float32),
}


def _f32(*values):
    return np.array(values, dtype=np.float32)


def test_each_branch_is_averaged_over_the_sites_that_trained_it():
    a = Update("a", {"encoders.tabular.w": _f32(2.0, 4.0), "projections.text.w": np.array([[1.0, 3.0]], np.float32),
                     "head.b": _f32(1.0)}, weight=100)
    b = Update("b", {"encoders.tabular.w": _f32(4.0, 8.0), "head.b": _f32(4.0)}, weight=300)
    merged = merge_weighted(GLOBAL, [a, b])
    # tabular: (100*[2,4] + 300*[4,8]) / 400 = [3.5, 7.0]
    np.testing.assert_allclose(merged["encoders.tabular.w"], _f32(3.5, 7.0), rtol=1e-6)
    # text: only site a holds notes -> its value, not diluted by b's weight
    np.testing.assert_array_equal(merged["projections.text.w"], np.array([[1.0, 3.0]], dtype=np.float32))
    # head: (100*1 + 300*4)/400 = 3.25
    np.testing.assert_allclose(merged["head.b"], _f32(3.25), rtol=1e-6)
    assert all(merged[k].dtype == GLOBAL[k].dtype for k in GLOBAL)


def test_a_round_in_which_nobody_trains_the_text_branch_keeps_it():
    b = Update("b", {"encoders.tabular.w": _f32(0.0, 2.0), "head.b": _f32(2.0)}, weight=10)
    merged = merge_weighted(GLOBAL, [b])
    np.testing.assert_array_equal(merged["projections.text.w"], GLOBAL["projections.text.w"])
    assert merged["projections.text.w"] is not GLOBAL["projections.text.w"]  # a copy, not an alias
    np.testing.assert_array_equal(merged["encoders.tabular.w"], _f32(0.0, 2.0))


def test_no_updates_returns_the_global_arrays():
    merged = merge_weighted(GLOBAL, [])
    assert set(merged) == set(GLOBAL)
    for k in GLOBAL:
        np.testing.assert_array_equal(merged[k], GLOBAL[k])


def _heads(*values: float) -> list[Update]:
    return [Update(f"s{i}", {"encoders.tabular.w": _f32(v, v), "head.b": _f32(v)}, weight=1.0)
            for i, v in enumerate(values)]


@pytest.mark.parametrize("aggregator, expected", [
    ("weighted-mean", (1 + 2 + 3 + 1e6) / 4),  # the attacker moves the mean
    ("median", 2.5),  # np.median of [1, 2, 3, 1e6]
    ("trimmed-mean", 2.5),  # f=1 cut per side: mean of [2, 3]
    ("krum", None),  # one benign update is chosen: checked below
    ("multikrum", 2.0),  # the n - f = 3 with the lowest scores: [1, 2, 3]
])
def test_each_aggregator_on_one_attacker_among_four(aggregator, expected):
    merged = merge(GLOBAL, _heads(1.0, 2.0, 3.0, 1e6), aggregator=aggregator, num_malicious=1)
    value = float(merged.arrays["head.b"][0])
    if expected is None:
        assert value in (1.0, 2.0, 3.0)
        assert merged.used["head"][0] in ("s0", "s1", "s2")
    else:
        assert value == pytest.approx(expected, rel=1e-6)
    if aggregator in ("krum", "multikrum"):
        assert "s3" not in merged.used["head"]
    assert merged.used.get("text") is None  # nobody sent it: not combined


def test_bulyan_on_seven_holders_discards_the_attacker():
    merged = merge(GLOBAL, _heads(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 1e6), aggregator="bulyan", num_malicious=1)
    # select_multikrum keeps n - 2f = 5 (the attacker scores worst); their median is 3 (of 1..5 or 2..6); the
    # n - 4f = 3 values closest to it are averaged: within [1, 6]
    assert 1.0 <= float(merged.arrays["head.b"][0]) <= 6.0
    assert "s6" not in merged.used["head"]


def test_a_branch_with_too_few_holders_keeps_its_global_value_and_says_why():
    merged = merge(GLOBAL, _heads(1.0, 2.0), aggregator="trimmed-mean", num_malicious=1)
    np.testing.assert_array_equal(merged.arrays["head.b"], GLOBAL["head.b"])
    assert "needs 3 sites" in merged.skipped["head"]


def test_minimum_holders_and_the_refusal_of_an_aggregator_that_could_never_combine():
    assert [minimum_holders(a, 1) for a in AGGREGATORS] == [1, 3, 1, 1, 1, 7]
    check_aggregation("trimmed-mean", 1, {"head": 4, "text": 3})
    with pytest.raises(ConfigError, match="needs at least 7 sites holding each branch.*3 for the text branch"):
        check_aggregation("bulyan", 1, {"head": 4, "text": 3})


def test_weighted_mean_is_flowers_aggregate_arrayrecords_bit_for_bit():
    """The weighted mean hands Flower's function the validated arrays themselves (no Array round trip): same bits as
    Flower's own records, for float32 tensors of odd sizes and uneven weights (float sums are order-sensitive)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    rng = np.random.default_rng(7)
    shapes = {"encoders.tabular.w": (37, 5), "head.w": (3, 11), "head.b": (3,)}
    glob = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    updates = [Update(f"site-{i:02d}", {k: (v + rng.standard_normal(v.shape).astype(np.float32) * 10 ** (i % 5 - 2))
                                        for k, v in glob.items()}, weight=float(rng.integers(1, 1000)))
               for i in range(23)]
    expected = aggregate_arrayrecords(
        [RecordDict({"arrays": ArrayRecord({k: Array(u.arrays[k]) for k in shapes}),
                     "metrics": MetricRecord({"num-examples": u.weight})}) for u in sorted(updates, key=lambda u: u.site)],
        "num-examples")

    merged = merge_weighted(glob, list(reversed(updates)))  # arrival order does not matter either

    for k in shapes:
        assert merged[k].dtype == np.float32
        np.testing.assert_array_equal(merged[k], expected[k].numpy())
        assert merged[k].tobytes() == expected[k].numpy().tobytes()  # bit for bit (signed zeros included)
