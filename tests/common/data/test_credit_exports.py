"""The GENERATED bank exports, mapped through their own mapping files, give exactly the canonical rows of each bank;
each bank's malformed files fail with the file, line and column and what was expected."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from common.data.cleaning import load_mapped
from common.data.credit import BANKS, load_german_credit
from common.data.credit_exports import BANK_EXPORTS, main
from common.data.schema import DataContractError

ROOT = Path(__file__).resolve().parents[3]
EXPORTS = ROOT / "data" / "german-credit" / "exports"
MAPPINGS = {bank: ROOT / "data" / "mappings" / f"{bank}.toml" for bank in BANKS}


@pytest.fixture(scope="module")
def canonical() -> pd.DataFrame:
    return load_german_credit()


@pytest.mark.parametrize("bank", BANKS)
def test_each_bank_export_maps_to_exactly_its_canonical_rows(canonical: pd.DataFrame, bank: str) -> None:
    mapped = load_mapped(MAPPINGS[bank])
    assert mapped.mapping.file.path.resolve() == (EXPORTS / BANK_EXPORTS[bank].file).resolve()
    expected = canonical[canonical["bank"] == bank].reset_index(drop=True)
    pd.testing.assert_frame_equal(mapped.table, expected, check_exact=True)


def test_each_bank_has_its_own_quirks() -> None:
    formats = {bank: load_mapped(MAPPINGS[bank]).mapping.file for bank in BANKS}
    assert (formats["car_bank"].delimiter, formats["car_bank"].header) == (" ", False)
    assert formats["car_bank"].ignore == ("personal_status", "foreign_worker")
    assert (formats["retail_bank"].delimiter, formats["retail_bank"].decimal) == (";", ",")
    assert formats["retail_bank"].encoding == "cp1252"
    assert formats["business_bank"].ignore == ("foreign_worker",)
    retail = load_mapped(MAPPINGS["retail_bank"]).report.changes()
    assert retail["Betrag EUR"] == {"converted": 495, "rounded": 495}
    business = load_mapped(MAPPINGS["business_bank"]).report
    term = next(c for c in business.columns if c.column == "term_years")
    assert term.conversion == "years -> months: x12" and term.converted == 168


def test_exports_first_lines_exactly() -> None:
    car = (EXPORTS / "car_bank.data").read_text().splitlines()
    assert len(car) == 337
    # UCI german.data record 5, with its applicant number in front
    assert car[0] == "5 A11 24 A33 A40 4870 A61 A73 3 A93 A101 4 A124 53 A143 A153 2 A173 2 A191 A201 2"
    retail = (EXPORTS / "retail_bank.csv").read_bytes().decode("cp1252").splitlines()
    assert len(retail) == 1 + 495 and retail[0].startswith("Antragsnr;Bonität;Kontostand;Laufzeit Monate;")
    assert retail[1] == ("1;gut;Soll;6;kritisch/andere Kredite;Radio/Fernseher;597,70;unbekannt/keine;ab 7 Jahre;4;"
                         "keine;4;Immobilie;67;keine;Eigentum;2;Facharbeiter/Angestellter;1;ja")  # 1169 DM  # fmt: skip
    business = (EXPORTS / "business_bank.csv").read_text().splitlines()
    assert len(business) == 1 + 168
    assert business[1] == ('"N","3","education","2096","1.00","2","49","no_account","lt100","critical","4-7y",'
                           '"unskilled_resident","3","owner","real_estate","none","none","1","2","N","Y"')  # fmt: skip


def test_committed_exports_are_up_to_date_and_regenerate_identically(tmp_path: Path) -> None:
    assert main(["--check", "--out", str(EXPORTS)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    for export in BANK_EXPORTS.values():
        assert (tmp_path / export.file).read_bytes() == (EXPORTS / export.file).read_bytes()
    assert "GENERATED" in (EXPORTS / "README.md").read_text()


def _broken(tmp_path: Path, bank: str, edit: Callable[[list[str]], None]) -> Path:
    """A copy of ``bank``'s export with ``edit`` applied to its lines (0 = line 1)."""
    export = BANK_EXPORTS[bank]
    lines = (EXPORTS / export.file).read_bytes().decode(export.encoding).split("\n")
    edit(lines)
    path = tmp_path / export.file
    path.write_bytes("\n".join(lines).encode(export.encoding))
    return path


