"""UCI Heart Disease (Cleveland, Hungary, Switzerland, VA Long Beach): loader and defect corrections.

The shipped file ``data/uci-heart-disease/heart_disease_uci.csv`` is the Kaggle-derived CSV (920 rows, one per
patient, categories already decoded to words, ``?`` already blank). :func:`load_heart_disease` validates it and
returns one canonical, corrected table; every correction below is documented in that folder's README.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_CSV_PATH", "HOSPITALS", "HOSPITAL_DISPLAY_NAMES", "CANONICAL_COLUMNS", "CATEGORIES", "HeartDataError",
    "load_heart_disease",
]  # fmt: skip

DEFAULT_CSV_PATH = Path(__file__).resolve().parents[2] / "data" / "uci-heart-disease" / "heart_disease_uci.csv"

HOSPITALS = ("cleveland", "hungary", "switzerland", "va_long_beach")
# slug -> the name the CSV's ``dataset`` column uses (also the name to show people)
HOSPITAL_DISPLAY_NAMES = {
    "cleveland": "Cleveland", "hungary": "Hungary", "switzerland": "Switzerland", "va_long_beach": "VA Long Beach",
}  # fmt: skip
_SLUG_BY_CSV_NAME = {name: slug for slug, name in HOSPITAL_DISPLAY_NAMES.items()}

# allowed words per categorical column (the CSV's spelling, "reversable" included); blank = not recorded
CATEGORIES: dict[str, tuple[str, ...]] = {
    "sex": ("male", "female"),
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
    "slope": ("upsloping", "flat", "downsloping"),
    "thal": ("normal", "fixed defect", "reversable defect"),
}
_NUMERIC = ("age", "trestbps", "chol", "thalch", "oldpeak", "ca")
_BOOLEAN = ("fbs", "exang")
_REQUIRED = ("id", "age", "sex", "dataset", "num")  # may not be blank
_CSV_COLUMNS = ("id", "dataset", *_NUMERIC, *_BOOLEAN, *CATEGORIES, "num")
CANONICAL_COLUMNS = (
    "id", "hospital", "age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak",
    "slope", "ca", "thal", "label",
)  # fmt: skip

# Row 304 is labelled Cleveland, but Cleveland has 303 patients (ids 1-303) and this row is Hungary's first patient
# (processed.hungarian.data line 1: age 28, resting BP 130, cholesterol 132, max HR 185). Matched on these values
# too, so a different file that happens to contain an id 304 is left alone.
_MISLABELLED_ROW = {
    "id": 304, "hospital": "cleveland", "age": 28.0, "trestbps": 130.0, "chol": 132.0, "thalch": 185.0,
}  # fmt: skip
_MISLABELLED_ROW_TRUE_HOSPITAL = "hungary"


class HeartDataError(ValueError):
    """The heart-disease CSV does not have the expected shape or content (message names file, line and column)."""


class _BadCell(ValueError):
    """A cell parser's complaint: ``args[0]`` says what the cell should have been."""


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise _BadCell("a number") from None
    if not np.isfinite(value):
        raise _BadCell("a finite number")
    return value


def _integer(low: int, high: int) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = _number(raw)
        if not (value.is_integer() and low <= value <= high):
            raise _BadCell(f"an integer from {low} to {high}")
        return value

    return parse


def _one_of(words: dict[str, object], *, what: str = "one of", case_sensitive: bool = False) -> Callable[[str], object]:
    def parse(raw: str) -> object:
        key = raw if case_sensitive else raw.lower()
        if key not in words:
            raise _BadCell(f"{what} {list(words)}")
        return words[key]

    return parse


# column -> parser of one non-blank cell (raises _BadCell)
_PARSERS: dict[str, Callable[[str], object]] = {
    "id": _integer(1, 10**9),
    "dataset": _one_of(_SLUG_BY_CSV_NAME, what="a known hospital, one of", case_sensitive=True),
    "num": _integer(0, 4),
    "ca": _integer(0, 3),
    **{c: _number for c in _NUMERIC if c != "ca"},
    **{c: _one_of({"true": True, "false": False}) for c in _BOOLEAN},
    **{c: _one_of({word: word for word in allowed}) for c, allowed in CATEGORIES.items()},
}


