"""The ``[file]`` table of a site mapping: how the site's file is written (format, layout, limits), validated.

Each format reads some keys of its own (a delimiter means nothing to Parquet); a key a format does not read is refused,
naming the format and the keys it does read. Formats and their keys are registered in
:mod:`common.data.readers` (``READERS``).
"""

from __future__ import annotations

import codecs
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, Protocol

__all__ = ["COMMON_KEYS", "DEFAULT_MAX_BYTES", "FileFormat", "file_format_from_dict"]

#: a site file larger than this is refused before it is read, unless the mapping raises ``[file] max_bytes``
DEFAULT_MAX_BYTES = 256 * 1024**2

#: ``[file]`` keys every format reads
COMMON_KEYS = frozenset({"path", "format", "missing", "ignore", "max_bytes"})


@dataclass(frozen=True)
class FileFormat:
    """How a site's file is written."""

    path: Path  # absolute
    format: str = "csv"  # a key of common.data.readers.READERS: csv | tsv | excel | parquet | arff
    delimiter: str = ","  # csv (tsv: a tab)
    header: bool = True  # csv / excel: the first line (row) holds the column names
    columns: tuple[str, ...] | None = None  # csv / excel: the column names when there is no header line
    encoding: str = "utf-8"  # csv / tsv / arff
    decimal: str = "."  # csv / tsv: decimal separator of numbers ("," in many European exports)
    missing: tuple[str, ...] = ()  # codes meaning "not recorded" in every column (a blank cell always does)
    ignore: tuple[str, ...] = ()  # columns deliberately not mapped
    comment: tuple[str, ...] = ()  # csv / tsv: lines starting with one of these are skipped ("#", "%", "@")
    skip_lines: int = 0  # csv / tsv: leading lines skipped before the header (a title, an export banner)
    sheet: str | None = None  # excel: the worksheet (default: the first)
    max_bytes: int = DEFAULT_MAX_BYTES  # larger files are refused before they are parsed


class _Check(Protocol):
    def fail(self, key: str, problem: str, expected: str | None = None) -> NoReturn: ...

    def table(self, raw: Any, key: str, allowed: set[str]) -> Mapping[str, Any]: ...

    def strings(self, raw: Any, key: str) -> tuple[str, ...]: ...


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def file_format_from_dict(raw: Any, *, base: Path, check: _Check, data_file: Path | None,
                          formats: Mapping[str, frozenset[str]]) -> FileFormat:  # fmt: skip
    """Validate a mapping's ``[file]`` table.

    Parameters
    ----------
    raw
        The parsed table.
    base
        The mapping file's folder (relative paths are relative to it).
    check
        Raises a DataContractError naming the mapping file and the key.
    data_file
        Read this file instead of ``path``.
    formats
        Format name -> the ``[file]`` keys it reads besides :data:`COMMON_KEYS`.
    """
    every = set(COMMON_KEYS).union(*formats.values())
    raw = check.table(raw, "file", every)
    name = raw.get("format", "csv")
    if name not in formats:
        check.fail("[file] format", f"{name!r} is not a format fedfusion reads", "one of " + ", ".join(map(repr, formats)))
    allowed = COMMON_KEYS | formats[name]
    foreign = sorted(set(raw) - allowed)
    if foreign:
        check.fail(f"[file] {foreign[0]}", f"does not apply to format '{name}'",
                   f"only keys {sorted(allowed)} with format '{name}'")  # fmt: skip
    if "path" not in raw and data_file is None:
        check.fail("[file] path", "missing", "the data file's path, relative to the mapping file")
    path = Path(data_file) if data_file is not None else base / str(raw["path"])
    tab = name == "tsv"
    delimiter, decimal = raw.get("delimiter", "\t" if tab else ","), raw.get("decimal", ".")
    if not (isinstance(delimiter, str) and len(delimiter) == 1 and delimiter not in "\r\n\"'"):
        check.fail("[file] delimiter", f"{delimiter!r} is not a delimiter", "one character, e.g. ',' or ';' or '\\t'")
    if decimal not in (".", ",") or decimal == delimiter:
        check.fail("[file] decimal", f"{decimal!r} cannot be the decimal separator", "'.' or ',' (not the delimiter)")
    encoding = raw.get("encoding", "utf-8")
    try:
        codecs.lookup(str(encoding))
    except LookupError:
        check.fail("[file] encoding", f"unknown encoding {encoding!r}", "a Python codec name, e.g. 'utf-8', 'cp1250'")
    header = raw.get("header", True)
    if not isinstance(header, bool):
        check.fail("[file] header", f"is {header!r}", "true or false")
    columns = check.strings(raw["columns"], "[file] columns") if "columns" in raw else None
    if "header" in formats[name] and header == (columns is not None):
        check.fail("[file] columns", "given with header = true" if header else "missing while header = false",
                   "header = true (names from the file's first line), or header = false and a columns list")
    if columns is not None and len(set(columns)) != len(columns):
        check.fail("[file] columns", f"names repeat in {list(columns)}", "distinct column names")
    comment = raw.get("comment", [])
    comment = [comment] if isinstance(comment, str) else comment
    comment = check.strings(comment, "[file] comment")
    if any(not c.strip() for c in comment):
        check.fail("[file] comment", f"{list(comment)} holds an empty prefix", "line prefixes such as '#', '%' or '@'")
    skip = raw.get("skip_lines", 0)
    if not (_whole(skip) and skip >= 0):
        check.fail("[file] skip_lines", f"is {skip!r}", "a whole number of lines >= 0")
    sheet = raw.get("sheet")
    if sheet is not None and not (isinstance(sheet, str) and sheet):
        check.fail("[file] sheet", f"is {sheet!r}", "the worksheet's name, e.g. 'Sheet1'")
    limit = raw.get("max_bytes", DEFAULT_MAX_BYTES)
    if not (_whole(limit) and limit > 0):
        check.fail("[file] max_bytes", f"is {limit!r}", "a whole number of bytes > 0, e.g. 500_000_000")
    return FileFormat(path=path, format=name, delimiter=delimiter, header=header, columns=columns,
                      encoding=str(encoding), decimal=decimal, missing=check.strings(raw.get("missing", []),
                      "[file] missing"), ignore=check.strings(raw.get("ignore", []), "[file] ignore"),
                      comment=comment, skip_lines=skip, sheet=sheet, max_bytes=limit)  # fmt: skip
