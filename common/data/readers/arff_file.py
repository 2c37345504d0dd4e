"""ARFF files (Weka's format): ``@relation``, ``@attribute`` declarations, ``@data`` records, ``%`` comments.

The declarations and each data line are parsed by liac-arff (its header and value parsers; pinned in
pyproject.toml), a line at a time, so the file is streamed like a CSV. What liac-arff's own loader does not do is
done here, naming the line and the column: a value outside its attribute's declared nominal values, a value that
is not a number for a ``numeric``/``real``/``integer`` attribute, a fraction for an ``integer`` one, and a record with
the wrong number of values. ``?`` is a missing value; sparse records (``{0 x, 3 y}``) are read too, absent values
being 0 as ARFF defines. ``date`` attributes are read as text (give the mapping's timestamp ``format``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import arff

from common.data.codes import parse_number
from common.data.readers.base import SiteFileStream
from common.data.readers.file_format import FileFormat
from common.data.readers.text import _codec, decode_error

__all__ = ["ArffStream"]

_DATE = re.compile(r"^(\s*@attribute\s+(?:\".*\"|'.*'|[^{}%,\s]*)\s+)date\b.*$", re.IGNORECASE)
_TYPES = "numeric, real, integer, string, date [format] or {value1, value2, ...}"


class ArffStream(SiteFileStream):
    """An ARFF file: names and types from its ``@attribute`` lines, then its ``@data`` records."""

    def __init__(self, fmt: FileFormat, mapping: Path | None) -> None:
        super().__init__(fmt, mapping)
        self._check_size()
        self._file = open(fmt.path, encoding=_codec(fmt.encoding), newline="")  # noqa: SIM115 - closed by close()
        self._line = 0
        self._types: list[object] = []  # per attribute: "NUMERIC" | "REAL" | "INTEGER" | "STRING" | [nominal values]
        self._declared: list[int] = []  # line of each @attribute
        self.relation = ""
        try:
            self._header()
        except UnicodeDecodeError:
            raise decode_error(self) from None

    def _lines(self) -> Iterator[tuple[str, int]]:
        """Lines that are neither blank nor ``%`` comments, with their numbers (blank and comments counted)."""
        for text in self._file:
            self._line += 1
            stripped = text.strip()
            if not stripped:
                self.blank_lines += 1
            elif stripped.startswith("%"):
                self.skipped_lines += 1
            else:
                yield stripped, self._line

    def _header(self) -> None:
        decoder, names, seen = arff.ArffDecoder(), [], set()
        for text, line in self._lines():
            keyword = text.split(maxsplit=1)[0].lower()
            try:
                if keyword == "@relation" and not names:
                    self.relation = decoder._decode_relation(text)
                elif keyword == "@attribute":
                    name, kind = decoder._decode_attribute(_DATE.sub(r"\1string", text))
                    if name in seen:
                        raise self.error(f"attribute {name!r} is declared twice", line=line,
                                         expected="a distinct name for every @attribute")  # fmt: skip
                    seen.add(name)
                    names.append(name)
                    self._types.append(kind)
                    self._declared.append(line)
                elif keyword == "@data":
                    if not names:
                        raise self.error("@data before any @attribute", line=line,
                                         expected="@relation, then one @attribute line per column, then @data")
                    self.columns, self.header_line = tuple(names), line
                    return
                else:
                    raise self.error(f"unexpected line {text[:40]!r} in the header", line=line,
                                     expected="@relation <name>, @attribute <name> <type>, @data or a % comment")
            except arff.ArffException as error:
                raise self.error(f"not a valid {keyword} declaration (liac-arff: {_reason(error)})", line=line,
                                 expected=f"@attribute <name> <type>, the type one of {_TYPES}"
                                 if keyword == "@attribute" else "@relation <name>") from None  # fmt: skip
        raise self.error("no @data line", line=self._line or 1,
                         expected="@relation, @attribute lines, then @data and the records")

    def _records(self) -> Iterator[tuple[tuple[str, ...], int]]:
        width = len(self.columns)
        try:
            for text, line in self._lines():
                try:
                    values = arff._parse_values(text)
                except (arff.ArffException, ValueError) as error:
                    raise self.error(f"not a valid ARFF data line (liac-arff: {_reason(error)})", line=line,
                                     expected=f"{width} comma-separated values, quoted with ' or \" if they hold "
                                              "spaces or commas; ? for a missing value") from None  # fmt: skip
                if isinstance(values, dict):  # sparse: {index value, ...}; absent values are 0
                    if values and not all(0 <= i < width for i in values):
                        raise self.error(f"sparse index {max(values)} is not an attribute", line=line,
                                         expected=f"indexes 0 to {width - 1}")  # fmt: skip
                    values = [values.get(i, "0") for i in range(width)]
                if len(values) != width:
                    raise self.error(f"{len(values)} values", line=line,
                                     expected=f"{width} values, one per @attribute ({', '.join(self.columns)})")
                yield tuple(self._cell(v, i, line) for i, v in enumerate(values)), line
        except UnicodeDecodeError:
            raise decode_error(self) from None

    def _cell(self, value: str | None, index: int, line: int) -> str:
        if value is None:
            return ""
        value = value.strip()
        kind, name = self._types[index], self.columns[index]
        declared = f"declared on line {self._declared[index]}"
        if isinstance(kind, list):
            if value not in kind:
                raise self.error(f"{value!r} is not a value of nominal attribute {name!r}", line=line, column=name,
                                 expected=f"one of {', '.join(map(repr, kind))} ({declared}), or ? if missing")
        elif kind in ("NUMERIC", "REAL", "INTEGER"):
            number = parse_number(value)
            if number is None:
                raise self.error(f"{value!r} is not a number", line=line, column=name,
                                 expected=f"a number ({kind.lower()} attribute {declared}), or ? if missing")
            if kind == "INTEGER" and not number.is_integer():
                raise self.error(f"{value!r} is not a whole number", line=line, column=name,
                                 expected=f"an integer (attribute {declared}), or ? if missing")
        return value

    def close(self) -> None:
        self._file.close()


def _reason(error: Exception) -> str:
    """liac-arff's own words for what is wrong, without its line number (ours is the file's line)."""
    if not isinstance(error, arff.ArffException):
        return str(error)
    text = re.sub(r",? (?:at|in) line %d\.?", ":", error.message or type(error).__name__).replace("%%", "%")
    return text.strip().rstrip(":.")
