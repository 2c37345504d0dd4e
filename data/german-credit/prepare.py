"""GENERATED bank exports: the canonical German Credit data written out the way each of the three banks ships it.

Each bank's applicants (:data:`canonical.BANK_OF_PURPOSE`) are written in that bank's own layout, so that
each bank's mapping file (``data/mappings/<bank>.toml``) must undo real-looking quirks through configuration alone:

* ``car_bank.data``: UCI's ``german.data`` layout: no header, fields separated by one space, UCI's A-codes
  (``A11``, ``A43``, ...), class ``1`` = good / ``2`` = bad, an applicant number in front, and the two columns the
  federation does not use (personal status, foreign worker) still present.
* ``retail_bank.csv``: a German core-banking export: cp1252 text, ``;`` between fields, decimal comma, German column
  names and words, the amount in EUR with two decimals (1 EUR = 1.95583 DM), the label first after the id.
* ``business_bank.csv``: every field quoted, its own English column names in its own order, snake-case codes,
  ``Y``/``N``, the duration in years with two decimals, and a foreign-worker column.

Domain code of the bank example (it lives here, not in ``common/``): the canonical loader is ``canonical.py`` beside it.
Run ``python data/german-credit/prepare.py`` to rewrite ``data/german-credit/exports`` (``--check`` only compares;
a test runs it).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # canonical.py beside this script

from canonical import BANKS, CATEGORIES, DEFAULT_CREDIT_CSV, load_german_credit  # noqa: E402

__all__ = ["BANK_EXPORTS", "DEFAULT_CREDIT_EXPORT_DIR", "DM_PER_EUR", "UCI_A_CODES", "BankExport", "bank_text",
           "credit_export_table", "main", "write_credit_exports"]  # fmt: skip

DEFAULT_CREDIT_EXPORT_DIR = DEFAULT_CREDIT_CSV.parent / "exports"
DM_PER_EUR = 1.95583  # as registered in common.data.units (Council Regulation (EC) No 2866/98)

_A_PREFIX = {"checking_status": 1, "credit_history": 3, "purpose": 4, "savings_status": 6, "employment": 7,
             "personal_status": 9, "other_parties": 10, "property_magnitude": 12, "other_payment_plans": 14,
             "housing": 15, "job": 17, "own_telephone": 19, "foreign_worker": 20}  # fmt: skip
_A_FIRST = {"credit_history": 0, "purpose": 0}  # these count from A30 / A40; the others from A<k>1
#: canonical word -> UCI's german.data code (german.names: A11-A14, A30-A34, A40-A410, ..., A201-A202)
UCI_A_CODES: dict[str, dict[object, str]] = {
    column: {word: f"A{prefix}{i + _A_FIRST.get(column, 1)}" for i, word in enumerate(CATEGORIES[column])}
    for column, prefix in _A_PREFIX.items()
}
UCI_A_CODES["own_telephone"] = {False: "A191", True: "A192"}
UCI_A_CODES["label"] = {0: "1", 1: "2"}  # UCI's class: 1 = good, 2 = bad

_RETAIL_WORDS: dict[str, tuple[str, ...]] = {  # in CATEGORIES order
    "checking_status": ("Soll", "0-200 DM", "ab 200 DM/Gehaltskonto", "kein Konto"),
    "credit_history": ("keine Kredite/alle bezahlt", "alle bei uns bezahlt", "laufende bezahlt", "früher verzögert",
                       "kritisch/andere Kredite"),
    "purpose": ("Neuwagen", "Gebrauchtwagen", "Möbel/Einrichtung", "Radio/Fernseher", "Haushaltsgerät", "Reparatur",
                "Ausbildung", "Urlaub", "Umschulung", "Geschäftlich", "Sonstiges"),
    "savings_status": ("unter 100 DM", "100-500 DM", "500-1000 DM", "ab 1000 DM", "unbekannt/keine"),
    "employment": ("arbeitslos", "unter 1 Jahr", "1-4 Jahre", "4-7 Jahre", "ab 7 Jahre"),
    "other_parties": ("keine", "Mitantragsteller", "Bürge"),
    "property_magnitude": ("Immobilie", "Bausparvertrag/Lebensversicherung", "Auto/Sonstiges", "keines"),
    "other_payment_plans": ("Bank", "Handel", "keine"),
    "housing": ("Miete", "Eigentum", "kostenfrei"),
    "job": ("arbeitslos/ungelernt, nicht ansässig", "ungelernt, ansässig", "Facharbeiter/Angestellter",
            "Führungskraft/selbständig"),
}  # fmt: skip
_BUSINESS_WORDS: dict[str, tuple[str, ...]] = {
    "checking_status": ("overdrawn", "low", "high_or_salary", "no_account"),
    "credit_history": ("none_or_all_paid", "all_paid_here", "current_paid", "past_delays", "critical"),
    "purpose": ("new_car", "used_car", "furniture", "radio_tv", "appliance", "repairs", "education", "vacation",
                "retraining", "business", "other"),
    "savings_status": ("lt100", "100-500", "500-1000", "ge1000", "unknown"),
    "employment": ("unemployed", "lt1y", "1-4y", "4-7y", "ge7y"),
    "other_parties": ("none", "co_applicant", "guarantor"),
    "property_magnitude": ("real_estate", "insurance_or_savings", "car_or_other", "none"),
    "other_payment_plans": ("bank", "store", "none"),
    "housing": ("rent", "owner", "free"),
    "job": ("unskilled_nonresident", "unskilled_resident", "skilled", "management"),
    "foreign_worker": ("Y", "N"),
}  # fmt: skip


def _words(table: dict[str, tuple[str, ...]]) -> dict[str, dict[object, str]]:
    return {column: dict(zip(CATEGORIES[column], words, strict=True)) for column, words in table.items()}


def _whole(value: object) -> str:
    return str(int(value))  # type: ignore[call-overload]


def _euro(dm: object) -> str:
    """DM -> EUR with two decimals and a decimal comma (retail_bank)."""
    return f"{float(dm) / DM_PER_EUR:.2f}".replace(".", ",")  # type: ignore[arg-type]


def _years(months: object) -> str:
    """Months -> years with two decimals (business_bank)."""
    return f"{float(months) / 12:.2f}"  # type: ignore[arg-type]


@dataclass(frozen=True)
class BankExport:
    """How one bank writes its file: a layout and, per column, the canonical column and how a value is written."""

    file: str
    delimiter: str
    header: bool
    encoding: str
    quote_all: bool
    columns: tuple[tuple[str, str, Callable[[object], str]], ...]  # (name in the file, canonical column, writer)


def _coded(codes: dict[object, str]) -> Callable[[object], str]:
    return lambda value: codes[value]


def _car_bank() -> BankExport:
    a = UCI_A_CODES
    names = ("applicant_no", "status", "duration", "history", "purpose", "amount", "savings", "employment",
             "installment_rate", "personal_status", "debtors", "residence", "property", "age", "other_plans",
             "housing", "credits", "job", "liable", "telephone", "foreign_worker", "class")  # fmt: skip
    sources = ("id", "checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings_status",
               "employment", "installment_commitment", "personal_status", "other_parties", "residence_since",
               "property_magnitude", "age", "other_payment_plans", "housing", "existing_credits", "job",
               "num_dependents", "own_telephone", "foreign_worker", "label")  # fmt: skip
    columns = tuple((n, s, _coded(a[s]) if s in a else _whole) for n, s in zip(names, sources, strict=True))
    return BankExport("car_bank.data", " ", header=False, encoding="utf-8", quote_all=False, columns=columns)


def _retail_bank() -> BankExport:
    w = _words(_RETAIL_WORDS)
    columns = (
        ("Antragsnr", "id", _whole), ("Bonität", "label", _coded({0: "gut", 1: "schlecht"})),
        ("Kontostand", "checking_status", _coded(w["checking_status"])), ("Laufzeit Monate", "duration", _whole),
        ("Kredithistorie", "credit_history", _coded(w["credit_history"])),
        ("Verwendungszweck", "purpose", _coded(w["purpose"])), ("Betrag EUR", "credit_amount", _euro),
        ("Sparguthaben", "savings_status", _coded(w["savings_status"])),
        ("Beschäftigt seit", "employment", _coded(w["employment"])), ("Ratenhöhe", "installment_commitment", _whole),
        ("Bürgen", "other_parties", _coded(w["other_parties"])), ("Wohnhaft seit", "residence_since", _whole),
        ("Vermögen", "property_magnitude", _coded(w["property_magnitude"])), ("Alter", "age", _whole),
        ("Weitere Ratenkredite", "other_payment_plans", _coded(w["other_payment_plans"])),
        ("Wohnsituation", "housing", _coded(w["housing"])), ("Kredite bei uns", "existing_credits", _whole),
        ("Beruf", "job", _coded(w["job"])), ("Unterhaltspflichtige", "num_dependents", _whole),
        ("Telefon", "own_telephone", _coded({True: "ja", False: "nein"})),
    )  # fmt: skip
    return BankExport("retail_bank.csv", ";", header=True, encoding="cp1252", quote_all=False, columns=columns)


def _business_bank() -> BankExport:
    w = _words(_BUSINESS_WORDS)
    yes_no = _coded({True: "Y", False: "N", 1: "Y", 0: "N"})
    columns = (
        ("defaulted", "label", yes_no), ("loan_id", "id", _whole), ("purpose_code", "purpose", _coded(w["purpose"])),
        ("amount_dm", "credit_amount", _whole), ("term_years", "duration", _years),
        ("rate_class", "installment_commitment", _whole), ("applicant_age", "age", _whole),
        ("account", "checking_status", _coded(w["checking_status"])),
        ("savings", "savings_status", _coded(w["savings_status"])),
        ("history", "credit_history", _coded(w["credit_history"])), ("employed", "employment", _coded(w["employment"])),
        ("occupation", "job", _coded(w["job"])), ("residence_years", "residence_since", _whole),
        ("home", "housing", _coded(w["housing"])), ("assets", "property_magnitude", _coded(w["property_magnitude"])),
        ("co_debtors", "other_parties", _coded(w["other_parties"])),
        ("other_loans", "other_payment_plans", _coded(w["other_payment_plans"])),
        ("open_credits", "existing_credits", _whole), ("dependants", "num_dependents", _whole),
        ("phone", "own_telephone", yes_no), ("foreign_worker", "foreign_worker", _coded(w["foreign_worker"])),
    )  # fmt: skip
    return BankExport("business_bank.csv", ",", header=True, encoding="utf-8", quote_all=True, columns=columns)


#: bank -> how it exports (the file names are those under data/german-credit/exports)
BANK_EXPORTS: dict[str, BankExport] = {"car_bank": _car_bank(), "retail_bank": _retail_bank(),
                                       "business_bank": _business_bank()}  # fmt: skip


def credit_export_table(csv_path: Path | None = None) -> pd.DataFrame:
    """The canonical table plus the two source columns it leaves out (``personal_status``, ``foreign_worker``)."""
    path = Path(csv_path) if csv_path is not None else DEFAULT_CREDIT_CSV
    table = load_german_credit(path)
    source = pd.read_csv(path, dtype=str, keep_default_na=False).set_index("id")
    source.index = source.index.astype("int64")
    source = source.loc[table["id"]]
    return table.assign(personal_status=source["personal_status"].to_numpy(),
                        foreign_worker=source["foreign_worker"].to_numpy())  # fmt: skip


def bank_text(rows: pd.DataFrame, export: BankExport) -> str:
    """Rows of :func:`credit_export_table` in ``export``'s layout (lines end with ``\\n``)."""
    out = io.StringIO()
    quoting = csv.QUOTE_ALL if export.quote_all else csv.QUOTE_MINIMAL
    writer = csv.writer(out, delimiter=export.delimiter, quoting=quoting, lineterminator="\n")
    if export.header:
        writer.writerow([name for name, _, _ in export.columns])
    for row in rows.to_dict("records"):
        writer.writerow([write(row[source]) for _, source, write in export.columns])
    return out.getvalue()


