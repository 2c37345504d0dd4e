"""The keyed-hash split: each record's side is decided by its own id and the key, so it moves nobody else."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.split import is_test_record, keyed_split

ids = st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=300, unique=True)


@settings(max_examples=60, deadline=None)
@given(ids=ids, removed=st.integers(min_value=0), added=st.integers(min_value=10**9 + 1, max_value=2 * 10**9))
def test_removing_or_adding_a_record_moves_no_other_record(ids: list[int], removed: int, added: int) -> None:
    def test_ids(members: list[int]) -> set[int]:
        _, test = keyed_split(np.asarray(members), key="heart", test_fraction=0.3)
        return {members[i] for i in test}

    before = test_ids(ids)
    gone = ids[removed % len(ids)]
    assert test_ids([i for i in ids if i != gone]) == before - {gone}
    assert test_ids([*ids, added]) - {added} == before


@settings(max_examples=30, deadline=None)
@given(ids=ids)
def test_a_partition_of_the_rows_in_order(ids: list[int]) -> None:
    train, test = keyed_split(ids, key="k", test_fraction=0.3)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(ids)))
    assert train.dtype == test.dtype == np.int64 and np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)


def test_the_rule_is_hmac_sha256_of_the_id_under_the_key() -> None:
    for record in (1, 17, 304, "patient-9"):
        digest = hmac.new(b"heart", str(record).encode(), hashlib.sha256).digest()
        expected = int.from_bytes(digest[:8], "big") / 2.0**64 < 0.3
        assert is_test_record(record, key="heart", test_fraction=0.3) is expected


def test_share_and_key_dependence() -> None:
    records = np.arange(1, 20001)
    _, test = keyed_split(records, key="heart", test_fraction=0.3)
    assert abs(len(test) / len(records) - 0.3) < 0.015  # binomial sd at n = 20000: 0.0032
    _, other = keyed_split(records, key="another key", test_fraction=0.3)
    assert 0.05 < len(set(test) & set(other)) / len(test) < 0.5  # about 30% overlap: an independent draw


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_fraction_must_lie_strictly_between_0_and_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        keyed_split([1, 2], key="k", test_fraction=fraction)
