"""Registry of unit conversions used by site mappings (a site's unit -> the federation schema's unit).

Every conversion is linear, ``to = from * factor + offset``, and registered once; its inverse is derived. Some
conversions depend on what is measured (mmol/L -> mg/dL is x38.67 for cholesterol but x18.016 for glucose): those are
registered for a *quantity* and found only for a feature that declares that quantity in the schema.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KNOWN_UNITS", "Conversion", "UnitError", "conversion", "register"]

#: unit names a schema or mapping may use ("1" = dimensionless count or score)
KNOWN_UNITS = ("years", "months", "mg/dL", "mmol/L", "mm Hg", "kPa", "1/min", "mm", "kg", "lb", "cm", "in",
               "degC", "degF", "DM", "EUR", "1")  # fmt: skip


class UnitError(ValueError):
    """No conversion is registered between two units (the message lists what is known)."""


@dataclass(frozen=True)
class Conversion:
    """``to = from * factor + offset``."""

    source: str  # unit converted from
    target: str  # unit converted to
    factor: float
    offset: float = 0.0

    def apply(self, value: float) -> float:
        """Convert one value from ``source`` to ``target``."""
        return value * self.factor + self.offset

    def inverse(self) -> Conversion:
        """The conversion back from ``target`` to ``source``."""
        return Conversion(self.target, self.source, 1.0 / self.factor, -self.offset / self.factor)

    def describe(self) -> str:
        """E.g. ``"mmol/L -> mg/dL: x38.67"`` (for reports)."""
        text = f"{self.source} -> {self.target}: x{self.factor:.10g}"
        return text + (f" {'+' if self.offset >= 0 else '-'} {abs(self.offset):.10g}" if self.offset else "")


# (quantity or None, source unit, target unit) -> conversion; None = holds for any quantity
_REGISTRY: dict[tuple[str | None, str, str], Conversion] = {}


def register(source: str, target: str, factor: float, *, offset: float = 0.0, quantity: str | None = None) -> None:
    """Register ``target = source * factor + offset`` (and its inverse), optionally for one quantity only."""
    for unit in (source, target):
        if unit not in KNOWN_UNITS:
            raise UnitError(f"unknown unit {unit!r}; known units: {', '.join(KNOWN_UNITS)}")
    if not factor:
        raise UnitError(f"conversion {source} -> {target}: factor must not be 0")
    forward = Conversion(source, target, float(factor), float(offset))
    _REGISTRY[(quantity, source, target)] = forward
    _REGISTRY[(quantity, target, source)] = forward.inverse()


# Serum cholesterol: 1 mmol/L = 38.67 mg/dL (molar mass of cholesterol 386.65 g/mol).
register("mmol/L", "mg/dL", 38.67, quantity="cholesterol")
# Plasma glucose: 1 mmol/L = 18.016 mg/dL (molar mass of glucose 180.16 g/mol).
register("mmol/L", "mg/dL", 18.016, quantity="glucose")
register("kPa", "mm Hg", 7.50062)  # 1 kPa = 7.50062 mm Hg
register("months", "years", 1 / 12)
register("lb", "kg", 0.45359237)  # exact by definition
register("in", "cm", 2.54)  # exact by definition
register("degF", "degC", 5 / 9, offset=-160 / 9)  # C = (F - 32) * 5/9
# Deutsche Mark: 1 EUR = 1.95583 DM, the irrevocably fixed rate (Council Regulation (EC) No 2866/98).
register("EUR", "DM", 1.95583)


def conversion(source: str, target: str, *, quantity: str | None = None) -> Conversion | None:
    """The conversion from ``source`` to ``target`` for ``quantity``; None when the units are the same.

    Raises
    ------
    UnitError
        If either unit is unknown or no conversion between them is registered (for this quantity).
    """
    for unit in (source, target):
        if unit not in KNOWN_UNITS:
            raise UnitError(f"unknown unit {unit!r}; known units: {', '.join(KNOWN_UNITS)}")
    if source == target:
        return None
    found = _REGISTRY.get((quantity, source, target)) or _REGISTRY.get((None, source, target))
    if found is None:
        reachable = sorted({s for (q, s, t) in _REGISTRY if t == target and q in (None, quantity)})
        of = f" for {quantity}" if quantity else ""
        raise UnitError(f"no conversion from {source!r} to {target!r}{of}; units convertible to {target!r}{of}: "
                        f"{', '.join([target, *reachable])}")  # fmt: skip
    return found