def _replace(line: int, old: str, new: str) -> Callable[[list[str]], None]:
    def edit(lines: list[str]) -> None:
        assert old in lines[line - 1], (line, old, lines[line - 1])
        lines[line - 1] = lines[line - 1].replace(old, new, 1)

    return edit


# (bank, line to edit, old text, new text, the error's message after the file name)
MALFORMED = {
    "car_bank: unknown purpose code": (
        "car_bank", 5, " A40 ", " A47X ",
        "line 5, column 'purpose': unknown code 'A47X'; expected one of A40, A41, A42, A43, A44, A45, A46, A47, A48, "
        "A49, A410 (mapping data/mappings/car_bank.toml)"),
    "car_bank: a record lost a field": (
        "car_bank", 7, " A201 ", " ",
        "line 7: 21 fields; expected 22 fields separated by ' ' (applicant_no, status, duration, "),
    "car_bank: unknown class": (
        "car_bank", 2, " A201 1", " A201 3",
        "line 2, column 'class': unknown code '3'; expected one of 1, 2 (mapping data/mappings/car_bank.toml)"),
    "retail_bank: negative amount": (
        "retail_bank", 3, ";3042,70;", ";-3042,70;",
        "line 3, column 'Betrag EUR': -5951 DM (read '-3042,70' EUR) is outside the allowed range; expected an "
        "integer from 1 to 1000000 DM (or set out_of_range = 'missing' for this column)"),
    "retail_bank: amount with a decimal point": (
        "retail_bank", 3, ";3042,70;", ";3042.70;",
        "line 3, column 'Betrag EUR': '3042.70' is not a number; expected a number with decimal separator ','"),
    "retail_bank: missing label": (
        "retail_bank", 3, "2;schlecht;", "2;;",
        "line 3, column 'Bonität': missing value '' for required label feature 'label'; expected an integer from 0 "
        "to 1 (this feature may not be missing)"),
    "retail_bank: unknown purpose word": (
        "retail_bank", 3, "Radio/Fernseher", "Fernsehgerät",
        "line 3, column 'Verwendungszweck': unknown code 'Fernsehgerät'; expected one of Neuwagen, Gebrauchtwagen, "),
    "business_bank: duplicate applicant id": (
        "business_bank", 4, '"12"', '"6"',
        "line 4, column 'loan_id': id 6 also appears on line 3; expected each id once "
        "(mapping data/mappings/business_bank.toml)"),
    "business_bank: zero-length term": (
        "business_bank", 5, '"2.50"', '"0.00"',
        "line 5, column 'term_years': 0 months (read '0.00' years) is outside the allowed range; expected an "
        "integer from 1 to 120 months"),
    "business_bank: renamed label column": (
        "business_bank", 1, '"defaulted"', '"default_flag"',
        "line 1: missing column(s) 'defaulted' -> label; expected a header naming every mapped column; it has "
        "['default_flag', 'loan_id', "),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bank_export_fails_naming_file_line_and_column(tmp_path: Path, case: str) -> None:
    bank, line, old, new, message = MALFORMED[case]
    path = _broken(tmp_path, bank, _replace(line, old, new))
    with pytest.raises(DataContractError) as caught:
        load_mapped(MAPPINGS[bank], data_file=path)
    assert str(caught.value).startswith(f"{path} {message}"), str(caught.value)
    assert caught.value.file == path and caught.value.line == line


def test_retail_export_in_the_wrong_encoding_fails_naming_the_line(tmp_path: Path) -> None:
    text = (EXPORTS / "retail_bank.csv").read_bytes().decode("cp1252")
    path = tmp_path / "retail_bank.csv"
    path.write_bytes(text.encode("cp1252").replace(b"\xe4", b"\x81", 1))  # the first 'ä' -> a byte cp1252 lacks
    with pytest.raises(DataContractError, match=re.escape("line 1: byte 0x81 is not valid cp1252 text")):
        load_mapped(MAPPINGS["retail_bank"], data_file=path)
