"""Malformed site files, in every format, and malformed [file] tables: one DataContractError each, whose whole
message names the file, the line (or row) and column, or the mapping key, and what was expected.

Each case writes the CONSTRUCTED clinic records (conftest.py) in one format, breaks one thing, and matches the
message a site's data engineer reads. None may chain a library's exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.data.cleaning import load_mapped
from common.data.schema import DataContractError

M = r" \(mapping \S*site\.toml\)$"  # every message about the file ends by naming the mapping

ARFF_HEAD = ("% CONSTRUCTED clinic table\n@relation clinic\n@attribute pid integer\n@attribute age numeric\n"
             "@attribute bmi numeric\n@attribute insulin_mU_L numeric\n@attribute chol_mmol numeric\n"
             "@attribute sex {M,F}\n@attribute smoker {yes,no}\n@attribute outcome {0,1}\n@data\n")  # fmt: skip
ARFF_ROWS = "1,63,27.5,94,6.03,M,yes,1\n2,41,?,16,4.5,F,no,0\n3,57,31.25,?,?,F,yes,1\n"


def _arff(head: str = ARFF_HEAD, rows: str = ARFF_ROWS) -> tuple[str, str]:
    return 'path = "site.arff"\nformat = "arff"', head + rows


def _csv(clinic, edit: Callable[[list[str]], list[str]] = lambda lines: lines, extra: str = "") -> tuple[str, str]:
    return 'path = "site.csv"' + extra, clinic.edit_lines(clinic.csv_text(), edit)


def _set(line: int, field: int, value: str) -> Callable[[list[str]], list[str]]:
    def edit(lines: list[str]) -> list[str]:
        cells = lines[line - 1].split(",")
        cells[field] = value
        lines[line - 1] = ",".join(cells)
        return lines

    return edit


def _excel(clinic, rows: list[list[object]]) -> tuple[str, bytes]:
    book = openpyxl.Workbook()
    book.active.title = "Patients"
    for row in [list(clinic.HEADER), *rows]:
        book.active.append(row)
    book.save(clinic.folder / "site.xlsx")
    return 'path = "site.xlsx"\nformat = "excel"', (clinic.folder / "site.xlsx").read_bytes()


def _parquet(clinic, table: pa.Table) -> tuple[str, bytes]:
    pq.write_table(table, clinic.folder / "site.parquet")
    return 'path = "site.parquet"\nformat = "parquet"', (clinic.folder / "site.parquet").read_bytes()


def _good_parquet(clinic, **replace: pa.Array) -> pa.Table:
    columns = {n: pa.array(list(v)) for n, v in zip(clinic.HEADER, zip(*clinic.ROWS, strict=True), strict=True)}
    return pa.table({**columns, **replace})


CASES: dict[str, tuple[Callable, str]] = {
    # ----------------------------------------------------------------- ARFF
    "ARFF: value outside the nominal declaration": (
        lambda c: _arff(rows=ARFF_ROWS + "4,29,19,0,5.17,X,no,0\n"),
        r"site\.arff line 15, column 'sex': 'X' is not a value of nominal attribute 'sex'; expected one of 'M', 'F' "
        r"\(declared on line 8\), or \? if missing" + M),
    "ARFF: text in a numeric attribute": (
        lambda c: _arff(rows="1,sixty,27.5,94,6.03,M,yes,1\n"),
        r"site\.arff line 12, column 'age': 'sixty' is not a number; expected a number \(numeric attribute declared "
        r"on line 4\), or \? if missing" + M),
    "ARFF: fraction in an integer attribute": (
        lambda c: _arff(rows="1.5,63,27.5,94,6.03,M,yes,1\n"),
        r"site\.arff line 12, column 'pid': '1\.5' is not a whole number; expected an integer \(attribute declared "
        r"on line 3\), or \? if missing" + M),
    "ARFF: record with too few values": (
        lambda c: _arff(rows="% a comment line\n1,63,27.5,94,6.03,M,yes\n"),
        r"site\.arff line 13: 7 values; expected 8 values, one per @attribute \(pid, age, bmi, insulin_mU_L, "
        r"chol_mmol, sex, smoker, outcome\)" + M),
    "ARFF: unknown attribute type": (
        lambda c: _arff(head=ARFF_HEAD.replace("@attribute bmi numeric", "@attribute bmi blob")),
        r"site\.arff line 5: not a valid @attribute declaration \(liac-arff: Bad @ATTRIBUTE type\); expected "
        r"@attribute <name> <type>, the type one of numeric, real, integer, string, date \[format\] or "
        r"\{value1, value2, \.\.\.\}" + M),
    "ARFF: no @data section": (
        lambda c: _arff(head=ARFF_HEAD.replace("@data\n", ""), rows=""),
        r"site\.arff line 10: no @data line; expected @relation, @attribute lines, then @data and the records" + M),
    "ARFF: attribute declared twice": (
        lambda c: _arff(head=ARFF_HEAD.replace("@attribute bmi numeric", "@attribute age numeric")),
        r"site\.arff line 5: attribute 'age' is declared twice; expected a distinct name for every @attribute" + M),
    "ARFF: unbalanced quote in a record": (
        lambda c: _arff(rows="1,63,27.5,94,6.03,'M,yes,1\n"),
        r"site\.arff line 12: not a valid ARFF data line \(liac-arff: Invalid layout of the ARFF file: Error parsing "
        r"\"1,63,27\.5,94,6\.03,'M,yes,1\"\); expected 8 "
        r"comma-separated values, quoted with ' or \" if they hold spaces or commas; \? for a missing value" + M),
    "ARFF: sparse index past the attributes": (
        lambda c: _arff(rows="{0 1, 1 63, 9 2}\n"),
        r"site\.arff line 12: sparse index 9 is not an attribute; expected indexes 0 to 7" + M),
    "ARFF: a data line before @data": (
        lambda c: _arff(head=ARFF_HEAD.replace("@attribute sex {M,F}\n", "@attribute sex {M,F}\n1,2,3\n")),
        r"site\.arff line 9: unexpected line '1,2,3' in the header; expected @relation <name>, @attribute <name> "
        r"<type>, @data or a % comment" + M),
    # ----------------------------------------------------------------- CSV / TSV
    "CSV: a comment line when the mapping declares no comment prefix": (
        lambda c: _csv(c, lambda lines: [lines[0], "# checked 2026-11-30", *lines[1:]]),
        r"site\.csv line 2: 1 fields; expected 8 fields separated by ',' \(pid, age, bmi, insulin_mU_L, chol_mmol, "
        r"sex, smoker, outcome\)" + M),
    "CSV: a value that is not a number, after skipped comment lines": (
        lambda c: _csv(c, lambda lines: [lines[0], "# one", "# two", *_set(2, 2, "n/a")(lines)[1:]],
                       '\ncomment = "#"'),
        r"site\.csv line 4, column 'bmi': 'n/a' is not a number; expected a number with decimal separator '\.'" + M),
    "CSV: a cell that is not text in the declared encoding, far into the file": (
        lambda c: ('path = "site.csv"', (c.csv_text() + "".join(f"{i},50,25.0,10.0,5.0,F,no,0\n"
                                                               for i in range(7, 9007))).encode() + b"9007,5\xff\n"),
        r"site\.csv line 9008: byte 0xff is not valid utf-8 text; expected text in the encoding the mapping names "
        r"\(\[file\] encoding = 'utf-8'\)"),
    "CSV: a repeated id in the second chunk": (
        lambda c: ('path = "site.csv"', c.csv_text() + "".join(f"{i},50,25.0,10.0,5.0,F,no,0\n"
                                                               for i in range(7, 3000)) + "4,50,25.0,,,F,no,0\n"),
        r"site\.csv line 3001, column 'pid': id 4 also appears on line 5; expected each id once" + M),
    "TSV: a column the header lacks": (
        lambda c: ('path = "site.tsv"\nformat = "tsv"', c.csv_text("\t").replace("insulin_mU_L", "insulin")),
        r"site\.tsv line 1: missing column\(s\) 'insulin_mU_L' -> insulin; expected a header naming every mapped "
        r"column; it has \['pid', 'age', 'bmi', 'insulin', 'chol_mmol', 'sex', 'smoker', 'outcome'\]" + M),
    # ----------------------------------------------------------------- Excel
    "Excel: a word in a numeric column": (
        lambda c: _excel(c, [list(c.ROWS[0]), [2, "forty", 20.0, 10.0, 4.0, "F", "no", 0]]),
        r"site\.xlsx row 3, column 'age': 'forty' is not a number; expected a number with decimal separator '\.'"
        + M),
    "Excel: a cell right of the header's last column": (
        lambda c: _excel(c, [list(c.ROWS[0]), [*c.ROWS[1], "stray note"]]),
        r"site\.xlsx row 3: 9 fields; expected 8 fields \(pid, age, bmi, insulin_mU_L, chol_mmol, sex, smoker, "
        r"outcome\)" + M),
    "Excel: a CSV renamed .xlsx": (
        lambda c: ('path = "site.xlsx"\nformat = "excel"', c.csv_text()),
        r"site\.xlsx: not readable as an Excel workbook \(BadZipFile: File is not a zip file\); expected an \.xlsx workbook "
        r"\(Excel 2010 or later\)" + M),
    "Excel: no such worksheet": (
        lambda c: (_excel(c, [list(c.ROWS[0])])[0] + '\nsheet = "Data"', (c.folder / "site.xlsx").read_bytes()),
        r"site\.xlsx: has no worksheet 'Data'; expected \[file\] sheet = one of \['Patients'\]" + M),
    # ----------------------------------------------------------------- Parquet
    "Parquet: a list-typed column": (
        lambda c: _parquet(c, _good_parquet(c, bmi=pa.array([[1.0]] * 6))),
        r"site\.parquet, column 'bmi': has Arrow type list<element: double>; expected numbers, text, booleans, dates "
        r"or timestamps \(one value per cell\)" + M),
    "Parquet: a fraction in the integer label": (
        lambda c: _parquet(c, _good_parquet(c, outcome=pa.array([1, 0, 0.5, 0, 1, 0]))),
        r"site\.parquet row 3, column 'outcome': '0\.5' is not a whole number; expected an integer from 0 to 1"
        + M),
    "Parquet: not a Parquet file": (
        lambda c: ('path = "site.parquet"\nformat = "parquet"', c.csv_text()),
        r"site\.parquet: not readable as Parquet \(.*\); expected a Parquet file" + M),
    # ----------------------------------------------------------------- limits
    "any format: a file over the declared maximum size": (
        lambda c: ('path = "site.csv"\nmax_bytes = 100', b"\xff\x00 not even text " * 20),
        r"site\.csv: the file is 340 bytes, over the site's limit of 100 bytes \(\[file\] max_bytes = 100\); "
        r"nothing was parsed; expected a file of at most 100 bytes, or a larger \[file\] max_bytes" ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_malformed_file_fails_with_one_clear_message(clinic, case: str) -> None:
    make, expected = CASES[case]
    file_table, data = make(clinic)
    path = re.search(r'path = "([^"]+)"', file_table).group(1)
    clinic.write(path, data)
    mapping = clinic.mapping("site", file_table)
    with pytest.raises(DataContractError, match=expected) as caught:
        load_mapped(mapping)
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    assert "\n" not in str(error) and str(clinic.folder) in str(error)


def test_at_least_fifteen_new_malformed_file_cases() -> None:
    assert len(CASES) >= 15 and sum(case.startswith("ARFF") for case in CASES) >= 5


@pytest.mark.parametrize(
    ("file_table", "expected"),
    [
        ('path = "a.csv"\nformat = "xls"',
         r"site\.toml, \[file\] format: 'xls' is not a format fedfusion reads; expected one of 'csv', 'tsv', "
         r"'excel', 'parquet', 'arff'$"),
        ('path = "a.tsv"\nformat = "tsv"\ndelimiter = ";"',
         r"site\.toml, \[file\] delimiter: does not apply to format 'tsv'; expected only keys \[.*'skip_lines'\] "
         r"with format 'tsv'$"),
        ('path = "a.parquet"\nformat = "parquet"\nencoding = "latin-1"',
         r"site\.toml, \[file\] encoding: does not apply to format 'parquet'; expected only keys \['format', "
         r"'ignore', 'max_bytes', 'missing', 'path'\] with format 'parquet'$"),
        ('path = "a.csv"\nskip_lines = -1', r"site\.toml, \[file\] skip_lines: is -1; expected a whole number of lines"),
        ('path = "a.csv"\ncomment = ["#", " "]',
         r"site\.toml, \[file\] comment: \['#', ' '\] holds an empty prefix; expected line prefixes such as '#'"),
        ('path = "a.csv"\nmax_bytes = "1 GB"',
         r"site\.toml, \[file\] max_bytes: is '1 GB'; expected a whole number of bytes > 0, e.g. 500_000_000$"),
        ('path = "a.xlsx"\nformat = "excel"\nsheet = 2',
         r"site\.toml, \[file\] sheet: is 2; expected the worksheet's name, e.g. 'Sheet1'$"),
    ],
)  # fmt: skip
def test_malformed_file_table_names_the_key(clinic, file_table: str, expected: str) -> None:
    with pytest.raises(DataContractError, match=expected):
        load_mapped(clinic.mapping("site", file_table))


def test_unit_the_schema_cannot_reach_names_the_column_and_both_kinds(clinic) -> None:
    clinic.write("site.csv", clinic.csv_text())
    columns = clinic.COLUMNS.replace('unit = "mmol/L"', 'unit = "mmol/L/min"')
    with pytest.raises(DataContractError, match=r"site\.toml, \[columns\.chol_mmol\] unit: no conversion from 'mmol/L/min' "
                       r"\(\[substance\] / \[length\] \*\* 3 / \[time\]\) to 'mg/dL' \(\[mass\] / \[length\] \*\* 3\); "
                       r"expected a unit of the same kind as 'mg/dL', e.g. 'mg/dL', 'g/L'$"):
        load_mapped(clinic.mapping("site", 'path = "site.csv"', columns))
