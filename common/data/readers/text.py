"""Delimited text files (CSV, TSV, any one-character delimiter), read as a stream of records.

The file is decoded and split by Python's ``csv`` module while it is read, a line at a time: memory holds one chunk
of records, never the whole text. Leading lines (``skip_lines``) and comment lines (``comment`` prefixes such as
``#``, ``%`` or ``@``) are skipped and counted; so are blank lines. A record's number is the file line it starts on.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Iterator
from pathlib import Path

from common.data.readers.base import SiteFileStream
from common.data.readers.file_format import FileFormat

__all__ = ["TextStream", "decode_error"]

_DECODE_BLOCK = 1 << 16


def _codec(encoding: str) -> str:
    """utf-8 files may start with a byte-order mark (Excel writes one): read it as such."""
    return "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding


class TextStream(SiteFileStream):
    """A delimited text file: names from the header line (or the mapping), then records."""

    def __init__(self, fmt: FileFormat, mapping: Path | None) -> None:
        super().__init__(fmt, mapping)
        self._check_size()
        self._file = open(fmt.path, encoding=_codec(fmt.encoding), newline="")  # noqa: SIM115 - closed by close()
        self._line = 0  # physical lines read so far
        self._start: int | None = None  # physical line the record being read starts on
        self._csv = csv.reader(self._lines(), delimiter=fmt.delimiter, strict=True)
        self._first: tuple[tuple[str, ...], int] | None = None
        if fmt.header:
            first = self._next()
            if first is None:
                raise self.error("the file is empty", line=1, expected="a header line, then one line per record")
            names, self.header_line = first
            self.columns = self._check_names(names, self.header_line)
        else:
            self.columns = fmt.columns or ()

    def _lines(self) -> Iterator[str]:
        prefixes = self.fmt.comment
        for text in self._file:
            self._line += 1
            if self._line <= self.fmt.skip_lines:
                self.skipped_lines += 1
                continue
            if self._start is None:  # between records: a comment line is skipped (inside a quoted field it is text)
                if prefixes and text.lstrip().startswith(prefixes):
                    self.skipped_lines += 1
                    continue
                self._start = self._line
            yield text

    def _next(self) -> tuple[tuple[str, ...], int] | None:
        """The next non-blank record and the line it starts on; None at the end of the file."""
        while True:
            self._start = None
            try:
                record = next(self._csv)
            except StopIteration:
                return None
            except csv.Error as error:
                raise self.error(f"not readable as {self.fmt.format} ({error})", line=self._start or self._line,
                                 expected=f"fields separated by {self.fmt.delimiter!r}") from None  # fmt: skip
            except UnicodeDecodeError:
                raise decode_error(self) from None
            if not record or (len(record) == 1 and not record[0].strip()):  # an empty line, not empty fields
                self.blank_lines += 1
                continue
            return tuple(cell.strip() for cell in record), self._start or self._line

    def _records(self) -> Iterator[tuple[tuple[str, ...], int]]:
        separated = f" separated by {self.fmt.delimiter!r}"
        while (found := self._next()) is not None:
            record, line = found
            self._check_width(record, line, separated)
            yield record, line

    def close(self) -> None:
        self._file.close()


def decode_error(stream: SiteFileStream) -> Exception:
    """An error naming the line of ``stream``'s first byte that is not text in its encoding (found by reading the
    file again, in binary, block by block: the text reader decodes ahead of the record it parses)."""
    decoder = codecs.getincrementaldecoder(_codec(stream.fmt.encoding))()
    line = 1
    with open(stream.path, "rb") as raw:
        while block := raw.read(_DECODE_BLOCK):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                # the decoder may hold back the bytes of a character split across blocks: find the bad one
                start = max(0, error.start - len(error.object) + len(block))
                line += block[:start].count(b"\n")
                byte = block[start : start + 1].hex() or error.object[error.start : error.start + 1].hex()
                return stream.error(
                    f"byte 0x{byte} is not valid {stream.fmt.encoding} text", line=line,
                    expected=f"text in the encoding the mapping names ([file] encoding = '{stream.fmt.encoding}'); "
                             "if the site exports another encoding (e.g. 'cp1250', 'latin-1'), name that one",
                )  # fmt: skip
            line += block.count(b"\n")
    return stream.error(f"not valid {stream.fmt.encoding} text", expected=f"text in {stream.fmt.encoding}")

