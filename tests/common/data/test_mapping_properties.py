"""Property tests (hypothesis) on the mapping: round trips, missing codes, vocabulary totality, unit inverses."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.data.cleaning import load_mapped
from common.data.codes import Codes
from tests.data.heart_modules import prepare
from tests.data.heart_schema import CANONICAL_COLUMNS, CATEGORIES
from common.data.schema import DataContractError

VARIANT_COLUMNS, uci_text, variant_text = prepare.VARIANT_COLUMNS, prepare.uci_text, prepare.variant_text

ROOT = Path(__file__).resolve().parents[3]
MAPPINGS = ROOT / "data" / "mappings"
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


_whole = lambda low, high: st.integers(low, high).map(float)  # noqa: E731
_ROW = st.fixed_dictionaries({
    "age": _whole(0, 120), "sex": st.sampled_from(CATEGORIES["sex"]), "cp": _maybe(st.sampled_from(CATEGORIES["cp"])),
    "trestbps": _maybe(_whole(50, 250)), "chol": _maybe(_whole(50, 700)), "fbs": _maybe(st.booleans()),
    "restecg": _maybe(st.sampled_from(CATEGORIES["restecg"])), "thalch": _maybe(_whole(40, 250)),
    "exang": _maybe(st.booleans()), "oldpeak": _maybe(st.integers(-50, 100).map(lambda k: float(f"{k / 10:.1f}"))),
    "slope": _maybe(st.sampled_from(CATEGORIES["slope"])), "ca": _maybe(_whole(0, 3)),
    "thal": _maybe(st.sampled_from(CATEGORIES["thal"])), "num": st.integers(0, 4),
})  # fmt: skip


def _tables(hospital: str, records: list[dict], ids: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows as the exporters take them, the canonical table the mapping must give back, sorted by id)."""
    rows = pd.DataFrame(records).assign(id=ids, hospital=hospital, chol_zero=False, trestbps_zero=False)
    rows["label"] = (rows["num"] > 0).astype(np.int64)
    canonical = pd.DataFrame({
        "id": pd.array(ids, dtype="Int64"), "hospital": [hospital] * len(ids),
        **{c: np.asarray([np.nan if r[c] is None else r[c] for r in records], dtype=np.float64)
           for c in ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")},
        **{c: pd.array([r[c] for r in records], dtype="boolean") for c in ("fbs", "exang")},
        **{c: [r[c] for r in records] for c in CATEGORIES},
        "label": pd.array(rows["label"].to_numpy(), dtype="Int64"),
    })[list(CANONICAL_COLUMNS)]  # fmt: skip
    return rows, canonical.sort_values("id", ignore_index=True)


def _map(mapping: Path, text: str, name: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        return load_mapped(mapping, data_file=path).table[list(CANONICAL_COLUMNS)]  # generated columns: not read


@FAST
@given(records=st.lists(_ROW, min_size=1, max_size=25), decimal_point=st.booleans())
def test_uci_export_then_mapping_gives_the_rows_back(records: list[dict], decimal_point: bool) -> None:
    rows, expected = _tables("cleveland", records, list(range(1, len(records) + 1)))
    table = _map(MAPPINGS / "cleveland.toml", uci_text(rows, decimal_point=decimal_point), "export.data")
    pd.testing.assert_frame_equal(table, expected, check_exact=True)


@FAST
@given(records=st.lists(_ROW, min_size=1, max_size=25), data=st.data())
def test_renamed_reunited_recoded_export_in_any_column_order_gives_the_rows_back(records: list[dict], data) -> None:
    ids = data.draw(st.lists(st.integers(1, 10**6), min_size=len(records), max_size=len(records), unique=True))
    order = data.draw(st.permutations(range(len(VARIANT_COLUMNS))))
    rows, expected = _tables("hungary", records, ids)
    lines = variant_text(rows).splitlines()  # header names, mmol/L, words, ';', decimal comma, -9 = missing
    shuffled = "".join(";".join(line.split(";")[i] for i in order) + "\n" for line in lines)
    table = _map(MAPPINGS / "hungary-variant.toml", shuffled, "variant.csv")
    pd.testing.assert_frame_equal(table, expected, check_exact=True)


_TINY_SCHEMA = """
[schema]
name = "tiny"
[features.id]
role = "id"
type = "integer"
required = true
unique = true
[features.value]
modality = "tabular"
type = "numeric"
unit = "mg/dL"
quantity = "cholesterol"
molar_mass = "386.65 g/mol"
range = [50, 700]
[features.kind]
modality = "tabular"
type = "categorical"
vocabulary = ["alpha", "beta"]
"""
_TINY_MAPPING = """
[mapping]
schema = "schema.toml"
[file]
path = "site.csv"
delimiter = ";"
missing = ["?"]
[row_number]
[columns.value]
unit = "mmol/L"
missing = ["-9", "0"]
[columns.kind]
codes = { "a" = "alpha", "b" = "beta", "B" = "beta" }
"""


def _tiny(values: list[str], kinds: list[str]) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        (base / "schema.toml").write_text(_TINY_SCHEMA)
        (base / "mapping.toml").write_text(_TINY_MAPPING)
        body = "".join(f"{v};{k}\n" for v, k in zip(values, kinds, strict=True))
        (base / "site.csv").write_text("value;kind\n" + body, encoding="utf-8")
        return load_mapped(base / "mapping.toml").table


_MISSING_CODES = st.sampled_from(["?", "-9", "0", "", "-9.0", "0.00", " ? "])
_VALUES = st.integers(130, 1800).map(lambda k: k / 100)  # 1.30-18.00 mmol/L: inside 50-700 mg/dL


@FAST
@given(cells=st.lists(st.one_of(_MISSING_CODES, _VALUES), min_size=1, max_size=30))
def test_missing_codes_always_become_missing_and_never_values(cells: list) -> None:
    table = _tiny([c if isinstance(c, str) else repr(c) for c in cells], ["a"] * len(cells))
    is_code = np.array([isinstance(c, str) for c in cells])
    assert table["value"].isna().to_numpy().tolist() == is_code.tolist()
    observed = table["value"].to_numpy()[~is_code]
    expected = np.array([c for c in cells if not isinstance(c, str)]) * 38.665  # 386.65 g/mol / 10
    np.testing.assert_allclose(observed, expected, rtol=1e-12)


_TEXT = st.text(st.characters(codec="utf-8", exclude_characters=";\"\r\n\x00", exclude_categories=("Cs",)), max_size=6)


@FAST
@given(kinds=st.lists(st.one_of(st.sampled_from(["a", "b", "B", "?", ""]), _TEXT), min_size=1, max_size=12))
def test_vocabulary_mapping_is_total_or_fails_naming_line_and_column(kinds: list[str]) -> None:
    codes = {"a": "alpha", "b": "beta", "B": "beta"}
    stripped = [k.strip() for k in kinds]
    unknown = [i for i, k in enumerate(stripped) if k not in codes and k not in ("?", "")]
    try:
        table = _tiny(["5"] * len(kinds), kinds)
    except DataContractError as error:
        assert unknown, str(error)
        assert (error.line, error.column) == (unknown[0] + 2, "kind")  # line 1 is the header
        assert f"unknown code {stripped[unknown[0]]!r}; expected one of a, b, B" in str(error)
        return
    assert not unknown
    assert table["kind"].tolist() == [codes.get(k) for k in stripped]
    assert set(table["kind"].dropna()) <= {"alpha", "beta"}


@FAST
@given(code=st.integers(-99, 99), zeros=st.integers(0, 3), comma=st.booleans())
def test_numeric_codes_match_however_the_number_is_written(code: int, zeros: int, comma: bool) -> None:
    decimal = "," if comma else "."
    codes = Codes({str(code): "x"}, decimal=decimal)
    written = f"{code}{decimal}{'0' * zeros}" if zeros else str(code)
    assert codes.lookup(written) == (True, "x")
    assert codes.lookup(str(code + 1)) == (False, None)
