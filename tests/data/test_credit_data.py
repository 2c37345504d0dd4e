"""The bank example's canonical loader (data/german-credit/canonical.py), the bank split and the credit schema agree
with the real data."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from common.data.schema import load_schema
from tests.data.credit_modules import load

_c = load("canonical")
BANK_OF_PURPOSE, BANKS, CANONICAL_COLUMNS, CATEGORIES = _c.BANK_OF_PURPOSE, _c.BANKS, _c.CANONICAL_COLUMNS, _c.CATEGORIES
DEFAULT_CREDIT_CSV, EXCLUDED_COLUMNS, NUMERIC_RANGES = _c.DEFAULT_CREDIT_CSV, _c.EXCLUDED_COLUMNS, _c.NUMERIC_RANGES
CreditDataError, load_german_credit = _c.CreditDataError, _c.load_german_credit
CREDIT_TABULAR_FEATURES = ("duration", "credit_amount", "installment_commitment", "residence_since", "age",
                           "existing_credits", "num_dependents", "own_telephone")  # fmt: skip

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "data" / "schemas" / "credit.toml"


@pytest.fixture(scope="module")
def table():
    return load_german_credit()


def test_real_counts_700_good_300_bad(table) -> None:
    assert len(table) == 1000
    assert table["label"].value_counts().to_dict() == {0: 700, 1: 300}
    assert table["id"].tolist() == list(range(1, 1001))
    assert tuple(table.columns) == CANONICAL_COLUMNS
    assert not table.isna().any().any()


def test_canonical_csv_is_the_documented_copy() -> None:
    digest = hashlib.sha256(DEFAULT_CREDIT_CSV.read_bytes()).hexdigest()
    assert digest == "9fb0eecf281cbc001580b52815e6617cc9054f04185675795dc883e2c6e8ab17"
    readme = (DEFAULT_CREDIT_CSV.parent / "README.md").read_text()
    assert digest in readme and "CC BY 4.0" in readme and "GENERATED" in readme


def test_first_record_matches_uci_german_data(table) -> None:
    # german.data line 1: A11 6 A34 A43 1169 A65 A75 4 A93 A101 4 A121 67 A143 A152 2 A173 1 A192 A201 1
    first = table.iloc[0].to_dict()
    assert first == {
        "id": 1, "bank": "retail_bank", "checking_status": "<0", "duration": 6.0,
        "credit_history": "critical/other existing credit", "purpose": "radio/tv", "credit_amount": 1169.0,
        "savings_status": "no known savings", "employment": ">=7", "installment_commitment": 4.0,
        "other_parties": "none", "residence_since": 4.0, "property_magnitude": "real estate", "age": 67.0,
        "other_payment_plans": "none", "housing": "own", "existing_credits": 2.0, "job": "skilled",
        "num_dependents": 1.0, "own_telephone": True, "label": 0,
    }  # fmt: skip


def test_bank_split_by_purpose_counts(table) -> None:
    counts = table.groupby("bank")["label"].agg(["count", "sum"]).to_dict("index")
    assert counts == {"car_bank": {"count": 337, "sum": 106}, "retail_bank": {"count": 495, "sum": 132},
                      "business_bank": {"count": 168, "sum": 62}}  # fmt: skip
    assert set(BANK_OF_PURPOSE) == set(CATEGORIES["purpose"]) and set(BANK_OF_PURPOSE.values()) == set(BANKS)
    for bank in BANKS:
        purposes = set(table.loc[table["bank"] == bank, "purpose"])
        assert purposes <= {p for p, b in BANK_OF_PURPOSE.items() if b == bank}


def test_dtypes(table) -> None:
    assert table["id"].dtype == np.int64 and table["label"].dtype == np.int64
    for column in NUMERIC_RANGES:
        assert table[column].dtype == np.float64, column
    assert str(table["own_telephone"].dtype) == "boolean"
    assert table["own_telephone"].sum() == 404


def test_schema_file_agrees_with_the_loader() -> None:
    schema = load_schema(SCHEMA)
    assert schema.names == (*CANONICAL_COLUMNS, "note")
    assert schema.modality("tabular") == CREDIT_TABULAR_FEATURES
    CREDIT_NOTE_FIELDS = tuple(schema.generators["loan-note"].params["fields"])
    assert schema.modality("text") == (*CREDIT_NOTE_FIELDS, "note")
    assert set(schema.modality("tabular")).isdisjoint(schema.modality("text"))
    assert schema.role("site").vocabulary == BANKS  # type: ignore[union-attr]
    for name in CREDIT_NOTE_FIELDS:
        assert schema.feature(name).vocabulary == CATEGORIES[name], name
    for name, (low, high) in NUMERIC_RANGES.items():
        assert schema.feature(name).range == (low, high), name
    assert not set(EXCLUDED_COLUMNS) & set(schema.names)


def _write(tmp_path: Path, edit) -> Path:
    lines = DEFAULT_CREDIT_CSV.read_text().splitlines()
    edit(lines)
    path = tmp_path / "credit.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_cell_names_file_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda lines: lines.__setitem__(3, lines[3].replace(",education,", ",holiday,")))
    with pytest.raises(CreditDataError, match=r"credit\.csv, line 4, column 'purpose': expected one of \['new car'"):
        load_german_credit(path)


def test_repeated_id_and_wrong_header(tmp_path: Path) -> None:
    path = _write(tmp_path, lambda lines: lines.__setitem__(5, "1" + lines[5][1:]))
    with pytest.raises(CreditDataError, match=r"line 6, column 'id': id 1 also appears on line 2; expected each id"):
        load_german_credit(path)
    path = _write(tmp_path, lambda lines: lines.__setitem__(0, lines[0].replace("class", "target")))
    with pytest.raises(CreditDataError, match=r"line 1: header .*; expected columns \['id', 'checking_status'"):
        load_german_credit(path)
    with pytest.raises(FileNotFoundError, match="German Credit CSV not found"):
        load_german_credit(tmp_path / "absent.csv")
