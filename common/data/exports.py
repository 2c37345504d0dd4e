"""GENERATED hospital exports: the canonical heart data written back out the way sites really ship it.

UCI's raw per-hospital files are not available offline, so this module writes them from the canonical data
(:func:`common.data.heart.load_heart_disease`) in UCI's own distribution format: one ``processed.<name>.data`` file per
hospital, no header, the 14 columns of :data:`UCI_COLUMNS`, UCI's numeric category codes, ``?`` for missing, and 0 for
a cholesterol or resting blood pressure the source marks as unmeasured with 0 (Switzerland, VA Long Beach). It also
writes one *variant* export of Hungary with other column names, cholesterol in mmol/L, other codes, a decimal comma,
``;`` delimiter, a header and ``-9`` for missing. The files are inputs for the site mappings in ``data/mappings``.

Run ``python -m common.data.exports`` to rewrite ``data/uci-heart-disease/exports`` (``--check`` only compares).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from common.data.heart import DEFAULT_CSV_PATH, HOSPITALS, load_heart_disease

__all__ = ["DEFAULT_EXPORT_DIR", "UCI_CODES", "UCI_COLUMNS", "UCI_FILES", "VARIANT_CODES", "VARIANT_COLUMNS",
           "VARIANT_FILE", "VARIANT_HOSPITAL", "export_table", "main", "uci_text", "variant_text",
           "write_exports"]  # fmt: skip

DEFAULT_EXPORT_DIR = DEFAULT_CSV_PATH.parent / "exports"

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


def export_table(csv_path: Path | None = None) -> pd.DataFrame:
    """The canonical table with what the exports need besides it.

    Returns
    -------
    pandas.DataFrame
        :func:`load_heart_disease`'s columns plus ``num`` (UCI's diagnosis 0-4, int64) and ``chol_zero`` /
        ``trestbps_zero`` (bool: the source CSV writes 0 there for "not measured"; the canonical value is missing).
    """
    path = Path(csv_path) if csv_path is not None else DEFAULT_CSV_PATH
    table = load_heart_disease(path)
    source = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("id")
    source.index = source.index.astype("int64")
    source = source.loc[table["id"]]
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


def _texts(csv_path: Path | None) -> dict[str, str]:
    table = export_table(csv_path)
    texts = {}
    for hospital in HOSPITALS:
        rows = table[table["hospital"] == hospital]
        texts[UCI_FILES[hospital]] = uci_text(rows, decimal_point=hospital == "cleveland")
    texts[VARIANT_FILE] = variant_text(table[table["hospital"] == VARIANT_HOSPITAL])
    return texts


def write_exports(out_dir: Path = DEFAULT_EXPORT_DIR, *, csv_path: Path | None = None) -> list[Path]:
    """Write the four UCI-format exports and the variant into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in _texts(csv_path).items():
        path = out_dir / name
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m common.data.exports [--out DIR] [--csv FILE] [--check]``."""
    parser = argparse.ArgumentParser(prog="python -m common.data.exports", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_EXPORT_DIR, help="folder to write (default: %(default)s)")
    parser.add_argument("--csv", type=Path, default=None, help="canonical CSV (default: the repository's copy)")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = [n for n, t in _texts(args.csv).items()
                 if not (args.out / n).is_file() or (args.out / n).read_bytes() != t.encode("utf-8")]  # fmt: skip
        for name in stale:
            print(f"{args.out / name}: missing or out of date; run python -m common.data.exports", file=sys.stderr)
        return 1 if stale else 0
    for path in write_exports(args.out, csv_path=args.csv):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
