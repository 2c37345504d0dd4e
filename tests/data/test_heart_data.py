"""The UCI Heart Disease example as configuration: the prepared CSV, its mapping onto data/schemas/heart.toml, and the
data-preparation step (data/uci-heart-disease/prepare.py) that corrects what no mapping can and writes the exports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.cleaning import load_mapped

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "data" / "uci-heart-disease"
SOURCE, CORRECTED = HERE / "heart_disease_uci.csv", HERE / "heart.csv"
MAPPING = ROOT / "data" / "mappings" / "uci-heart.toml"
SHIPPED_SHA256 = "574f2fa2b43012fa25fca4fcdb36bd7c6bccdd0af4242f6c0e4c8633c5a072ae"


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_mapped(MAPPING).table


def test_shipped_file_is_the_verbatim_copy() -> None:
    assert hashlib.sha256(SOURCE.read_bytes()).hexdigest() == SHIPPED_SHA256


def test_prepare_check_passes_and_the_correction_is_row_304_only() -> None:
    done = subprocess.run([sys.executable, str(HERE / "prepare.py"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    source, corrected = SOURCE.read_text().splitlines(), CORRECTED.read_text().splitlines()
    changed = [(a, b) for a, b in zip(source, corrected, strict=True) if a != b]
    assert changed == [("304,28,Male,Cleveland,atypical angina,130,132,FALSE,lv hypertrophy,185,FALSE,0,,,,0",
                        "304,28,Male,Hungary,atypical angina,130,132,FALSE,lv hypertrophy,185,FALSE,0,,,,0")]


def test_hospital_counts_after_moving_row_304(table: pd.DataFrame) -> None:
    counts = table["hospital"].value_counts().to_dict()
    assert counts == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}
    assert table.loc[table["hospital"] == "cleveland", "id"].tolist() == list(range(1, 304))


def test_zero_cholesterol_and_blood_pressure_are_missing(table: pd.DataFrame) -> None:
    raw = pd.read_csv(SOURCE)
    assert raw.loc[raw["chol"] == 0, "dataset"].value_counts().to_dict() == {"Switzerland": 123, "VA Long Beach": 49}
    assert not (table["chol"] == 0).any() and table["trestbps"].min() > 0
    missing = table["chol"].isna().groupby(table["hospital"]).sum().to_dict()
    # VA: 49 zeros + 7 blanks; Hungary: 23 blanks; Switzerland: every row
    assert missing == {"cleveland": 0, "hungary": 23, "switzerland": 123, "va_long_beach": 56}
    assert np.isnan(table.set_index("id").loc[754, "trestbps"])


def test_label_is_num_above_zero(table: pd.DataFrame) -> None:
    raw = pd.read_csv(SOURCE)
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
    body = table.drop(columns="id")
    assert table.loc[body.duplicated(keep=False), "id"].tolist() == [405, 406, 860, 908]


def test_the_generated_note_of_patient_1_exactly() -> None:
    from common.data.generators import build_generator

    mapped = load_mapped(MAPPING)
    note = build_generator(mapped.mapping.schema.generators["clinical-note"])
    first = mapped.table.iloc[:1]
    assert note.generate(first, ids=[1]) == (
        "Generated note: Patient sex male; chest pain typical angina; resting ECG LV hypertrophy; angina on exercise "
        "no; peak ST slope downsloping; thallium scan fixed defect.",)
