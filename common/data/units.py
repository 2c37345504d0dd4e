"""Units of measurement, by pint: any unit a schema or mapping declares, and the conversion between two of them.

A schema declares the federation's unit of a numeric feature (``unit = "mg/dL"``); a site's mapping declares the
unit its file writes (``unit = "mmol/L"``). Both are parsed by pint's default registry, so any unit pint knows is
accepted (``kg/m2``, ``mu U/ml``, ``mm Hg``, ``1/min``, ``degF``, ``lb``, ``months`` ...), and the conversion is pint's.
What pint does not know is added below and documented: the clinical spellings pint reads otherwise (``mu`` as
micro, ``mm Hg``, exponents written as digits) and the two currencies of the German Credit data (DM, EUR).

A conversion between an amount of substance and a mass (mmol/L <-> mg/dL) depends on what is measured: it needs the
molar mass, which the schema declares on the feature (``molar_mass = "386.65 g/mol"`` for cholesterol), and pint
converts through its ``chemistry`` context. Every conversion between two units is affine, ``to = from * factor +
offset`` (offset only for temperatures); :class:`Conversion` holds the two numbers pint gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["EXAMPLE_UNITS", "Conversion", "UnitError", "conversion", "molar_mass", "parse_unit"]

#: units shown in error messages as examples of what a schema or mapping may write (any unit pint knows is allowed)
EXAMPLE_UNITS = ("mg/dL", "mmol/L", "mm Hg", "kPa", "kg/m2", "mu U/ml", "1/min", "years", "months", "degC", "lb", "1")

# Definitions pint lacks, in pint's own syntax. DM: the Deutsche Mark was irrevocably fixed at 1 EUR = 1.95583 DM
# (Council Regulation (EC) No 2866/98). IU: international units of biological activity (insulin, vitamins) are
# defined per substance, so they convert to nothing but themselves (pint's "U" is the enzyme unit, umol/min).
_DEFINITIONS = (
    "euro = [currency] = EUR",
    "deutsche_mark = euro / 1.95583 = DM",
    "international_unit = [biological_activity] = IU",
    "beats_per_minute = 1 / minute = bpm",
)

# Clinical spellings -> pint's. Applied to every unit string before pint parses it (pint's own preprocessors).
_SPELLINGS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bmu\s*(?=[A-Za-z])"), "µ"),  # "mu U/ml" = micro-units per ml (pint reads "mu" as milli-u!)
    (re.compile(r"\bmc(?=g\b)"), "µ"),  # "mcg" = microgram
    (re.compile(r"\b(m|cm|mm|in|inch|ft)\s+(Hg|H2O)\b"), r"\1\2"),  # "mm Hg" -> "mmHg" (pint reads "Hg" alone as
    # mercury's density)
    (re.compile(r"(?<![\dA-Za-z_])([A-Za-zµ]+)(\d)(?![\dA-Za-z_.])"), r"\1**\2"),  # "kg/m2" -> "kg/m**2"
)


def _spell(text: str) -> str:
    for pattern, replacement in _SPELLINGS:
        text = pattern.sub(replacement, text)
    return text.replace("H**2O", "H2O")


class UnitError(ValueError):
    """A unit pint cannot read, or two units with no conversion between them (the message says what is expected)."""


@lru_cache(maxsize=1)
def _registry() -> Any:
    import pint  # here: importing pint also imports scipy (~1 s), which a site's message-process may not need

    registry = pint.UnitRegistry(preprocessors=[_spell], cache_folder=None)
    for line in _DEFINITIONS:
        registry.define(line)
    return registry


def parse_unit(text: str) -> Any:
    """``text`` as a pint unit; ``"1"`` is dimensionless.

    Raises
    ------
    UnitError
        If pint cannot read it; the message gives examples of units it reads.
    """
    if not isinstance(text, str) or not text.strip():
        raise UnitError(f"unit {text!r} is not a unit; expected a unit pint reads, e.g. {_examples()}")
    return _parse(text)


@lru_cache(maxsize=256)
def _parse(text: str) -> Any:
    try:
        return _registry().parse_units(text.strip())
    except Exception as error:  # noqa: BLE001 - pint's parser raises many types (even ZeroDivisionError) on nonsense
        why = f" ({error})" if type(error).__name__ == "UndefinedUnitError" else ""
        raise UnitError(f"unknown unit {text!r}{why}; expected a unit pint reads, e.g. {_examples()}") from None


def molar_mass(text: str) -> Any:
    """A declared molar mass such as ``"386.65 g/mol"`` as a pint quantity (mass per amount of substance)."""
    registry = _registry()
    try:
        value = registry.Quantity(_spell(str(text)))
    except Exception:  # noqa: BLE001 - pint raises many types on nonsense
        value = None
    if value is None or not value.check("[mass] / [substance]") or not value.magnitude > 0:
        raise UnitError(f"molar mass {text!r} is not a mass per amount of substance; expected e.g. '386.65 g/mol'")
    return value


def _examples() -> str:
    return ", ".join(repr(u) for u in EXAMPLE_UNITS)


def _dimension(unit: Any) -> str:
    return str(unit.dimensionality) if unit.dimensionality else "a pure number"


# units offered as examples of "the same kind" in error messages, before pint's own (less familiar) list
_COMMON = ("mg/dL", "g/L", "mmol/L", "umol/L", "mm Hg", "kPa", "kg", "g", "lb", "cm", "mm", "in", "m", "years",
           "months", "days", "1/min", "degC", "degF", "kg/m2", "mU/L", "IU/L", "EUR", "DM", "1", "%")  # fmt: skip


def _compatible(unit: Any, limit: int = 6) -> str:
    names = [n for n in _COMMON if parse_unit(n).dimensionality == unit.dimensionality]
    if not names:
        names = sorted({f"{u:~}" for u in _registry().get_compatible_units(unit)}, key=lambda n: (len(n), n))
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")


_SPAN = 1024.0  # the factor is measured over [0, 1024]: a power of two, and wide enough that pint's rounding in
# affine (temperature) conversions does not swamp it


@dataclass(frozen=True)
class Conversion:
    """``to = from * factor + offset`` (what pint computes for the two units)."""

    source: str  # unit converted from, as the mapping writes it
    target: str  # unit converted to, as the schema writes it
    factor: float
    offset: float = 0.0
    via: str = ""  # what the conversion depends on, e.g. "molar mass 386.65 g/mol"

    def apply(self, value: float) -> float:
        """Convert one value from ``source`` to ``target``."""
        return value * self.factor + self.offset

    def inverse(self) -> Conversion:
        """The conversion back from ``target`` to ``source``."""
        return Conversion(self.target, self.source, 1.0 / self.factor, -self.offset / self.factor, self.via)

    def describe(self) -> str:
        """E.g. ``"mmol/L -> mg/dL: x38.665 (molar mass 386.65 g/mol)"`` (for reports)."""
        text = f"{self.source} -> {self.target}: x{self.factor:.10g}"
        text += f" {'+' if self.offset >= 0 else '-'} {abs(self.offset):.10g}" if self.offset else ""
        return text + (f" ({self.via})" if self.via else "")


def conversion(source: str, target: str, *, molar_mass_of: str | None = None) -> Conversion | None:
    """The conversion from ``source`` to ``target``; None when they are the same unit.

    Parameters
    ----------
    source, target
        Unit strings pint reads (after the clinical spellings above).
    molar_mass_of
        The measured substance's molar mass (``"386.65 g/mol"``), needed to convert between amount of substance and
        mass (mmol/L <-> mg/dL); declared on the schema's feature.

    Raises
    ------
    UnitError
        If either unit is unknown, or they measure different kinds of quantity (the message names both kinds and
        units that do convert to ``target``).
    """
    src, dst = parse_unit(source), parse_unit(target)
    if src == dst:
        return None
    registry, via, contexts, kwargs = _registry(), "", (), {}
    substance_and_mass = {"[substance]", "[mass]"} <= set(src.dimensionality) | set(dst.dimensionality)
    if src.dimensionality != dst.dimensionality and substance_and_mass:
        if molar_mass_of is None:
            raise UnitError(f"converting '{source}' ({_dimension(src)}) to '{target}' ({_dimension(dst)}) needs the "
                            "molar mass of what is measured; expected molar_mass = '<g/mol>' on the schema's feature "
                            "(e.g. '386.65 g/mol' for cholesterol)")  # fmt: skip
        contexts, kwargs, via = ("chemistry",), {"mw": molar_mass(molar_mass_of)}, f"molar mass {molar_mass_of}"
    try:
        zero = registry.Quantity(0.0, src).to(dst, *contexts, **kwargs).magnitude
        far = registry.Quantity(_SPAN, src).to(dst, *contexts, **kwargs).magnitude
    except Exception as error:  # noqa: BLE001 - pint's DimensionalityError (pint is imported lazily)
        if type(error).__name__ != "DimensionalityError":
            raise
        raise UnitError(f"no conversion from '{source}' ({_dimension(src)}) to '{target}' ({_dimension(dst)}); "
                        f"expected a unit of the same kind as '{target}', e.g. {_compatible(dst)}") from None
    return Conversion(source, target, float((far - zero) / _SPAN), float(zero), via)
