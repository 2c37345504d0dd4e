"""Codes as a site's file writes them (``1``, ``typ. angina``, ``?``) and how a cell's text is matched to them.

Numeric codes match by value, so a mapping's code ``1`` also matches a file's ``1.0`` (UCI's Cleveland file writes
every number with a decimal point) and ``0`` matches ``0,0`` in a file with a decimal comma.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Codes", "parse_number"]


def parse_number(text: str, decimal: str = ".") -> float | None:
    """``text`` as a float (``decimal`` is the decimal separator), or None if it is not a finite number."""
    if decimal != ".":
        if "." in text:
            return None
        text = text.replace(decimal, ".")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


@dataclass(frozen=True)
class Codes:
    """Codes as written in a file -> canonical values. ``1`` also matches ``1.0``: numeric codes match by value."""

    table: Mapping[str, object]
    decimal: str = "."
    _by_number: Mapping[float, object] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numbers = {}
        for code, value in self.table.items():
            number = parse_number(code, self.decimal)
            if number is not None:
                numbers[number] = value
        object.__setattr__(self, "_by_number", numbers)

    def lookup(self, text: str) -> tuple[bool, object]:
        """``(True, value)`` if ``text`` is one of the codes, else ``(False, None)``."""
        if text in self.table:
            return True, self.table[text]
        number = parse_number(text, self.decimal) if self._by_number else None
        if number is not None and number in self._by_number:
            return True, self._by_number[number]
        return False, None

    def code_for(self, text: str) -> str:
        """The code (as written in the mapping) that ``text`` matches; ``text`` must match one."""
        if text in self.table:
            return text
        number = parse_number(text, self.decimal)
        return next(c for c in self.table if number is not None and parse_number(c, self.decimal) == number)

    def __bool__(self) -> bool:
        return bool(self.table)
