"""Data preparation of the UCI Heart Disease example (domain code: it lives here, not in ``common/``).

1. ``heart.csv``: ``heart_disease_uci.csv`` (the Kaggle-derived copy, unchanged) with its one defect that no mapping
   can undo corrected: row id 304 is labelled Cleveland but is Hungary's first patient (see README.md). The other
   defects (0 = "not measured" for cholesterol and resting blood pressure) are missing codes of the mapping
   ``data/mappings/uci-heart.toml``, which every hospital of the ``hospitals`` scenarios reads.
2. ``exports/``: GENERATED per-hospital exports in UCI's own distribution format (one ``processed.<name>.data`` per
   hospital: no header, the 14 columns of :data:`UCI_COLUMNS`, UCI's numeric codes, ``?`` for missing, and 0 for a
   cholesterol or resting blood pressure the source marks as unmeasured), written from the mapped canonical table,
   plus one *variant* export of Hungary (other column names, cholesterol in mmol/L, other codes, decimal comma, ``;``,
   a header and ``-9`` for missing). They are the inputs of the ``hospitals-exports`` scenario's mappings.

Run from anywhere: ``python data/uci-heart-disease/prepare.py`` rewrites both; ``--check`` only compares (exit 1 if a
committed file is stale; a test runs it).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository, for common.data when run as a script

from common.data.cleaning import load_mapped  # noqa: E402

SOURCE_CSV = HERE / "heart_disease_uci.csv"
CORRECTED_CSV = HERE / "heart.csv"
MAPPING = HERE.parent / "mappings" / "uci-heart.toml"
DEFAULT_EXPORT_DIR = HERE / "exports"
HOSPITALS = ("cleveland", "hungary", "switzerland", "va_long_beach")
# Row 304 is labelled Cleveland, but Cleveland has 303 patients (ids 1-303) and this row is Hungary's first patient
# (processed.hungarian.data line 1: age 28, resting BP 130, cholesterol 132, max HR 185). Matched on these values
# too, so a different file that happens to contain an id 304 is left alone.
_MISLABELLED_ROW = {"id": "304", "dataset": "Cleveland", "age": "28", "trestbps": "130", "chol": "132",
                    "thalch": "185"}  # fmt: skip
_TRUE_HOSPITAL = "Hungary"

__all__ = ["UCI_CODES", "UCI_COLUMNS", "UCI_FILES", "VARIANT_CODES", "VARIANT_COLUMNS", "corrected_text",
           "export_table", "main", "uci_text", "variant_text"]  # fmt: skip

#: UCI's column order ("thalach" is UCI's name of the canonical "thalch"; "num" is the diagnosis 0-4)
UCI_COLUMNS = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak", "slope",
               "ca", "thal", "num")  # fmt: skip
UCI_FILES = {
    "cleveland": "processed.cleveland.data", "hungary": "processed.hungarian.data",
    "switzerland": "processed.switzerland.data", "va_long_beach": "processed.va.data",
}  # fmt: skip
#: canonical value -> UCI code (heart-disease.names: sex 1 = male; cp 1-4; restecg 0-2; slope 1-3; thal 3/6/7)
UCI_CODES: dict[str, dict[object, int]] = {
    "sex": {"male": 1, "female": 0},
    "cp": {"typical angina": 1, "atypical angina": 2, "non-anginal": 3, "asymptomatic": 4},
    "fbs": {True: 1, False: 0},
    "restecg": {"normal": 0, "st-t abnormality": 1, "lv hypertrophy": 2},
    "exang": {True: 1, False: 0},
    "slope": {"upsloping": 1, "flat": 2, "downsloping": 3},
    "thal": {"normal": 3, "fixed defect": 6, "reversable defect": 7},
}

VARIANT_HOSPITAL = "hungary"
VARIANT_FILE = "hungarian-variant.csv"
#: the variant's header, in its order, and the canonical feature each column holds
VARIANT_COLUMNS = {
    "patient_id": "id", "diagnosis_grade": "num", "gender": "sex", "age_years": "age", "chest_pain": "cp",
    "rest_bp_mmhg": "trestbps", "cholesterol_mmol_l": "chol", "fasting_glucose_high": "fbs", "rest_ecg": "restecg",
    "max_heart_rate": "thalch", "exercise_angina": "exang", "st_depression_mm": "oldpeak", "st_slope": "slope",
    "vessels_coloured": "ca", "thallium": "thal",
}  # fmt: skip
VARIANT_CODES: dict[str, dict[object, str]] = {
    "sex": {"male": "M", "female": "F"},
    "cp": {"typical angina": "typ. angina", "atypical angina": "atyp. angina", "non-anginal": "non-anginal pain",
           "asymptomatic": "asympt."},  # fmt: skip
    "fbs": {True: "yes", False: "no"},
    "restecg": {"normal": "normal", "st-t abnormality": "ST-T abn.", "lv hypertrophy": "LVH"},
    "exang": {True: "Y", False: "N"},
    "slope": {"upsloping": "up", "flat": "flat", "downsloping": "down"},
    "thal": {"normal": "normal", "fixed defect": "fixed", "reversable defect": "reversible"},
}
_VARIANT_MISSING = "-9"
_CHOLESTEROL_MG_DL_PER_MMOL_L = 38.67  # as registered in common.data.units


def corrected_text(source: Path = SOURCE_CSV) -> str:
    """``source`` with row 304's hospital corrected (every other byte unchanged)."""
    text = source.read_text(encoding="utf-8")
    lines = text.split("\n")
    header = next(csv.reader([lines[0]]))
    fixed = 0
    for number, line in enumerate(lines[1:], start=1):
        if not line:
            continue
        row = dict(zip(header, next(csv.reader([line])), strict=True))
        if all(row.get(k) == v for k, v in _MISLABELLED_ROW.items()):
            row["dataset"] = _TRUE_HOSPITAL
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow([row[c] for c in header])
            lines[number], fixed = out.getvalue(), fixed + 1
    if fixed != 1:
        raise SystemExit(f"{source}: expected exactly one row matching {_MISLABELLED_ROW}, found {fixed}")
    return "\n".join(lines)


