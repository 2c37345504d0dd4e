"""Data preparation of the breast-cancer example: three clinics' own exports of the Wisconsin Diagnostic Breast Cancer
table (domain code: it lives here, not in ``common/``; the federation reads these files through configuration only).

Source: scikit-learn's packaged copy of WDBC (``sklearn/datasets/data/breast_cancer.csv``: 569 real records, 30
real features, the real diagnosis; it ships offline with scikit-learn). Everything below that is not in that file is
a CONSTRUCTION of ours, labelled as such in the files it writes:

* the record ids (the row's position, from 1; scikit-learn's copy has none) and the split into three clinics
  (row i goes to ``north`` if i % 3 == 0, ``south`` if 1, ``east`` if 2);
* ``texture_grade``: the real "worst texture" coarsened by fixed cut points of ours (< 20 low, < 30 mid, else high);
* missing values: the real table has none; about 3% of a few columns per clinic are blanked (chosen by a hash of
  clinic, id and column) and written with the clinic's own missing code;
* each clinic's file quirks: ``north.csv`` (cp1252, ``;``, decimal comma, German column names and words, a banner
  comment, ``-9`` for missing), ``south.tsv`` (tab-separated, no id column, ``NA`` for missing, the mean area written
  as a band such as ``500-599``, the diagnosis as 1/0, the grade as L/M/H), ``east.arff`` (ARFF with nominal
  attributes, ``%`` comments, ``?`` for missing).

Only the ten "mean" features are exported. Run ``python data/breast-cancer/prepare.py`` to rewrite the three files;
``--check`` only compares (exit 1 if a committed file is stale; a test runs it).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
from collections.abc import Callable
from pathlib import Path

import sklearn

HERE = Path(__file__).resolve().parent
SOURCE = Path(sklearn.__file__).parent / "datasets" / "data" / "breast_cancer.csv"
MEANS = ("radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity", "concave points",
         "symmetry", "fractal dimension")  # the first ten columns of the source, in its order
WORST_TEXTURE = 21  # column of "texture (worst)" in the source
BLANK_SHARE = 0.03
CONSTRUCTED = ("CONSTRUCTED from scikit-learn's copy of WDBC (real values and diagnoses; ids, the split into "
               "clinics, texture_grade, missing values and file layout are ours): see data/breast-cancer/README.md")


def _records() -> list[dict]:
    rows = list(csv.reader(SOURCE.read_text().splitlines()))[1:]  # line 1: "569,30,malignant,benign"
    out = []
    for i, row in enumerate(rows):
        worst_texture = float(row[WORST_TEXTURE])
        out.append({
            "id": i + 1, "clinic": ("north", "south", "east")[i % 3],
            **{name: row[k] for k, name in enumerate(MEANS)},  # as written in the source (no float round trip)
            "grade": "low" if worst_texture < 20 else "mid" if worst_texture < 30 else "high",
            "malignant": row[30] == "0",  # scikit-learn's target: 0 = malignant, 1 = benign
        })  # fmt: skip
    return out


def _blank(clinic: str, record: dict, column: str) -> bool:
    digest = hashlib.sha256(f"{clinic}:{record['id']}:{column}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < BLANK_SHARE


def _north(records: list[dict]) -> bytes:
    names = {"radius": "Radius (Mittel)", "texture": "Textur (Mittel)", "perimeter": "Umfang (Mittel)",
             "area": "Fläche (Mittel)", "smoothness": "Glätte (Mittel)", "compactness": "Kompaktheit (Mittel)",
             "concavity": "Konkavität (Mittel)", "concave points": "Konkave Punkte (Mittel)",
             "symmetry": "Symmetrie (Mittel)", "fractal dimension": "Fraktale Dimension (Mittel)"}  # fmt: skip
    blanks = ("concavity", "symmetry")
    out = io.StringIO()
    out.write(f"# Klinik Nord, Export 2026-11-30. {CONSTRUCTED}\n")
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(["Patienten-Nr", *names.values(), "Texturgrad", "Befund"])
    for r in records:
        cells = ["-9" if m in blanks and _blank("north", r, m) else r[m].replace(".", ",") for m in MEANS]
        grade = {"low": "niedrig", "mid": "mittel", "high": "hoch"}[r["grade"]]
        writer.writerow([r["id"], *cells, grade, "bösartig" if r["malignant"] else "gutartig"])
    return out.getvalue().encode("cp1252")


def _south(records: list[dict]) -> bytes:
    blanks = ("smoothness", "fractal dimension")
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow([m.replace(" ", "_") if m != "area" else "area_band" for m in MEANS] + ["grade", "malignant"])
    for r in records:
        cells = []
        for m in MEANS:
            if m == "area":
                low = int(float(r[m]) // 100 * 100)
                cells.append(f"{low}-{low + 99}")  # the clinic exports the mean area as a band of 100
            else:
                cells.append("NA" if m in blanks and _blank("south", r, m) else r[m])
        writer.writerow([*cells, r["grade"][0].upper(), int(r["malignant"])])
    return out.getvalue().encode("utf-8")


def _east(records: list[dict]) -> bytes:
    blanks = ("compactness", "concave points")
    lines = [f"% {CONSTRUCTED}", "% Clinic East, WDBC mean features", "@relation wdbc_east", "",
             "@attribute patient integer"]  # fmt: skip
    lines += [f"@attribute {m.replace(' ', '_')}_mean numeric" for m in MEANS]
    lines += ["@attribute texture_grade {low,mid,high}", "@attribute diagnosis {M,B}", "", "@data"]
    for r in records:
        cells = ["?" if m in blanks and _blank("east", r, m) else r[m] for m in MEANS]
        lines.append(",".join([str(r["id"]), *cells, r["grade"], "M" if r["malignant"] else "B"]))
    return ("\n".join(lines) + "\n").encode("utf-8")


WRITERS: dict[str, Callable[[list[dict]], bytes]] = {"north.csv": _north, "south.tsv": _south, "east.arff": _east}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args(argv)
    records = _records()
    stale = []
    for name, write in WRITERS.items():
        clinic = name.split(".")[0]
        data = write([r for r in records if r["clinic"] == clinic])
        path = HERE / name
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(name)
        else:
            path.write_bytes(data)
            print(f"wrote {path} ({len(data.splitlines())} lines)")
    if stale:
        print(f"stale: {', '.join(stale)}; run python {Path(__file__).relative_to(HERE.parents[1])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
