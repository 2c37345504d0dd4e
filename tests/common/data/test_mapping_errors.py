"""Malformed site files and mappings: each fails with one DataContractError naming file, line / setting and column.

Each case copies a real mapping (Cleveland's UCI format, or Hungary's variant) and the first records of its export
into a temporary folder, breaks one thing, and checks the whole message a site's data engineer would read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from common.data.cleaning import load_mapped
from common.data.schema import DataContractError

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "data" / "schemas" / "heart.toml"
EXPORTS = ROOT / "data" / "uci-heart-disease" / "exports"
CLEVELAND = (ROOT / "data" / "mappings" / "cleveland.toml", EXPORTS / "processed.cleveland.data")
VARIANT = (ROOT / "data" / "mappings" / "hungary-variant.toml", EXPORTS / "hungarian-variant.csv")

Lines = list[str]


def _site(tmp_path: Path, site: tuple[Path, Path], *, lines: Callable[[Lines], Lines] | None = None,
          raw: bytes | None = None, mapping: Callable[[str], str] | None = None) -> Path:  # fmt: skip
    """A copy of ``site`` (mapping, export) in tmp_path, its first records edited by ``lines`` / ``mapping``."""
    mapping_src, export = site
    records = export.read_text().splitlines()[:6]
    data = raw if raw is not None else ("\n".join(lines(records) if lines else records) + "\n").encode()
    (tmp_path / export.name).write_bytes(data)
    text = mapping_src.read_text().replace('"../schemas/heart.toml"', f'"{SCHEMA.as_posix()}"')
    text = re.sub(r'(?m)^path = ".*"$', f'path = "{export.name}"', text, count=1)
    (tmp_path / mapping_src.name).write_text(mapping(text) if mapping else text)
    return tmp_path / mapping_src.name


def _cell(line: int, index: int, value: str, sep: str = ",") -> Callable[[Lines], Lines]:
    def edit(records: Lines) -> Lines:
        fields = records[line - 1].split(sep)
        fields[index] = value
        records[line - 1] = sep.join(fields)
        return records

    return edit


def _replace(old: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)

    return edit


def _drop_column(index: int) -> Callable[[Lines], Lines]:
    return lambda records: [";".join(f for i, f in enumerate(r.split(";")) if i != index) for r in records]


MAPPING_CLEVELAND = r" \(mapping \S*cleveland\.toml\)$"
MAPPING_VARIANT = r" \(mapping \S*hungary-variant\.toml\)$"

CASES = {
    "unknown category code": (CLEVELAND, {"lines": _cell(3, 2, "7")},
        r"processed\.cleveland\.data line 3, column 'cp': unknown code '7'; expected one of 1, 2, 3, 4, or a "
        r"missing-value code \('\?'\)" + MAPPING_CLEVELAND),
    "non-numeric value in a numeric column": (CLEVELAND, {"lines": _cell(2, 4, "high")},
        r"processed\.cleveland\.data line 2, column 'chol': 'high' is not a number; expected a number with decimal "
        r"separator '\.', or a missing-value code \('\?'\)" + MAPPING_CLEVELAND),
    "missing label": (CLEVELAND, {"lines": _cell(4, 13, "?")},
        r"processed\.cleveland\.data line 4, column 'num': missing value '\?' for required label feature 'label'; "
        r"expected an integer from 0 to 1 \(this feature may not be missing\)" + MAPPING_CLEVELAND),
    "blank required value": (CLEVELAND, {"lines": _cell(5, 0, "")},
        r"processed\.cleveland\.data line 5, column 'age': missing value '' for required feature 'age'; expected a "
        r"number from 0 to 120 years" ),
    "wrong number of fields in a row": (CLEVELAND, {"lines": lambda r: [*r[:5], r[5].rsplit(",", 1)[0]]},
        r"processed\.cleveland\.data line 6: 13 fields; expected 14 fields separated by ',' \(age, sex, cp, "
        r"trestbps, chol, fbs, restecg, thalach, exang, oldpeak, slope, ca, thal, num\)" + MAPPING_CLEVELAND),
    "count that is not whole": (CLEVELAND, {"lines": _cell(2, 11, "1.5")},
        r"processed\.cleveland\.data line 2, column 'ca': '1\.5' is not a whole number; expected an integer from 0 "
        r"to 3" + MAPPING_CLEVELAND),
    "non-UTF-8 text": (CLEVELAND, {"raw": b"63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"
                                          b"67.0,1.0,4.0,160.0,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,\xe9\n"},
        r"processed\.cleveland\.data line 2: byte 0xe9 is not valid utf-8 text; expected text in the encoding the "
        r"mapping names \(\[file\] encoding = 'utf-8'\)"),
    "empty file": (CLEVELAND, {"raw": b""},
        r"processed\.cleveland\.data line 1: the file is empty; expected one line per record" + MAPPING_CLEVELAND),
    "out-of-range value after unit conversion": (VARIANT, {"lines": _cell(3, 6, "25,00", ";")},
        r"hungarian-variant\.csv line 3, column 'cholesterol_mmol_l': 967 mg/dL \(read '25,00' mmol/L\) is outside "
        r"the allowed range; expected a number from 50 to 700 mg/dL \(or set out_of_range = 'missing' for this "
        r"column\)" + MAPPING_VARIANT),
    "duplicate ids": (VARIANT, {"lines": _cell(4, 0, "304", ";")},
        r"hungarian-variant\.csv line 4, column 'patient_id': id 304 also appears on line 2; expected each id once"),
    "missing required column": (VARIANT, {"lines": _drop_column(3)},
        r"hungarian-variant\.csv line 1: missing column\(s\) 'age_years' -> age; expected a header naming every "
        r"mapped column"),
    "column the mapping does not know": (VARIANT, {"lines": lambda r: [r[0] + ";ward", *(x + ";B2" for x in r[1:])]},
        r"hungarian-variant\.csv line 1: column\(s\) \['ward'\] are not in the mapping; expected a \[columns\.<name>\] "
        r"table for each, or list them in \[file\] ignore"),
    "header but no data rows": (VARIANT, {"lines": lambda r: r[:1]},
        r"hungarian-variant\.csv line 2: the file has a header but no data rows"),
    "site word not in the vocabulary": (VARIANT, {"mapping": _replace(
        'codes = { "normal" = "normal", "ST-T abn." = "st-t abnormality", "LVH" = "lv hypertrophy" }\n', "")},
        r"hungarian-variant\.csv line 2, column 'rest_ecg': unknown category 'LVH'; expected one of 'normal', "
        r"'st-t abnormality', 'lv hypertrophy', or a missing-value code \('-9'\) \(or map the site's words with "
        r"\[columns\.<name>\] codes\)" + MAPPING_VARIANT),
    "bad unit name in the mapping": (VARIANT, {"mapping": _replace('unit = "mmol/L"', 'unit = "mml/L"')},
        r"hungary-variant\.toml, \[columns\.cholesterol_mmol_l\] unit: unknown unit 'mml/L' \('mml' is not defined "
        r"in the unit registry\); expected a unit pint reads, e.g. 'mg/dL', 'mmol/L', 'mm Hg'"),
    "unit with no conversion to the schema's": (CLEVELAND, {"mapping": _replace('unit = "mg/dL"', 'unit = "kPa"')},
        r"cleveland\.toml, \[columns\.chol\] unit: no conversion from 'kPa' \(\[mass\] / \[length\] / \[time\] \*\* 2\) "
        r"to 'mg/dL' \(\[mass\] / \[length\] \*\* 3\); expected a unit of the same kind as 'mg/dL', e.g. 'mg/dL', 'g/L'"),
    "mapping names a feature the schema lacks": (CLEVELAND, {"mapping": _replace(
        "[columns.chol]\n", '[columns.chol]\nfeature = "cholesterol"\n')},
        r"cleveland\.toml, \[columns\.chol\] feature: feature 'cholesterol' is not in schema 'heart'; expected one "
        r"of id, hospital, age, sex, cp"),
    "code mapped to a word outside the vocabulary": (CLEVELAND, {"mapping": _replace(
        '"1" = "typical angina"', '"1" = "typical_angina"')},
        r"cleveland\.toml, \[columns\.cp\] codes\.1: 'typical_angina' is not a value of feature 'cp'; expected one "
        r"of 'typical angina', 'atypical angina', 'non-anginal', 'asymptomatic'$"),
    "required feature not mapped": (CLEVELAND, {"mapping": _replace('hospital = "cleveland"\n', "")},
        r"cleveland\.toml, columns: required feature\(s\) \['hospital'\] are not mapped"),
    "misspelt mapping key": (CLEVELAND, {"mapping": _replace('unit = "mm"\n', 'unts = "mm"\n')},
        r"cleveland\.toml, \[columns\.oldpeak\]: unknown key\(s\) \['unts'\]; expected keys from \['codes', "),
    "data file not found": (CLEVELAND, {"mapping": _replace('"processed.cleveland.data"', '"nowhere.data"')},
        r"nowhere\.data: file not found; expected the site's export at \[file\] path" + MAPPING_CLEVELAND),
    "ids numbered out of range": (CLEVELAND, {"mapping": _replace("offset = 0", "offset = -5")},
        r"cleveland\.toml, \[row_number\] offset: the records would be numbered from -4 to 1; expected an integer "
        r"from 1 to 1000000000$"),
    "mapping is not TOML": (CLEVELAND, {"mapping": _replace("[constants]", "[constants")},
        r"cleveland\.toml: not valid TOML"),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_fails_with_a_message_naming_where_and_what(tmp_path: Path, case: str) -> None:
    site, edits, expected = CASES[case]
    mapping = _site(tmp_path, site, **edits)
    with pytest.raises(DataContractError, match=expected) as caught:
        load_mapped(mapping)
    error = caught.value
    # no pandas / numpy / csv / tomllib exception chained to it
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "Traceback" not in str(error) and "\n" not in str(error)


def test_at_least_twelve_distinct_malformed_cases() -> None:
    assert len(CASES) >= 12


def test_error_parts_are_attributes(tmp_path: Path) -> None:
    mapping = _site(tmp_path, CLEVELAND, lines=_cell(3, 2, "7"))
    with pytest.raises(DataContractError) as caught:
        load_mapped(mapping)
    error = caught.value
    assert (Path(error.file).name, error.line, error.column, Path(error.mapping).name) == (
        "processed.cleveland.data", 3, "cp", "cleveland.toml")


_VISITS = """
[schema]
name = "visits"
[features.id]
role = "id"
type = "integer"
required = true
[features.admitted]
modality = "tabular"
type = "timestamp"
"""


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ('format = "%Y-%m-%d %H:%M"\ntimezone = "UTC"',
         r"visits\.csv line 3, column 'admitted': '2021-13-01 10:00' is not a timestamp in the site's format; "
         r"expected format '%Y-%m-%d %H:%M'"),
        ('format = "%Y-%m-%d %H:%M"\ntimezone = "Europe/Budapes"',
         r"visits\.toml, \[columns\.admitted\] timezone: unknown time zone 'Europe/Budapes'"),
        ('format = "%Y-%m-%d %H:%M"',
         r"visits\.toml, \[columns\.admitted\] timezone: missing; expected an IANA zone"),
    ],
)  # fmt: skip
def test_bad_timestamps_and_zones(tmp_path: Path, column: str, expected: str) -> None:
    (tmp_path / "schema.toml").write_text(_VISITS)
    (tmp_path / "visits.csv").write_text("id,admitted\n1,2021-01-01 10:00\n2,2021-13-01 10:00\n")
    mapping = tmp_path / "visits.toml"
    mapping.write_text(f'[mapping]\nschema = "schema.toml"\n[file]\npath = "visits.csv"\n[columns.id]\n'
                       f"[columns.admitted]\n{column}\n")  # fmt: skip
    with pytest.raises(DataContractError, match=expected):
        load_mapped(mapping)
