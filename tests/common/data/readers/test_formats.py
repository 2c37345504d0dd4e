"""Every format a mapping can name gives the same cleaned table from the same (CONSTRUCTED) records.

The files are written by the formats' own libraries (csv, openpyxl, pyarrow, liac-arff), typed where the format
has types; the expected table is computed in conftest.py from the records and the units' definitions.
"""

from __future__ import annotations

import arff
import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from common.data.cleaning import load_mapped


def _check(clinic, mapping):
    mapped = load_mapped(mapping)
    pd.testing.assert_frame_equal(mapped.table, clinic.expected(), check_exact=False, rtol=1e-12)
    return mapped


def test_csv_with_decimal_commas_a_banner_and_comment_lines(clinic) -> None:
    body = clinic.csv_text(";", ",", "-9")
    lines = body.splitlines()
    text = "Export of ward 3, 2026-11-30\n" + lines[0] + "\n# reviewed by the data manager\n" + "\n".join(lines[1:4])
    text += "\n\n% a second comment style\n" + "\n".join(lines[4:]) + "\n"
    clinic.write("site.csv", text.encode("cp1252"))
    mapping = clinic.mapping("csv", 'path = "site.csv"\ndelimiter = ";"\ndecimal = ","\nencoding = "cp1252"\n'
                                    'missing = ["-9"]\nskip_lines = 1\ncomment = ["#", "%"]')  # fmt: skip
    mapped = _check(clinic, mapping)
    assert (mapped.report.rows, mapped.report.blank_lines, mapped.report.skipped_lines) == (6, 1, 3)
    assert mapped.report.columns[4].conversion == "mmol/L -> mg/dL: x38.665 (molar mass 386.65 g/mol)"


def test_tsv_with_na_codes(clinic) -> None:
    clinic.write("site.tsv", clinic.csv_text("\t", ".", "NA"))
    _check(clinic, clinic.mapping("tsv", 'path = "site.tsv"\nformat = "tsv"\nmissing = ["NA"]'))


def test_excel_typed_cells_on_a_named_sheet(clinic) -> None:
    book = openpyxl.Workbook()
    book.active.title = "Notes"
    book.active.append(["this sheet is not the data"])
    sheet = book.create_sheet("Patients")
    sheet.append(list(clinic.HEADER))
    for row in clinic.ROWS:
        sheet.append(list(row))  # ints, floats, strings and empty cells, as Excel stores them
    book.save(clinic.folder / "site.xlsx")
    _check(clinic, clinic.mapping("excel", 'path = "site.xlsx"\nformat = "excel"\nsheet = "Patients"'))


def test_parquet_typed_columns(clinic) -> None:
    columns = list(zip(*clinic.ROWS, strict=True))
    table = pa.table({name: pa.array(list(values)) for name, values in zip(clinic.HEADER, columns, strict=True)})
    assert table.schema.field("age").type == pa.int64() and table.schema.field("bmi").type == pa.float64()
    pq.write_table(table, clinic.folder / "site.parquet", row_group_size=4)
    _check(clinic, clinic.mapping("parquet", 'path = "site.parquet"\nformat = "parquet"'))


def test_arff_with_nominal_attributes_comments_and_question_marks(clinic) -> None:
    text = arff.dumps({
        "description": "CONSTRUCTED clinic table", "relation": "clinic",
        "attributes": [("pid", "INTEGER"), ("age", "NUMERIC"), ("bmi", "REAL"), ("insulin_mU_L", "NUMERIC"),
                       ("chol_mmol", "NUMERIC"), ("sex", ["M", "F"]), ("smoker", ["yes", "no"]),
                       ("outcome", ["0", "1"])],
        "data": [[*row[:7], str(row[7])] for row in clinic.ROWS],
    })  # fmt: skip
    assert text.startswith("% CONSTRUCTED") and "?" in text  # liac-arff writes missing values as ?
    clinic.write("site.arff", text)
    mapped = _check(clinic, clinic.mapping("arff", 'path = "site.arff"\nformat = "arff"'))
    assert mapped.report.skipped_lines == 1


def test_sparse_arff_records(clinic) -> None:
    head = ("@relation clinic\n@attribute pid integer\n@attribute age numeric\n@attribute bmi numeric\n"
            "@attribute insulin_mU_L numeric\n@attribute chol_mmol numeric\n@attribute sex {M,F}\n"
            "@attribute smoker {yes,no}\n@attribute outcome {0,1}\n@data\n")  # fmt: skip
    dense = "".join(",".join("?" if v is None else str(v) for v in row) + "\n" for row in clinic.ROWS[1:])
    clinic.write("site.arff", head + "{0 1, 1 63, 2 27.5, 3 94.0, 4 6.03, 5 M, 6 yes, 7 1}\n" + dense)
    _check(clinic, clinic.mapping("arff", 'path = "site.arff"\nformat = "arff"'))
