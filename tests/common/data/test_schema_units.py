"""The heart schema file agrees with the canonical table; schema validation; unit conversions with exact values."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.schema import DataContractError, load_schema, schema_from_dict
from tests.data.heart_schema import CANONICAL_COLUMNS, CATEGORIES
from common.data.units import KNOWN_UNITS, Conversion, UnitError, conversion

ROOT = Path(__file__).resolve().parents[3]
HEART_SCHEMA = ROOT / "data" / "schemas" / "heart.toml"


@pytest.fixture(scope="module")
def schema():
    return load_schema(HEART_SCHEMA)


def test_heart_schema_matches_the_canonical_table(schema) -> None:
    assert schema.name == "heart"
    assert schema.names == (*CANONICAL_COLUMNS, "note", "digit")
    assert schema.modality("tabular") == ("age", "trestbps", "chol", "fbs", "thalch", "oldpeak", "ca")
    assert schema.modality("text") == ("sex", "cp", "restecg", "exang", "slope", "thal", "note")
    assert schema.generators["clinical-note"].params["fields"] == ["sex", "cp", "restecg", "exang", "slope", "thal"]
    assert (schema.role("id").name, schema.role("site").name, schema.role("label").name) == ("id", "hospital", "label")
    for name, words in CATEGORIES.items():
        assert schema.feature(name).vocabulary == words
    assert [f.name for f in schema.features if f.required] == ["id", "hospital", "age", "sex", "label"]
    chol = schema.feature("chol")
    assert (chol.unit, chol.quantity, chol.range) == ("mg/dL", "cholesterol", (50.0, 700.0))


def test_expected_words_used_in_messages(schema) -> None:
    cp = "one of 'typical angina', 'atypical angina', 'non-anginal', 'asymptomatic'"
    assert schema.feature("cp").expected() == cp
    assert schema.feature("chol").expected() == "a number from 50 to 700 mg/dL"
    assert schema.feature("ca").expected() == "an integer from 0 to 3"
    assert schema.feature("fbs").expected() == "true or false"


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        ({"id": {"type": "int", "role": "id", "required": True}}, r"feature 'id': type 'int' is not a feature type"),
        ({"x": {"type": "numeric", "modality": "tabular", "range": [0, 1]}}, r"0 features have role 'id'"),
        ({"id": {"type": "integer", "role": "id"}}, r"feature 'id': the id feature must be required"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "numeric", "modality": "tabular", "unit": "furlong"}}, r"feature 'c': unknown unit 'furlong'"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "categorical", "modality": "tabular", "vocabulary": ["a", "a"]}}, r"distinct words"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "numeric", "modality": "tabular", "range": [3, 1]}}, r"range \[3, 1\] is not \[low, high\]"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "numeric", "modality": "tabular", "unts": "mm"}}, r"feature 'c': unknown key\(s\) \['unts'\]"),
    ],
)  # fmt: skip
def test_schema_errors_name_file_and_feature(features: dict, expected: str) -> None:
    with pytest.raises(DataContractError, match=r"^bad\.toml[,:] .*" + expected):
        schema_from_dict({"features": features}, path=Path("bad.toml"))


def test_cholesterol_mmol_per_litre_to_mg_per_decilitre_exact() -> None:
    to_mg = conversion("mmol/L", "mg/dL", quantity="cholesterol")
    assert to_mg is not None and to_mg.factor == 38.67
    assert to_mg.apply(1.0) == 38.67
    assert to_mg.apply(5.0) == pytest.approx(193.35, abs=1e-12)
    assert round(to_mg.apply(6.03)) == 233  # Cleveland's first patient, as the variant export writes it
    assert conversion("mg/dL", "mmol/L", quantity="cholesterol").apply(386.7) == pytest.approx(10.0, abs=1e-12)
    assert to_mg.describe() == "mmol/L -> mg/dL: x38.67"


def test_other_conversions_exact() -> None:
    assert conversion("mmol/L", "mg/dL", quantity="glucose").apply(5.0) == pytest.approx(90.08, abs=1e-12)
    assert conversion("kPa", "mm Hg").apply(16.0) == pytest.approx(120.00992, abs=1e-9)
    assert conversion("lb", "kg").apply(100.0) == pytest.approx(45.359237, abs=1e-12)
    assert conversion("in", "cm").apply(10.0) == pytest.approx(25.4, abs=1e-12)
    assert conversion("months", "years").apply(18.0) == pytest.approx(1.5, abs=1e-12)
    to_c = conversion("degF", "degC")
    assert to_c.apply(212.0) == pytest.approx(100.0, abs=1e-12) and to_c.apply(32.0) == pytest.approx(0.0, abs=1e-12)
    assert conversion("degC", "degF").apply(37.0) == pytest.approx(98.6, abs=1e-12)
    assert to_c.describe() == "degF -> degC: x0.5555555556 - 17.77777778"
    assert conversion("mg/dL", "mg/dL", quantity="cholesterol") is None


def test_substance_specific_units_need_the_quantity() -> None:
    with pytest.raises(UnitError, match=r"no conversion from 'mmol/L' to 'mg/dL'; units convertible to 'mg/dL': mg/dL"):
        conversion("mmol/L", "mg/dL")
    with pytest.raises(UnitError, match=r"unknown unit 'mmol/l'; known units: years, months, mg/dL, mmol/L"):
        conversion("mmol/l", "mg/dL", quantity="cholesterol")


def test_inverse_of_inverse_is_the_conversion() -> None:
    forward = Conversion("degF", "degC", 5 / 9, -160 / 9)
    back = forward.inverse().inverse()
    assert back.factor == pytest.approx(forward.factor) and back.offset == pytest.approx(forward.offset)
    assert set(KNOWN_UNITS) >= {"mg/dL", "mmol/L", "mm Hg", "years", "1/min", "mm", "1"}
