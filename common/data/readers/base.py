"""What every reader of a site's file shares: the stream of raw records in chunks, the size limit, the errors.

A reader interprets no value (that is :mod:`common.data.cleaning`): it yields each data record as stripped strings
(a blank string is an empty cell) with its line (text files) or row (spreadsheets, Parquet) number, in chunks of at
most :data:`CHUNK_ROWS` records, so that a file is never held whole in memory as Python strings. It refuses, naming
the file and line, what is wrong with the file's *shape*: a missing or oversized file, bytes that are not text in the
declared encoding, a bad header, a record with the wrong number of fields.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from common.data.readers.file_format import FileFormat
from common.data.schema import DataContractError, not_found

__all__ = ["CHUNK_ROWS", "RawChunk", "SiteFileStream", "human_bytes"]

#: records per chunk: large enough to amortise per-chunk work, small enough that a chunk's strings stay small
CHUNK_ROWS = 1024


@dataclass
class RawChunk:
    """Consecutive data records of a site's file."""

    rows: list[tuple[str, ...]] = field(default_factory=list)  # one tuple of stripped cells per record
    lines: list[int] = field(default_factory=list)  # 1-based line (or row) number of each record


def human_bytes(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size, unit = float(n), "bytes"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} bytes" if unit == "bytes" else f"{size:.1f} {unit}"


class SiteFileStream:
    """An open site file: its column names, then its records chunk by chunk (use as a context manager).

    Subclasses open the file in ``__init__`` (after :meth:`_check_size`), set :attr:`columns` and
    :attr:`header_line`, and implement :meth:`_records` and :meth:`close`.
    """

    line_word = "line"  # what record numbers count: "line" (text files) or "row" (spreadsheets, Parquet)

    def __init__(self, fmt: FileFormat, mapping: Path | None) -> None:
        self.fmt, self.path, self.mapping = fmt, fmt.path, mapping
        self.columns: tuple[str, ...] = ()
        self.header_line: int | None = None  # where the names came from (None: from the mapping or the schema)
        self.blank_lines = 0  # empty lines (rows) skipped
        self.skipped_lines = 0  # comment and leading lines skipped
        self.records = 0  # data records yielded so far

    # ------------------------------------------------------------------ errors
    def error(self, problem: str, *, line: int | None = None, column: str | None = None,
              expected: str | None = None) -> DataContractError:  # fmt: skip
        """A DataContractError naming this file (and line or row, and column) and the mapping."""
        return DataContractError(problem, file=self.path, line=line, column=column, expected=expected,
                                 mapping=self.mapping, line_word=self.line_word)  # fmt: skip

    def _check_size(self, *, uncompressed: int | None = None) -> None:
        """Refuse a missing file, or one over ``max_bytes`` (on disk, or ``uncompressed``), before parsing it."""
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            raise self.error(not_found(self.path),
                             expected="the site's export at [file] path") from None  # fmt: skip
        except OSError as error:
            raise self.error(f"cannot be read ({error.strerror})") from None
        limit = self.fmt.max_bytes
        for what, n in (("the file is", size), ("uncompressed, its data are", uncompressed)):
            if n is not None and n > limit:
                raise self.error(f"{what} {human_bytes(n)}, over the site's limit of {human_bytes(limit)} "
                                 f"([file] max_bytes = {limit}); nothing was parsed",
                                 expected=f"a file of at most {limit} bytes, or a larger [file] max_bytes in the "
                                          "mapping if the machine has the memory (about 3x the file size)")

    def _check_names(self, names: tuple[str, ...], line: int | None, where: str = "header") -> tuple[str, ...]:
        unnamed = [i + 1 for i, name in enumerate(names) if not name]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if unnamed or repeated:
            problem = f"field(s) {unnamed} have no name" if unnamed else f"column name(s) {repeated} repeat"
            raise self.error(f"{where}: {problem}", line=line, expected="a distinct name for every column")
        return names

    def _check_width(self, record: tuple[str, ...], line: int, separated: str = "") -> None:
        if len(record) != len(self.columns):
            shown = ", ".join(self.columns)
            raise self.error(f"{len(record)} fields", line=line,
                             expected=f"{len(self.columns)} fields{separated} ({shown})")  # fmt: skip

    # ------------------------------------------------------------------ records
    def _records(self) -> Iterator[tuple[tuple[str, ...], int]]:
        """(record, line) pairs in file order; blank and comment lines already skipped and counted."""
        raise NotImplementedError

    def chunks(self) -> Iterator[RawChunk]:
        """The data records, :data:`CHUNK_ROWS` at a time.

        Raises
        ------
        DataContractError
            After the last record, if the file held none.
        """
        chunk = RawChunk()
        for record, line in self._records():
            chunk.rows.append(record)
            chunk.lines.append(line)
            if len(chunk.rows) >= CHUNK_ROWS:
                self.records += len(chunk.rows)
                yield chunk
                chunk = RawChunk()
        if chunk.rows:
            self.records += len(chunk.rows)
            yield chunk
        if not self.records:
            unit = self.line_word
            if self.header_line is not None:
                raise self.error("the file has a header but no data rows", line=self.header_line + 1,
                                 expected=f"one {unit} per record after the header")
            raise self.error("the file is empty", line=1, expected=f"one {unit} per record")

    def count(self) -> int:
        """The number of data records, by reading them all (a stream is read once: count on a stream of its own)."""
        return sum(1 for _ in self._records())

    def close(self) -> None:
        """Release the file."""

    def __enter__(self) -> SiteFileStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:  # fmt: skip
        self.close()
