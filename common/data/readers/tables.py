"""Typed tables: Excel workbooks (openpyxl, read-only streaming) and Parquet files (pyarrow, in record batches).

Their cells come typed; each is written back as the text cleaning reads (``1.5``, ``true``, ISO timestamps, a blank
for an empty cell), so that one set of mapping rules (codes, missing codes, units) serves every format. Numbers keep
every digit (``repr`` of a float reads back to the same float). Records are numbered by their row: the sheet's row
number in a workbook, the record's position (from 1) in a Parquet file.

Both formats are compressed on disk, so besides the file's size the size of its uncompressed data is checked
against ``[file] max_bytes`` before any cell is read.
"""

from __future__ import annotations

import datetime as dt
import zipfile
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

from common.data.readers.base import CHUNK_ROWS, SiteFileStream
from common.data.readers.file_format import FileFormat

__all__ = ["ExcelStream", "ParquetStream", "cell_text"]


def cell_text(value: Any) -> str:
    """A typed cell as the text cleaning reads; None (and NaN) -> "" (missing)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if value != value else repr(value)
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value).strip()


class ExcelStream(SiteFileStream):
    """A worksheet of an ``.xlsx`` workbook, read row by row (openpyxl's read-only mode)."""

    line_word = "row"

    def __init__(self, fmt: FileFormat, mapping: Path | None) -> None:
        super().__init__(fmt, mapping)
        self._check_size(uncompressed=self._uncompressed())
        import openpyxl

        try:
            self._book = openpyxl.load_workbook(fmt.path, read_only=True, data_only=True)
        except Exception as error:  # noqa: BLE001 - openpyxl raises zip, XML and key errors on a broken file
            raise self.error(f"not readable as an Excel workbook ({type(error).__name__}: {error})",
                             expected="an .xlsx workbook (Excel 2010 or later)") from None  # fmt: skip
        names = self._book.sheetnames
        if fmt.sheet is not None and fmt.sheet not in names:
            self._book.close()
            raise self.error(f"has no worksheet {fmt.sheet!r}", expected=f"[file] sheet = one of {names}")
        sheet = self._book[fmt.sheet] if fmt.sheet is not None else self._book.worksheets[0]
        self._rows = enumerate(sheet.iter_rows(min_row=1, values_only=True), start=1)
        if fmt.header:
            for number, row in self._rows:
                if any(cell_text(v) for v in row):
                    names_row = tuple(cell_text(v) for v in row)
                    while names_row and not names_row[-1]:  # trailing empty cells are not columns
                        names_row = names_row[:-1]
                    self.columns, self.header_line = self._check_names(names_row, number), number
                    break
                self.blank_lines += 1
            else:
                raise self.error("the worksheet is empty", line=1, expected="a header row, then one row per record")
        else:
            self.columns = fmt.columns or ()

    def _uncompressed(self) -> int | None:
        try:
            with zipfile.ZipFile(self.path) as archive:
                return sum(info.file_size for info in archive.infolist())
        except (zipfile.BadZipFile, OSError):
            return None  # missing or not a zip: _check_size or openpyxl says so

    def _records(self) -> Iterator[tuple[tuple[str, ...], int]]:
        width = len(self.columns)
        for number, row in self._rows:
            cells = tuple(cell_text(v) for v in row)
            if not any(cells):
                self.blank_lines += 1
                continue
            if len(cells) > width and not any(cells[width:]):
                cells = cells[:width]
            elif len(cells) < width:
                cells = cells + ("",) * (width - len(cells))
            self._check_width(cells, number)
            yield cells, number

    def close(self) -> None:
        book = getattr(self, "_book", None)
        if book is not None:
            book.close()


class ParquetStream(SiteFileStream):
    """A Parquet file, read in record batches (pyarrow)."""

    line_word = "row"

    def __init__(self, fmt: FileFormat, mapping: Path | None) -> None:
        super().__init__(fmt, mapping)
        import pyarrow.parquet as pq

        self._check_size()
        try:
            self._file = pq.ParquetFile(fmt.path)
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError ... on a broken file
            raise self.error(f"not readable as Parquet ({error})", expected="a Parquet file") from None
        meta = self._file.metadata
        self._check_size(uncompressed=sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)))
        schema = self._file.schema_arrow
        self.columns = self._check_names(tuple(schema.names), None, "schema")
        for field in schema:
            if not _supported(field.type):
                raise self.error(f"has Arrow type {field.type}", column=field.name,
                                 expected="numbers, text, booleans, dates or timestamps (one value per cell)")

    def _records(self) -> Iterator[tuple[tuple[str, ...], int]]:
        number = 0
        for batch in self._file.iter_batches(batch_size=CHUNK_ROWS):
            columns = [[cell_text(v) for v in column.to_pylist()] for column in batch.columns]
            for record in zip(*columns, strict=True):  # a row of nulls is a record with every value missing
                number += 1
                yield record, number

    def count(self) -> int:
        """The number of records, from the file's metadata."""
        return int(self._file.metadata.num_rows)

    def close(self) -> None:
        file = getattr(self, "_file", None)
        if file is not None:
            file.close()


def _supported(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return _supported(kind.value_type)
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_string,
              pa.types.is_large_string, pa.types.is_timestamp, pa.types.is_date, pa.types.is_decimal, pa.types.is_null)
    return any(check(kind) for check in checks)
