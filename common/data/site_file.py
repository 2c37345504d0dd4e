"""Reading a site's delimited text file as its mapping describes it: raw cells, each with its line number.

No value is interpreted here (that is :mod:`common.data.cleaning`); this module only decodes the bytes, splits the
records, takes the header, and refuses files whose shape is wrong, naming the file and line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from common.data.mapping import FileFormat
from common.data.schema import DataContractError

__all__ = ["RawTable", "read_site_file"]


@dataclass(frozen=True)
class RawTable:
    """A site file's data records as stripped strings."""

    path: Path
    columns: tuple[str, ...]  # column names (from the header or the mapping)
    rows: tuple[tuple[str, ...], ...]  # one tuple of cells per data record, in file order
    lines: tuple[int, ...]  # 1-based line number of each record in the file
    blank_lines: int  # empty lines skipped


def _decode(data: bytes, fmt: FileFormat, mapping: Path | None) -> str:
    encoding = "utf-8-sig" if fmt.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else fmt.encoding
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        byte = data[error.start : error.start + 1].hex()
        raise DataContractError(
            f"byte 0x{byte} is not valid {fmt.encoding} text", file=fmt.path, line=line, mapping=mapping,
            expected=f"text in the encoding the mapping names ([file] encoding = '{fmt.encoding}'); if the site "
                     "exports another encoding (e.g. 'cp1250', 'latin-1'), name that one",
        ) from None  # fmt: skip


def read_site_file(fmt: FileFormat, *, mapping: Path | None = None) -> RawTable:
    """Read the records of the file ``fmt`` describes.

    Parameters
    ----------
    fmt
        The mapping's ``[file]`` settings.
    mapping
        The mapping file, named in error messages.

    Returns
    -------
    RawTable
        Cells stripped of surrounding spaces; blank lines are skipped and counted.

    Raises
    ------
    DataContractError
        If the file is missing, not text in its encoding, empty, has no data rows, a bad header, or a record with
        the wrong number of fields (naming the file and line).
    """
    try:
        data = fmt.path.read_bytes()
    except FileNotFoundError:
        raise DataContractError("file not found", file=fmt.path, mapping=mapping,
                                expected="the site's export at [file] path") from None  # fmt: skip
    except OSError as error:
        raise DataContractError(f"cannot be read ({error.strerror})", file=fmt.path, mapping=mapping) from None
    text = _decode(data, fmt, mapping)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=fmt.delimiter, strict=True)
    records: list[tuple[str, ...]] = []
    lines: list[int] = []
    blank = 0
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):  # an empty line, not empty fields
                blank += 1
                continue
            records.append(tuple(cell.strip() for cell in record))
            lines.append(reader.line_num)
    except csv.Error as error:
        raise DataContractError(
            f"not readable as {fmt.format} ({error})", file=fmt.path, line=reader.line_num, mapping=mapping,
            expected=f"fields separated by {fmt.delimiter!r}",
        ) from None
    if not records:
        what = "a header line, then one line per record" if fmt.header else "one line per record"
        raise DataContractError("the file is empty", file=fmt.path, line=1, mapping=mapping, expected=what)
    if fmt.header:
        columns, records, header_line = records[0], records[1:], lines[0]
        lines = lines[1:]
        unnamed = [i + 1 for i, name in enumerate(columns) if not name]
        repeated = sorted({n for n in columns if columns.count(n) > 1})
        if unnamed or repeated:
            problem = f"field(s) {unnamed} have no name" if unnamed else f"column name(s) {repeated} repeat"
            raise DataContractError(f"header: {problem}", file=fmt.path, line=header_line, mapping=mapping,
                                    expected="a distinct name for every column")  # fmt: skip
        if not records:
            raise DataContractError("the file has a header but no data rows", file=fmt.path, line=header_line + 1,
                                    mapping=mapping, expected="one line per record after the header")  # fmt: skip
    else:
        columns = fmt.columns or ()
    for record, line in zip(records, lines, strict=True):
        if len(record) != len(columns):
            shown = ", ".join(columns)
            raise DataContractError(
                f"{len(record)} fields", file=fmt.path, line=line, mapping=mapping,
                expected=f"{len(columns)} fields separated by {fmt.delimiter!r} ({shown})",
            )  # fmt: skip
    return RawTable(path=fmt.path, columns=tuple(columns), rows=tuple(records), lines=tuple(lines), blank_lines=blank)