def _files(csv_path: Path | None) -> dict[str, bytes]:
    table = credit_export_table(csv_path)
    files = {}
    for bank in BANKS:
        export = BANK_EXPORTS[bank]
        files[export.file] = bank_text(table[table["bank"] == bank], export).encode(export.encoding)
    return files


def write_credit_exports(out_dir: Path = DEFAULT_CREDIT_EXPORT_DIR, *, csv_path: Path | None = None) -> list[Path]:
    """Write the three bank exports into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in _files(csv_path).items():
        (out_dir / name).write_bytes(data)
        written.append(out_dir / name)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """``python data/german-credit/prepare.py [--out DIR] [--csv FILE] [--check]``."""
    parser = argparse.ArgumentParser(prog="prepare.py",
                                     description=(__doc__ or "").split("\n\n")[0])  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_CREDIT_EXPORT_DIR, help="folder (default: %(default)s)")
    parser.add_argument("--csv", type=Path, default=None, help="canonical CSV (default: the repository's copy)")
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out; exit 1 if stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = [n for n, data in _files(args.csv).items()
                 if not (args.out / n).is_file() or (args.out / n).read_bytes() != data]  # fmt: skip
        for name in stale:
            print(f"{args.out / name}: missing or out of date; run python data/german-credit/prepare.py",
                  file=sys.stderr)  # fmt: skip
        return 1 if stale else 0
    for path in write_credit_exports(args.out, csv_path=args.csv):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
