"""load_hospital: one site's stratified train/test arrays, normalised with its own training rows only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.heart import DEFAULT_CSV_PATH, HOSPITALS, load_heart_disease
from common.data.heart_site import SiteSplit, load_hospital
from common.data.notes import notes_for
from common.data.tabular import TABULAR_FEATURES, fit_normalizer

# (train negatives, train positives, test negatives, test positives) with test_fraction=0.3, seed=0
EXPECTED_COUNTS = {
    "cleveland": (115, 97, 49, 42),
    "hungary": (132, 74, 56, 32),
    "switzerland": (6, 80, 2, 35),
    "va_long_beach": (36, 104, 15, 45),
}


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[SiteSplit, SiteSplit]]:
    return {hospital: load_hospital(hospital) for hospital in HOSPITALS}


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_stratified_sizes_per_site(splits, hospital: str) -> None:
    train, test = splits[hospital]
    counts = (*np.bincount(train.labels, minlength=2), *np.bincount(test.labels, minlength=2))
    assert tuple(int(c) for c in counts) == EXPECTED_COUNTS[hospital]


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_shapes_dtypes_and_disjoint_ids(splits, hospital: str) -> None:
    train, test = splits[hospital]
    for part in (train, test):
        assert part.ids.dtype == np.int64 and part.labels.dtype == np.int64
        assert part.tabular.dtype == np.float32 and part.tabular_mask.dtype == np.float32
        assert part.tabular.shape == (len(part), len(TABULAR_FEATURES)) == part.tabular_mask.shape
        assert isinstance(part.notes, tuple) and len(part.notes) == len(part)
        assert np.all(part.tabular[part.tabular_mask == 0] == 0)
    assert not set(train.ids) & set(test.ids)
    table = load_heart_disease()
    assert set(train.ids) | set(test.ids) == set(table.loc[table["hospital"] == hospital, "id"])


def test_rows_line_up_with_the_table(splits) -> None:
    train, _ = splits["cleveland"]
    table = load_heart_disease().set_index("id").loc[train.ids]
    assert train.labels.tolist() == table["label"].tolist()
    assert train.notes == notes_for(table.reset_index())
    assert train.tabular_mask[:, TABULAR_FEATURES.index("ca")].tolist() == table["ca"].notna().astype(float).tolist()


def test_switzerland_has_no_cholesterol(splits) -> None:
    train, test = splits["switzerland"]
    chol = TABULAR_FEATURES.index("chol")
    assert train.tabular_mask[:, chol].sum() == 0 and test.tabular_mask[:, chol].sum() == 0


def test_normalisation_uses_training_rows_only(splits) -> None:
    train, test = splits["va_long_beach"]
    # training values are centred and unit-variance over their observed entries...
    for column in range(len(TABULAR_FEATURES)):
        observed = train.tabular[train.tabular_mask[:, column] == 1, column]
        if observed.size > 1 and observed.std() > 0:
            assert observed.mean() == pytest.approx(0.0, abs=1e-5)
            assert observed.std() == pytest.approx(1.0, abs=1e-4)
    # ...and the test set is transformed with exactly those training statistics
    table = load_heart_disease().set_index("id")
    stats = fit_normalizer(table.loc[train.ids])
    age = TABULAR_FEATURES.index("age")
    expected_age = (table.loc[test.ids, "age"].to_numpy() - stats.mean[age]) / stats.std[age]
    np.testing.assert_allclose(test.tabular[:, age], expected_age, rtol=1e-5)


def test_changing_test_rows_does_not_change_training_arrays(tmp_path: Path, splits) -> None:
    train, test = splits["hungary"]
    raw = pd.read_csv(DEFAULT_CSV_PATH, dtype=str, keep_default_na=False)
    raw.loc[raw["id"].astype(int).isin(test.ids), "oldpeak"] = "9"  # labels unchanged: same split
    edited = tmp_path / "heart.csv"
    raw.to_csv(edited, index=False)
    train2, test2 = load_hospital("hungary", csv_path=edited)
    assert np.array_equal(train2.ids, train.ids) and np.array_equal(train2.tabular, train.tabular)
    assert not np.array_equal(test2.tabular, test.tabular)


def test_same_arguments_same_split_other_seed_other_split(splits) -> None:
    train, test = splits["cleveland"]
    again_train, again_test = load_hospital("cleveland", seed=0)
    assert np.array_equal(again_test.ids, test.ids) and np.array_equal(again_train.tabular, train.tabular)
    _, other_test = load_hospital("cleveland", seed=1)
    assert not np.array_equal(other_test.ids, test.ids)


def test_unknown_hospital_is_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match=r"unknown hospital 'basel'; expected one of \['cleveland'"):
        load_hospital("basel")
    with pytest.raises(ValueError, match=r"did you mean 'va_long_beach'"):
        load_hospital("VA Long Beach")


def test_site_split_refuses_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match=r"ids has 2 rows but \{'notes': 1\}"):
        SiteSplit(
            ids=np.arange(2),
            labels=np.zeros(2, dtype=np.int64),
            tabular=np.zeros((2, 7), dtype=np.float32),
            tabular_mask=np.ones((2, 7), dtype=np.float32),
            notes=("only one",),
        )
