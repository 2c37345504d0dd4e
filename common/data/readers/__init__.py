"""Readers of a site's own file, chosen by the mapping's ``[file] format``: the registry and its entry point.

| format    | reads                                                     | ``[file]`` keys of its own                   |
|-----------|-----------------------------------------------------------|-----------------------------------------------|
| ``csv``   | delimited text, any one-character delimiter               | delimiter, header, columns, encoding, decimal, comment, skip_lines |
| ``tsv``   | tab-separated text                                        | header, columns, encoding, decimal, comment, skip_lines |
| ``excel`` | one worksheet of an ``.xlsx`` workbook (openpyxl)          | header, columns, sheet                       |
| ``parquet`` | a Parquet file (pyarrow)                                | (none)                                        |
| ``arff``  | Weka's ARFF (liac-arff): nominal values checked            | encoding                                      |

Every format also reads ``path``, ``format``, ``missing``, ``ignore`` and ``max_bytes``. Each reader streams its
file in chunks of raw text cells (:class:`~common.data.readers.base.RawChunk`); :mod:`common.data.cleaning`
interprets them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.data.readers.arff_file import ArffStream
from common.data.readers.base import CHUNK_ROWS, RawChunk, SiteFileStream, human_bytes
from common.data.readers.file_format import DEFAULT_MAX_BYTES, FileFormat, file_format_from_dict
from common.data.readers.tables import ExcelStream, ParquetStream
from common.data.readers.text import TextStream

__all__ = ["CHUNK_ROWS", "DEFAULT_MAX_BYTES", "FORMAT_KEYS", "READERS", "FileFormat", "RawChunk", "Reader",
           "SiteFileStream", "count_records", "file_format_from_dict", "human_bytes", "open_site_file"]  # fmt: skip

_TEXT = frozenset({"header", "columns", "encoding", "decimal", "comment", "skip_lines"})


@dataclass(frozen=True)
class Reader:
    """One file format a mapping may name."""

    name: str  # the value of [file] format
    keys: frozenset[str]  # [file] keys it reads besides path, format, missing, ignore, max_bytes
    open: Callable[[FileFormat, Path | None], SiteFileStream]  # (format, mapping file) -> an open stream
    description: str


READERS: dict[str, Reader] = {r.name: r for r in (
    Reader("csv", _TEXT | {"delimiter"}, TextStream, "delimited text (any one-character delimiter)"),
    Reader("tsv", _TEXT, TextStream, "tab-separated text"),
    Reader("excel", frozenset({"header", "columns", "sheet"}), ExcelStream, "a worksheet of an .xlsx workbook"),
    Reader("parquet", frozenset(), ParquetStream, "a Parquet file"),
    Reader("arff", frozenset({"encoding"}), ArffStream, "Weka's ARFF (@relation, @attribute, @data)"),
)}  # fmt: skip

#: format name -> its own [file] keys (what the mapping's validation needs)
FORMAT_KEYS = {name: reader.keys for name, reader in READERS.items()}


def open_site_file(fmt: FileFormat, *, mapping: Path | None = None) -> SiteFileStream:
    """Open the site's file as ``fmt`` describes: names now, records by :meth:`SiteFileStream.chunks`.

    Raises
    ------
    DataContractError
        Naming the file (and line), if it is missing, over ``max_bytes``, or not readable as its format.
    """
    return READERS[fmt.format].open(fmt, mapping)


def count_records(fmt: FileFormat, *, mapping: Path | None = None) -> int:
    """How many data records the file holds: a first pass that keeps nothing, so that the cleaned table's columns are
    allocated once, at their final size. Raises what :func:`open_site_file` and reading raise."""
    with open_site_file(fmt, mapping=mapping) as stream:
        return stream.count()
