"""Units by pint: exact conversions against their definitions, clinical spellings, and errors that say what to write.

Expected values are computed here from the units' definitions (not read back from pint): 1 lb = 0.45359237 kg and
1 in = 2.54 cm exactly; 1 mm Hg = 13.5951 g/cm3 x 9.80665 m/s2 x 1 mm = 133.322387415 Pa; a molar mass M g/mol
makes 1 mmol/L = M mg/L = M/10 mg/dL; 1 EUR = 1.95583 DM (Council Regulation (EC) No 2866/98).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.data.units import Conversion, UnitError, conversion, parse_unit

CHOLESTEROL = "386.65 g/mol"  # C27H46O
GLUCOSE = "180.156 g/mol"  # C6H12O6


def test_cholesterol_mmol_per_litre_to_mg_per_decilitre_from_its_molar_mass() -> None:
    to_mg = conversion("mmol/L", "mg/dL", molar_mass_of=CHOLESTEROL)
    assert to_mg is not None and to_mg.factor == pytest.approx(38.665, rel=1e-12) and to_mg.offset == 0
    assert round(to_mg.apply(6.03)) == 233  # Cleveland's first patient, as the variant export writes it
    back = conversion("mg/dL", "mmol/L", molar_mass_of=CHOLESTEROL)
    assert back.apply(386.65) == pytest.approx(10.0, rel=1e-12)
    assert to_mg.describe() == "mmol/L -> mg/dL: x38.665 (molar mass 386.65 g/mol)"
    glucose = conversion("mmol/L", "mg/dL", molar_mass_of=GLUCOSE)
    assert glucose.apply(5.0) == pytest.approx(90.078, rel=1e-12)


def test_units_the_old_table_refused_now_convert() -> None:
    assert conversion("mu U/ml", "mU/L").factor == pytest.approx(1.0, rel=1e-12)  # micro-units per ml, not milli-u
    assert conversion("mu U/ml", "U/L").factor == pytest.approx(1e-3, rel=1e-12)
    assert conversion("kg/m2", "kg/m**2") is None  # BMI: digits are exponents
    assert conversion("kg/m2", "lb/in2").factor == pytest.approx(0.0254**2 / 0.45359237, rel=1e-12)
    assert conversion("mcg/dL", "ug/L").factor == pytest.approx(10.0, rel=1e-12)
    assert conversion("cm H2O", "mm H2O").factor == pytest.approx(10.0, rel=1e-12)
    assert conversion("mmol/l", "mmol/L") is None  # pint reads "l" as litre


def test_conversions_equal_their_definitions() -> None:
    assert conversion("kPa", "mm Hg").factor == pytest.approx(1000 / (13.5951 * 9.80665), rel=1e-12)
    assert conversion("lb", "kg").factor == pytest.approx(0.45359237, rel=1e-12)
    assert conversion("in", "cm").factor == pytest.approx(2.54, rel=1e-12)
    assert conversion("months", "years").factor == pytest.approx(1 / 12, rel=1e-12)
    assert conversion("years", "months").factor == pytest.approx(12.0, rel=1e-12)
    assert conversion("EUR", "DM").factor == pytest.approx(1.95583, rel=1e-12)
    assert conversion("1/min", "bpm") is None or conversion("1/min", "bpm").factor == pytest.approx(1.0)
    to_c = conversion("degF", "degC")
    assert to_c.apply(212.0) == pytest.approx(100.0, abs=1e-12) and to_c.apply(32.0) == pytest.approx(0.0, abs=1e-12)
    assert conversion("degC", "degF").apply(37.0) == pytest.approx(98.6, abs=1e-12)
    assert to_c.describe() == "degF -> degC: x0.5555555556 - 17.77777778"
    assert conversion("mg/dL", "mg/dL") is None and conversion("1", "1") is None


def test_substance_to_mass_needs_the_declared_molar_mass() -> None:
    with pytest.raises(UnitError, match=r"^converting 'mmol/L' \(\[substance\] / \[length\] \*\* 3\) to 'mg/dL' "
                                        r"\(\[mass\] / \[length\] \*\* 3\) needs the molar mass of what is measured; "
                                        r"expected molar_mass = '<g/mol>' on the schema's feature"):
        conversion("mmol/L", "mg/dL")


def test_errors_list_what_was_expected() -> None:
    with pytest.raises(UnitError, match=r"^no conversion from 'kPa' \(\[mass\] / \[length\] / \[time\] \*\* 2\) to "
                                        r"'mg/dL' \(\[mass\] / \[length\] \*\* 3\); expected a unit of the same kind "
                                        r"as 'mg/dL', e.g. 'mg/dL', 'g/L'$"):
        conversion("kPa", "mg/dL")
    with pytest.raises(UnitError, match=r"^unknown unit 'beats per minute' \('beats' is not defined in the unit "
                                        r"registry\); expected a unit pint reads, e.g. 'mg/dL', 'mmol/L', 'mm Hg'"):
        parse_unit("beats per minute")
    with pytest.raises(UnitError, match=r"^unknown unit '1/0'; expected a unit pint reads"):
        parse_unit("1/0")
    with pytest.raises(UnitError, match=r"^no conversion from 'mu U/ml' .* to 'IU/L'"):  # enzyme units are not IU
        conversion("mu U/ml", "IU/L")


def test_inverse_of_inverse_is_the_conversion() -> None:
    forward = Conversion("degF", "degC", 5 / 9, -160 / 9)
    back = forward.inverse().inverse()
    assert back.factor == pytest.approx(forward.factor) and back.offset == pytest.approx(forward.offset)


_PAIRS = [("mmol/L", "mg/dL", CHOLESTEROL), ("mmol/L", "mg/dL", GLUCOSE), ("kPa", "mm Hg", None),
          ("months", "years", None), ("lb", "kg", None), ("in", "cm", None), ("degF", "degC", None),
          ("mu U/ml", "mU/L", None), ("kg/m2", "lb/in2", None), ("EUR", "DM", None)]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(pair=st.sampled_from(_PAIRS), value=st.floats(-1e6, 1e6, allow_nan=False), forward=st.booleans())
def test_convert_then_unconvert_is_the_identity(pair: tuple, value: float, forward: bool) -> None:
    source, target, mass = pair if forward else (pair[1], pair[0], pair[2])
    there = conversion(source, target, molar_mass_of=mass)
    back = conversion(target, source, molar_mass_of=mass)
    assert abs(back.apply(there.apply(value)) - value) <= 1e-9 * max(1.0, abs(value))
