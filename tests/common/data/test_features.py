"""Model inputs from the schema alone: public normalisation, one-hot vocabularies, missing indicators, labels.

Nothing is fitted on a site's rows, so removing one record changes no other record's inputs (issue 10, finding 3:
the old normaliser, fitted on the training rows, moved other Switzerland records by up to 0.35 std)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.cleaning import load_mapped
from common.data.features import encode_labels, encode_tabular, label_classes, tabular_columns, tabular_width
from common.data.schema import DataContractError, schema_from_dict
from common.data.site_split import build_split

ROOT = Path(__file__).resolve().parents[3]
UCI = ROOT / "data" / "mappings" / "uci-heart.toml"

SCHEMA = {
    "schema": {"name": "toy"},
    "features": {
        "id": {"role": "id", "type": "integer", "range": [1, 1000], "required": True, "unique": True},
        "dose": {"modality": "tabular", "type": "numeric", "range": [0, 100]},
        "visits": {"modality": "tabular", "type": "integer", "range": [0, 20], "center": 2, "scale": 4},
        "smoker": {"modality": "tabular", "type": "boolean"},
        "stage": {"modality": "tabular", "type": "categorical", "vocabulary": ["I", "II", "III"]},
        "outcome": {"role": "label", "type": "categorical", "vocabulary": ["healed", "chronic", "died"],
                    "required": True},
    },
}


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "id": pd.array([1, 2, 3], dtype="Int64"),
        "dose": [25.0, np.nan, 100.0],
        "visits": pd.array([6, None, 0], dtype="Int64"),  # an integer feature may be missing now
        "smoker": pd.array([True, False, None], dtype="boolean"),
        "stage": ["III", None, "I"],
        "outcome": ["died", "healed", "chronic"],
    })  # fmt: skip


def test_columns_widths_and_exact_inputs() -> None:
    schema = schema_from_dict(SCHEMA)
    assert [c.name for c in tabular_columns(schema)] == ["dose", "visits", "smoker", "stage=I", "stage=II",
                                                         "stage=III"]  # fmt: skip
    assert tabular_width(schema) == 6
    x, mask = encode_tabular(_table(), schema)
    # dose: range [0, 100] -> center 50, scale 50; visits: declared center 2, scale 4
    np.testing.assert_array_equal(x, np.array([[-0.5, 1.0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [1.0, -0.5, 0, 1, 0, 0]],
                                              dtype=np.float32))  # fmt: skip
    np.testing.assert_array_equal(mask, np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0], [1, 1, 0, 1, 1, 1]],
                                                 dtype=np.float32))  # fmt: skip


def test_multi_class_label_from_the_vocabulary() -> None:
    schema = schema_from_dict(SCHEMA)
    assert label_classes(schema) == ("healed", "chronic", "died")
    assert encode_labels(_table(), schema).tolist() == [2, 0, 1]
    integer = schema_from_dict({**SCHEMA, "features": {**SCHEMA["features"], "outcome": {
        "role": "label", "type": "integer", "range": [1, 4], "required": True}}})
    assert label_classes(integer) == ("1", "2", "3", "4")
    assert encode_labels(pd.DataFrame({"outcome": pd.array([4, 1], dtype="Int64")}), integer).tolist() == [3, 0]


@pytest.mark.parametrize("change, message", [
    ({"dose": {"modality": "tabular", "type": "numeric"}}, "needs public normalisation values"),
    ({"dose": {"modality": "tabular", "type": "numeric", "center": 1.0}}, "'center' and 'scale' come together"),
    ({"dose": {"modality": "tabular", "type": "numeric", "center": 1, "scale": 0}}, "a number > 0"),
    ({"smoker": {"modality": "tabular", "type": "boolean", "center": 1, "scale": 1}}, "'center' applies to"),
    ({"outcome": {"role": "label", "type": "numeric", "required": True}}, "cannot name classes"),
    ({"outcome": {"role": "label", "type": "integer", "range": [0, 0], "required": True}}, "2 to 1000 classes"),
])
def test_schema_refuses_what_the_model_could_not_read(change: dict, message: str) -> None:
    with pytest.raises(DataContractError, match=message):
        schema_from_dict({**SCHEMA, "features": {**SCHEMA["features"], **change}})


def test_heart_inputs_use_the_declared_clinical_reference_values() -> None:
    mapped = load_mapped(UCI)
    x, mask = encode_tabular(mapped.table.iloc[:1], mapped.mapping.schema)
    # patient 1: age 63, BP 145, chol 233, fbs true, max HR 150, ST depression 2.3, vessels 0
    expected = [(63 - 50) / 10, (145 - 120) / 20, (233 - 200) / 40, 1.0, 0.0, 2.3, 0.0]
    np.testing.assert_allclose(x[0], expected, rtol=1e-6)
    assert mask[0].tolist() == [1.0] * 7


def test_removing_one_record_changes_no_other_records_inputs_or_side() -> None:
    """Issue 10, finding 3 (fails on d954fa0: the train-fitted normaliser and the per-class permutation moved others)."""
    mapped = load_mapped(UCI)
    swiss = mapped.table[mapped.table["hospital"] == "switzerland"].reset_index(drop=True)
    kw = dict(modalities=("tabular", "text"), data_dir=ROOT / "data", split_key="heart", test_fraction=0.3)
    full = build_split(swiss, mapped.mapping, **kw)
    for dropped in (swiss["id"].iloc[0], swiss["id"].iloc[60]):
        less = build_split(swiss[swiss["id"] != dropped], mapped.mapping, **kw)
        for before, after in zip(full, less, strict=True):
            keep = before.ids != dropped
            assert np.array_equal(before.ids[keep], after.ids)  # nobody changed sides
            np.testing.assert_array_equal(before.tabular[keep], after.tabular)
            np.testing.assert_array_equal(before.tabular_mask[keep], after.tabular_mask)
            assert [t for t, k in zip(before.text, keep, strict=True) if k] == list(after.text)
