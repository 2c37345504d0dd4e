"""The train/test split of a site's records, decided per record by a keyed hash of its id.

Record ``id`` is a TEST record iff ``HMAC-SHA256(key, str(id))``, read as a number in [0, 1), is below
``test_fraction``. A record's side depends on its own id and the key only: adding or removing other records moves
nobody (the split reads no other row, so it spends no privacy). The split is not stratified: a small site's test set
may hold few records of a rare class, and the report says how many it holds.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_TEST_FRACTION", "is_test_record", "keyed_split"]

DEFAULT_TEST_FRACTION = 0.3


def _uniform(key: str, record: object) -> float:
    digest = hmac.new(key.encode("utf-8"), str(record).encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_test_record(record: object, *, key: str, test_fraction: float = DEFAULT_TEST_FRACTION) -> bool:
    """Whether the record with id ``record`` is a test record under ``key``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    return _uniform(key, record) < test_fraction


def keyed_split(ids: Sequence[object] | np.ndarray, *, key: str,
                test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split row positions into train and test by each row's id (see the module docstring).

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``(train_idx, test_idx)``: sorted int64 positions into ``ids``, disjoint, together covering every row.
    """
    test = np.asarray([is_test_record(i, key=key, test_fraction=test_fraction) for i in ids], dtype=bool)
    return np.flatnonzero(~test).astype(np.int64), np.flatnonzero(test).astype(np.int64)
