"""The GENERATED exports mapped through their mapping files give exactly the canonical data; reports; time zones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.cleaning import load_mapped
from common.data.codes import Codes
from tests.data.heart_modules import prepare

UCI_FILES, VARIANT_FILE, export_table, main = prepare.UCI_FILES, prepare.VARIANT_FILE, prepare.export_table, prepare.main
HOSPITALS = prepare.HOSPITALS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data"
EXPORTS = DATA / "uci-heart-disease" / "exports"
MAPPINGS = {h: DATA / "mappings" / f"{h}.toml" for h in HOSPITALS}
VARIANT_MAPPING = DATA / "mappings" / "hungary-variant.toml"


@pytest.fixture(scope="module")
def canonical() -> pd.DataFrame:
    return load_mapped(DATA / "mappings" / "uci-heart.toml").table  # the corrected CSV through its mapping


def _rows(canonical: pd.DataFrame, hospital: str) -> pd.DataFrame:
    return canonical[canonical["hospital"] == hospital].reset_index(drop=True)


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_uci_export_maps_to_exactly_the_canonical_rows(canonical: pd.DataFrame, hospital: str) -> None:
    mapped = load_mapped(MAPPINGS[hospital])
    assert mapped.mapping.file.path.resolve() == (EXPORTS / UCI_FILES[hospital]).resolve()
    pd.testing.assert_frame_equal(mapped.table, _rows(canonical, hospital), check_exact=True)
    assert len(mapped.table) == {"cleveland": 303, "hungary": 294, "switzerland": 123, "va_long_beach": 200}[hospital]


def test_variant_export_maps_to_exactly_the_canonical_rows(canonical: pd.DataFrame) -> None:
    mapped = load_mapped(VARIANT_MAPPING)
    assert mapped.mapping.file.header and mapped.mapping.file.delimiter == ";"
    pd.testing.assert_frame_equal(mapped.table, _rows(canonical, "hungary"), check_exact=True)


def test_committed_exports_are_up_to_date(tmp_path: Path) -> None:
    assert main(["--check", "--out", str(EXPORTS)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 1  # nothing there yet
    assert "GENERATED" in (EXPORTS / "README.md").read_text()


def test_uci_format_lines_exactly() -> None:
    first = {name: (EXPORTS / name).read_text().splitlines()[0] for name in UCI_FILES.values()}
    assert first["processed.cleveland.data"] == "63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0"
    assert first["processed.hungarian.data"] == "28,1,2,130,132,0,2,185,0,0,?,?,?,0"
    assert first["processed.va.data"] == "63,1,4,140,260,0,1,112,1,3,2,?,?,2"
    va = (EXPORTS / "processed.va.data").read_text().splitlines()
    assert va[754 - 721] == "55,1,3,0,0,0,0,155,0,1.5,2,?,?,3"  # id 754: blood pressure and cholesterol written 0
    swiss = [line.split(",") for line in (EXPORTS / "processed.switzerland.data").read_text().splitlines()]
    assert {fields[4] for fields in swiss} == {"0"} and {len(fields) for fields in swiss} == {14}
    variant = (EXPORTS / VARIANT_FILE).read_text().splitlines()
    assert variant[1] == "304;0;M;28;atyp. angina;130;3,41;no;LVH;185;N;0;-9;-9;-9"


def test_exports_keep_uci_num_and_the_zero_marks() -> None:
    table = export_table()
    assert table.loc[table["num"] > 0, "label"].eq(1).all() and table.loc[table["num"] == 0, "label"].eq(0).all()
    assert table["num"].value_counts().sort_index().tolist() == [411, 265, 109, 107, 28]
    zeros = table[table["chol_zero"]].groupby("hospital").size().to_dict()
    assert zeros == {"switzerland": 123, "va_long_beach": 49}
    assert table.loc[table["trestbps_zero"], "id"].tolist() == [754]


def test_cleaning_report_counts_each_rule(tmp_path: Path) -> None:
    va = load_mapped(MAPPINGS["va_long_beach"]).report
    changes = va.changes()
    assert changes["chol"] == {"missing code '0'": 49, "missing code '?'": 7}
    assert changes["trestbps"] == {"missing code '?'": 56, "out of range -> missing": 1}
    assert changes["num"] == {"recoded": 200}
    assert va.rows == 200 and va.row_number == "id = 720 + record number (1-based)"
    assert va.constants == {"hospital": "va_long_beach"} and va.not_provided == []
    assert va.missing["chol"] == 56 and va.missing["age"] == 0
    variant = load_mapped(VARIANT_MAPPING).report
    chol = next(c for c in variant.columns if c.column == "cholesterol_mmol_l")
    assert (chol.feature, chol.converted, chol.rounded, chol.observed, chol.missing) == ("chol", 271, 271, 271, 23)
    assert chol.conversion == "mmol/L -> mg/dL: x38.665 (molar mass 386.65 g/mol)" and chol.missing_codes == {"-9": 23}
    written = json.loads(variant.write_json(tmp_path / "reports" / "hungary.json").read_text())
    assert written["site_file"].endswith("hungarian-variant.csv") and written["rows"] == 294
    assert written["columns"][0]["column"] == "patient_id"


def test_missing_stays_missing_and_the_model_sees_the_mask(canonical: pd.DataFrame) -> None:
    from common.data.features import encode_tabular, tabular_columns

    mapped = load_mapped(MAPPINGS["switzerland"])
    table = mapped.table
    assert table["chol"].isna().all()  # every 0 read as not measured, none imputed
    x, mask = encode_tabular(table, mapped.mapping.schema)
    chol = [c.name for c in tabular_columns(mapped.mapping.schema)].index("chol")
    assert mask[:, chol].sum() == 0 and np.all(x[:, chol] == 0)


def test_numeric_codes_match_by_value() -> None:
    codes = Codes({"1": "male", "0": "female"})
    assert codes.lookup("1.0") == (True, "male") and codes.lookup("0.00") == (True, "female")
    assert codes.lookup("01") == (True, "male") and codes.lookup("2") == (False, None)
    comma = Codes({"-9": None, "0,5": "half"}, decimal=",")
    assert comma.lookup("-9,0") == (True, None) and comma.lookup("0,50") == (True, "half")
    assert comma.lookup("0.5") == (False, None)  # a decimal point is not this file's separator
    assert comma.code_for("-9,00") == "-9"


_VISITS_SCHEMA = """
[schema]
name = "visits"
[features.id]
role = "id"
type = "integer"
required = true
unique = true
[features.admitted]
modality = "tabular"
type = "timestamp"
"""


def _visits(tmp_path: Path, column: str, rows: list[str]) -> Path:
    (tmp_path / "visits.toml").write_text(_VISITS_SCHEMA)
    (tmp_path / "visits.csv").write_text("visit;admitted\n" + "".join(f"{i + 1};{r}\n" for i, r in enumerate(rows)))
    mapping = tmp_path / "visits-map.toml"
    mapping.write_text(
        f'[mapping]\nschema = "visits.toml"\n[file]\npath = "visits.csv"\ndelimiter = ";"\nmissing = ["n/a"]\n'
        f'[columns.visit]\nfeature = "id"\n[columns.admitted]\n{column}\n'
    )
    return mapping


def test_time_alignment_from_a_site_zone_onto_utc(tmp_path: Path) -> None:
    # a constructed timestamp column (the hospital data has none): Budapest local time, summer and winter
    mapping = _visits(tmp_path, 'format = "%d.%m.%Y %H:%M"\ntimezone = "Europe/Budapest"',
                      ["01.07.2021 14:30", "15.01.2021 08:00", "n/a", "31.10.2021 23:59"])  # fmt: skip
    mapped = load_mapped(mapping)
    times = mapped.table["admitted"]
    # pandas 2 stores ns, pandas 3 us resolution: what matters is a tz-aware UTC column
    assert isinstance(times.dtype, pd.DatetimeTZDtype) and str(times.dt.tz) == "UTC"
    assert times.iloc[0] == pd.Timestamp("2021-07-01 12:30", tz="UTC")  # CEST = UTC+2
    assert times.iloc[1] == pd.Timestamp("2021-01-15 07:00", tz="UTC")  # CET = UTC+1
    assert pd.isna(times.iloc[2]) and times.iloc[3] == pd.Timestamp("2021-10-31 22:59", tz="UTC")
    column = mapped.report.columns[1]
    assert (column.to_utc, column.missing_codes, column.observed) == (3, {"n/a": 1}, 3)


def test_time_alignment_with_offsets_in_the_data(tmp_path: Path) -> None:
    mapping = _visits(tmp_path, 'format = "%Y-%m-%dT%H:%M%z"', ["2021-03-28T01:30+0100", "2021-03-28T03:30+0200"])
    times = load_mapped(mapping).table["admitted"]
    assert times.tolist() == [pd.Timestamp("2021-03-28 00:30", tz="UTC"), pd.Timestamp("2021-03-28 01:30", tz="UTC")]