def _read_raw(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"heart-disease CSV not found: {path} (pass csv_path=... to load_heart_disease)")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise HeartDataError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in _CSV_COLUMNS if c not in raw.columns]
    if missing:
        raise HeartDataError(f"{path}: missing column(s) {missing}; expected columns {list(_CSV_COLUMNS)}")
    return raw


def _parse(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Parse every cell with its column's parser; blank cells become missing (NaN / None / pd.NA)."""
    columns: dict[str, list[object]] = {c: [] for c in _CSV_COLUMNS}
    for position, record in enumerate(raw[list(_CSV_COLUMNS)].itertuples(index=False)):
        line = position + 2  # line 1 is the header
        for column, cell in zip(_CSV_COLUMNS, record, strict=True):
            cell = cell.strip()
            try:
                if not cell and column in _REQUIRED:
                    raise _BadCell("a value (this column may not be blank)")
                columns[column].append(_PARSERS[column](cell) if cell else None)
            except _BadCell as bad:
                raise HeartDataError(f"{path}, line {line}, column '{column}': expected {bad}, got {cell!r}") from None
    table = pd.DataFrame(
        {
            "id": np.asarray(columns["id"], dtype=np.int64),
            "hospital": columns["dataset"],
            **{c: np.asarray(columns[c], dtype=np.float64) for c in _NUMERIC},  # None -> NaN
            **{c: pd.array(columns[c], dtype="boolean") for c in _BOOLEAN},
            **{c: columns[c] for c in CATEGORIES},
            "label": (np.asarray(columns["num"], dtype=np.float64) > 0).astype(np.int64),  # label = disease (num > 0)
        }
    )
    duplicated = table["id"][table["id"].duplicated()]
    if len(duplicated):
        line = int(duplicated.index[0]) + 2
        raise HeartDataError(f"{path}, line {line}, column 'id': id {int(duplicated.iloc[0])} appears more than once")
    return table


def _correct(table: pd.DataFrame) -> pd.DataFrame:
    """Apply the known defect corrections (each listed in data/uci-heart-disease/README.md)."""
    table = table.copy()
    # Cholesterol 0 mg/dl is impossible: the source writes 0 for "not measured" (all 123 Switzerland rows,
    # 49 VA Long Beach rows). Treat it as missing, not as a very low value.
    table.loc[table["chol"] == 0, "chol"] = np.nan
    # Resting blood pressure 0 mm Hg is impossible too (one VA Long Beach row, id 754): not measured.
    table.loc[table["trestbps"] == 0, "trestbps"] = np.nan
    # Row 304 belongs to Hungary, not Cleveland (see _MISLABELLED_ROW).
    match = np.ones(len(table), dtype=bool)
    for column, value in _MISLABELLED_ROW.items():
        match &= (table[column] == value).to_numpy()
    table.loc[match, "hospital"] = _MISLABELLED_ROW_TRUE_HOSPITAL
    return table


def load_heart_disease(csv_path: Path | None = None) -> pd.DataFrame:
    """Load the UCI heart-disease CSV as one validated, corrected table.

    Parameters
    ----------
    csv_path
        The CSV to read; defaults to the repository's copy (:data:`DEFAULT_CSV_PATH`). Pass an absolute path when
        the code runs from a Flower app bundle, which does not carry the CSV.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CANONICAL_COLUMNS`, sorted by ``id``: ``hospital`` is a slug from :data:`HOSPITALS`;
        age, trestbps, chol, thalch, oldpeak, ca are float64 (NaN = not recorded); fbs, exang are nullable booleans;
        sex, cp, restecg, slope, thal are lower-case words from :data:`CATEGORIES` (None = not recorded);
        ``label`` is int64, 1 if the source's ``num`` > 0 (angiographic disease), else 0.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    HeartDataError
        If a column is missing or a cell is not what its column expects (the message names file, line, column).
    """
    path = Path(csv_path) if csv_path is not None else DEFAULT_CSV_PATH
    table = _correct(_parse(_read_raw(path), path))
    return table.sort_values("id", ignore_index=True)[list(CANONICAL_COLUMNS)]
