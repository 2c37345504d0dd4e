"""The heart schema file agrees with the canonical table; schema validation (units: tests/common/data/test_units.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.data.schema import DataContractError, load_schema, schema_from_dict
from tests.data.heart_schema import CANONICAL_COLUMNS, CATEGORIES

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
    assert chol.molar_mass == "386.65 g/mol"


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
          "c": {"type": "numeric", "modality": "tabular", "unit": "furlongs/fortnite"}},
         r"feature 'c': unknown unit 'furlongs/fortnite' \('fortnite' is not defined in the unit registry\); expected "
         r"a unit pint reads, e.g. 'mg/dL', 'mmol/L'"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "numeric", "modality": "tabular", "unit": "mmol/L", "molar_mass": "386.65 g"}},
         r"feature 'c': molar mass '386.65 g' is not a mass per amount of substance; expected e.g. '386.65 g/mol'"),
        ({"id": {"type": "integer", "role": "id", "required": True},
          "c": {"type": "integer", "modality": "tabular", "unit": "mm", "required": True}},
         r"feature 'c': 'unit', 'quantity' and 'molar_mass' apply to numeric features, not integer"),
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
