"""A small CONSTRUCTED clinic table written in every format a mapping can name, with its schema and mappings.

The six patients below are made up for these tests (no real person); their values exercise units pint converts
(mmol/L cholesterol through its molar mass, kg/m2, mu U/ml), a categorical, a boolean, missing codes and blanks.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

SCHEMA = """
[schema]
name = "clinic"
description = "CONSTRUCTED test table"

[features.id]
role = "id"
type = "integer"
range = [1, 1_000_000]
required = true
unique = true

[features.age]
modality = "tabular"
type = "numeric"
unit = "years"
range = [0, 120]
required = true

[features.bmi]
modality = "tabular"
type = "numeric"
unit = "kg/m2"
range = [10, 80]

[features.insulin]
modality = "tabular"
type = "numeric"
unit = "mu U/ml"
range = [0, 1000]

[features.chol]
modality = "tabular"
type = "numeric"
unit = "mg/dL"
molar_mass = "386.65 g/mol"
range = [50, 700]

[features.sex]
modality = "tabular"
type = "categorical"
vocabulary = ["female", "male"]

[features.smoker]
modality = "tabular"
type = "boolean"

[features.label]
role = "label"
type = "integer"
range = [0, 1]
required = true
"""

HEADER = ("pid", "age", "bmi", "insulin_mU_L", "chol_mmol", "sex", "smoker", "outcome")
# one tuple per patient, as the site writes them (None = not recorded); insulin in mU/L, cholesterol in mmol/L
ROWS = (
    (1, 63, 27.5, 94.0, 6.03, "M", "yes", 1),
    (2, 41, None, 16.0, 4.5, "F", "no", 0),
    (3, 57, 31.25, None, None, "F", "yes", 1),
    (4, 29, 19.0, 0.0, 5.17, "M", None, 0),
    (5, 70, 24.0, 180.0, 7.2, None, "no", 1),
    (6, 35, 22.5, 45.5, 3.88, "F", "no", 0),
)


def expected_table() -> pd.DataFrame:
    """The clinic table the mapping must give from any format: computed here from ROWS and the units' definitions."""
    cols = list(zip(*ROWS, strict=True))
    nan = np.nan
    return pd.DataFrame({
        "id": pd.array(cols[0], dtype="Int64"),
        "age": np.asarray(cols[1], dtype=np.float64),
        "bmi": np.asarray([nan if v is None else v for v in cols[2]], dtype=np.float64),
        "insulin": np.asarray([nan if v is None else v for v in cols[3]], dtype=np.float64),  # 1 mU/L = 1 mu U/ml
        "chol": np.asarray([nan if v is None else round(v * 38.665, 1) for v in cols[4]]),  # 386.65 g/mol / 10
        "sex": pd.Series([{"M": "male", "F": "female"}.get(v) for v in cols[5]], dtype=object),
        "smoker": pd.array([None if v is None else v == "yes" for v in cols[6]], dtype="boolean"),
        "label": pd.array(cols[7], dtype="Int64"),
    })  # fmt: skip


COLUMNS = """
[columns.pid]
feature = "id"
[columns.age]
unit = "years"
[columns.bmi]
unit = "kg/m2"
[columns.insulin_mU_L]
feature = "insulin"
unit = "mU/L"
[columns.chol_mmol]
feature = "chol"
unit = "mmol/L"
round = 1
[columns.sex]
codes = { "M" = "male", "F" = "female" }
[columns.smoker]
codes = { "yes" = true, "no" = false }
[columns.outcome]
feature = "label"
"""


def csv_text(delimiter: str = ",", decimal: str = ".", missing: str = "") -> str:
    """ROWS as delimited text with a header line."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\n")
    writer.writerow(HEADER)
    for row in ROWS:
        writer.writerow([missing if v is None else str(v).replace(".", decimal) for v in row])
    return out.getvalue()


class Clinic:
    """A folder holding the clinic schema; writes site files and mappings into it."""

    HEADER, ROWS, COLUMNS = HEADER, ROWS, COLUMNS
    expected = staticmethod(expected_table)
    csv_text = staticmethod(csv_text)
    edit_lines = staticmethod(lambda text, edit: edit_lines(text, edit))

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "schema.toml").write_text(SCHEMA)

    def mapping(self, name: str, file_table: str, columns: str = COLUMNS) -> Path:
        """Write ``<name>.toml`` with the given ``[file]`` table body and ``[columns]`` tables."""
        path = self.folder / f"{name}.toml"
        path.write_text(f'[mapping]\nschema = "schema.toml"\n\n[file]\n{file_table}\n{columns}')
        return path

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path


@pytest.fixture
def clinic(tmp_path: Path) -> Clinic:
    return Clinic(tmp_path)


def edit_lines(text: str, edit: Callable[[list[str]], list[str]]) -> str:
    return "\n".join(edit(text.splitlines())) + "\n"