def export_table(corrected: Path = CORRECTED_CSV) -> pd.DataFrame:
    """The canonical table (the mapping of ``corrected``) with what the exports need besides it.

    Returns
    -------
    pandas.DataFrame
        The mapped table's columns plus ``num`` (UCI's diagnosis 0-4, int64) and ``chol_zero`` / ``trestbps_zero``
        (bool: the source writes 0 there for "not measured"; the canonical value is missing).
    """
    table = load_mapped(MAPPING, data_file=corrected).table
    source = pd.read_csv(corrected, dtype=str, keep_default_na=False).set_index("id")
    source.index = source.index.astype("int64")
    source = source.loc[table["id"].to_numpy(dtype="int64")]
    return table.assign(
        num=source["num"].astype("int64").to_numpy(),
        chol_zero=(source["chol"] == "0").to_numpy(),
        trestbps_zero=(source["trestbps"] == "0").to_numpy(),
    )


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _number(value: float, *, decimal_point: bool, comma: bool = False) -> str:
    value = float(value)
    text = (f"{value:.1f}" if decimal_point else str(int(value))) if value.is_integer() else repr(value)
    return text.replace(".", ",") if comma else text


def uci_text(rows: pd.DataFrame, *, decimal_point: bool = False) -> str:
    """Rows of :func:`export_table` in UCI's ``processed.*.data`` format.

    Parameters
    ----------
    rows
        One hospital's rows, in the order to write them.
    decimal_point
        Write whole numbers as ``63.0`` (UCI's Cleveland file does) instead of ``63``; ``num`` is always whole.
    """
    lines = []
    for row in rows.to_dict("records"):
        cells = []
        for column in UCI_COLUMNS:
            feature = "thalch" if column == "thalach" else column
            value = row[feature]
            if feature in ("chol", "trestbps") and row[f"{feature}_zero"]:
                value = 0.0  # the source's own "not measured" mark, kept so the mapping must handle it
            if _missing(value):
                cells.append("?")
            elif feature == "num":
                cells.append(str(int(value)))
            else:
                code = UCI_CODES[feature][value] if feature in UCI_CODES else value
                cells.append(_number(code, decimal_point=decimal_point))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def variant_text(rows: pd.DataFrame) -> str:
    """Rows of :func:`export_table` as the variant export: header, ``;``, decimal comma, mmol/L, ``-9`` = missing."""
    lines = [";".join(VARIANT_COLUMNS)]
    for row in rows.to_dict("records"):
        cells = []
        for feature in VARIANT_COLUMNS.values():
            value = row[feature]
            if _missing(value):
                cells.append(_VARIANT_MISSING)
            elif feature in VARIANT_CODES:
                cells.append(VARIANT_CODES[feature][value])
            elif feature == "chol":
                cells.append(f"{value / _CHOLESTEROL_MG_DL_PER_MMOL_L:.2f}".replace(".", ","))
            else:
                cells.append(_number(value, decimal_point=False, comma=True))
        lines.append(";".join(cells))
    return "\n".join(lines) + "\n"


def _texts(corrected: Path) -> dict[str, str]:
    table = export_table(corrected)
    texts = {}
    for hospital in HOSPITALS:
        rows = table[table["hospital"] == hospital]
        texts[UCI_FILES[hospital]] = uci_text(rows, decimal_point=hospital == "cleveland")
    texts[VARIANT_FILE] = variant_text(table[table["hospital"] == VARIANT_HOSPITAL])
    return texts


def _outputs(out_dir: Path) -> dict[Path, str]:
    corrected = corrected_text()
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / CORRECTED_CSV.name
        staged.write_bytes(corrected.encode("utf-8"))
        exports = _texts(staged)
    return {CORRECTED_CSV: corrected, **{out_dir / name: text for name, text in exports.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    """``python data/uci-heart-disease/prepare.py [--out DIR] [--check]``."""
    parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_EXPORT_DIR, help="exports folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only compare with the committed files; exit 1 if stale")
    args = parser.parse_args(argv)
    outputs = _outputs(args.out)
    if args.check:
        stale = [p for p, t in outputs.items() if not p.is_file() or p.read_bytes() != t.encode("utf-8")]
        for path in stale:
            print(f"{path}: missing or out of date; run python data/uci-heart-disease/prepare.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in outputs.items():
        path.write_bytes(text.encode("utf-8"))
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
