"""The breast-cancer example (data/breast-cancer: real WDBC values, CONSTRUCTED layouts) copied for a test, its clinic
"north" optionally with one real record copied 50 times under new ids (CONSTRUCTED): copies that must not pass for
50 people."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["COPY_IDS", "EXAMPLE", "copy_example"]

EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "breast-cancer"
#: the new ids of the copies of north's first record
COPY_IDS = [str(90000 + i) for i in range(1, 51)]


def copy_example(data: Path, *, copies: bool) -> Path:
    """The example's folder copied to ``data`` (which must not exist); with ``copies``, north.csv ends with a copy of
    its first record under each of ``COPY_IDS``. Returns ``data``."""
    shutil.copytree(EXAMPLE, data)
    if copies:
        csv = data / "north.csv"
        lines = csv.read_text(encoding="cp1252").splitlines()
        first = next(i for i, line in enumerate(lines) if line[:1].isdigit())
        rest = lines[first].split(";", 1)[1]
        csv.write_text("\n".join([*lines, *(f"{i};{rest}" for i in COPY_IDS)]) + "\n", encoding="cp1252")
    return data
