"""German Credit (Hofmann 1994, UCI Statlog): canonical loader and the split of applicants across three banks.

Domain code of the bank example's data preparation (``prepare.py`` beside it); nothing in ``common/`` imports it.

The shipped file ``data/german-credit/german_credit.csv`` is Weka's ``credit-g.arff`` (UCI's ``german.data`` with its
A-codes replaced by words) written as CSV with an ``id`` column (the record's 1-based position); see that folder's
README.md. :func:`load_german_credit` validates every cell and returns the canonical table of the federation schema
``data/schemas/credit.toml``: one row per applicant, ``label`` 1 = bad credit risk, 0 = good.

The banks are a documented construction: each application is held by the bank that serves its purpose
(:data:`BANK_OF_PURPOSE`): car loans at ``car_bank``, household loans at ``retail_bank``, and business, education,
retraining and other loans at ``business_bank``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "BANKS", "BANK_OF_PURPOSE", "CANONICAL_COLUMNS", "CATEGORIES", "CREDIT_TABULAR_FEATURES", "CreditDataError",
    "DEFAULT_CREDIT_CSV", "EXCLUDED_COLUMNS", "NUMERIC_RANGES", "SOURCE_COLUMNS", "load_german_credit",
]  # fmt: skip

DEFAULT_CREDIT_CSV = Path(__file__).resolve().parent / "german_credit.csv"

BANKS = ("car_bank", "retail_bank", "business_bank")
#: purpose -> the bank that holds the application (the split attribute of the bank federation)
BANK_OF_PURPOSE: dict[str, str] = {
    "new car": "car_bank", "used car": "car_bank",
    "furniture/equipment": "retail_bank", "radio/tv": "retail_bank", "domestic appliance": "retail_bank",
    "repairs": "retail_bank",
    "education": "business_bank", "vacation": "business_bank", "retraining": "business_bank",
    "business": "business_bank", "other": "business_bank",
}  # fmt: skip

#: allowed words per categorical column, in UCI's code order (A11.., A30.., ...); the schema's vocabularies
CATEGORIES: dict[str, tuple[str, ...]] = {
    "checking_status": ("<0", "0<=X<200", ">=200", "no checking"),
    "credit_history": ("no credits/all paid", "all paid", "existing paid", "delayed previously",
                       "critical/other existing credit"),  # fmt: skip
    "purpose": tuple(BANK_OF_PURPOSE),
    "savings_status": ("<100", "100<=X<500", "500<=X<1000", ">=1000", "no known savings"),
    "employment": ("unemployed", "<1", "1<=X<4", "4<=X<7", ">=7"),
    "personal_status": ("male div/sep", "female div/dep/mar", "male single", "male mar/wid", "female single"),
    "other_parties": ("none", "co applicant", "guarantor"),
    "property_magnitude": ("real estate", "life insurance", "car", "no known property"),
    "other_payment_plans": ("bank", "stores", "none"),
    "housing": ("rent", "own", "for free"),
    "job": ("unemp/unskilled non res", "unskilled resident", "skilled", "high qualif/self emp/mgmt"),
    "own_telephone": ("none", "yes"),
    "foreign_worker": ("yes", "no"),
    "class": ("good", "bad"),
}
#: whole-number columns and their allowed closed ranges (as in data/schemas/credit.toml)
NUMERIC_RANGES: dict[str, tuple[int, int]] = {
    "duration": (1, 120), "credit_amount": (1, 1_000_000), "installment_commitment": (1, 4),
    "residence_since": (1, 4), "age": (18, 100), "existing_credits": (1, 10), "num_dependents": (0, 10),
}  # fmt: skip
#: columns of the shipped CSV, in its order
SOURCE_COLUMNS = (
    "id", "checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings_status", "employment",
    "installment_commitment", "personal_status", "other_parties", "residence_since", "property_magnitude", "age",
    "other_payment_plans", "housing", "existing_credits", "job", "num_dependents", "own_telephone", "foreign_worker",
    "class",
)  # fmt: skip
#: read and validated, but not part of the federation's table (protected characteristics; see the schema's header)
EXCLUDED_COLUMNS = ("personal_status", "foreign_worker")
CANONICAL_COLUMNS = (
    "id", "bank", "checking_status", "duration", "credit_history", "purpose", "credit_amount", "savings_status",
    "employment", "installment_commitment", "other_parties", "residence_since", "property_magnitude", "age",
    "other_payment_plans", "housing", "existing_credits", "job", "num_dependents", "own_telephone", "label",
)  # fmt: skip
#: the tabular modality's columns, in model order (numeric, and own_telephone as 0/1)
CREDIT_TABULAR_FEATURES = ("duration", "credit_amount", "installment_commitment", "residence_since", "age",
                           "existing_credits", "num_dependents", "own_telephone")  # fmt: skip


class CreditDataError(ValueError):
    """The German Credit CSV does not have the expected shape or content (message names file, line and column)."""


class _BadCell(ValueError):
    """A cell parser's complaint: ``args[0]`` says what the cell should have been."""


def _whole(low: int, high: int) -> Callable[[str], object]:
    def parse(raw: str) -> object:
        try:
            value = float(raw)
        except ValueError:
            raise _BadCell(f"an integer from {low} to {high}") from None
        if not (value.is_integer() and low <= value <= high):
            raise _BadCell(f"an integer from {low} to {high}")
        return value

    return parse


def _word(allowed: tuple[str, ...]) -> Callable[[str], object]:
    def parse(raw: str) -> object:
        if raw not in allowed:
            raise _BadCell(f"one of {list(allowed)}")
        return raw

    return parse


_PARSERS: dict[str, Callable[[str], object]] = {
    "id": _whole(1, 10**9),
    **{c: _whole(low, high) for c, (low, high) in NUMERIC_RANGES.items()},
    **{c: _word(words) for c, words in CATEGORIES.items()},
}


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"German Credit CSV not found: {path} (pass csv_path=... to load_german_credit)")
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            records = list(csv.reader(fh, strict=True))
    except (csv.Error, UnicodeDecodeError) as error:
        raise CreditDataError(f"{path}: not a readable UTF-8 CSV ({error})") from None
    if not records:
        raise CreditDataError(f"{path}: the file is empty; expected a header line and 1000 records")
    header, rows = records[0], records[1:]
    if tuple(header) != SOURCE_COLUMNS:
        raise CreditDataError(f"{path}, line 1: header {header}; expected columns {list(SOURCE_COLUMNS)}")
    return header, rows


def _parse(rows: list[list[str]], path: Path) -> dict[str, list[object]]:
    columns: dict[str, list[object]] = {c: [] for c in SOURCE_COLUMNS}
    seen: dict[int, int] = {}
    for position, record in enumerate(rows):
        line = position + 2  # line 1 is the header
        if len(record) != len(SOURCE_COLUMNS):
            raise CreditDataError(f"{path}, line {line}: {len(record)} fields; expected {len(SOURCE_COLUMNS)}")
        for column, cell in zip(SOURCE_COLUMNS, record, strict=True):
            try:
                columns[column].append(_PARSERS[column](cell.strip()))
            except _BadCell as bad:
                raise CreditDataError(f"{path}, line {line}, column '{column}': expected {bad}, got {cell!r}") from None
        applicant = int(columns["id"][-1])  # type: ignore[call-overload]
        if applicant in seen:
            raise CreditDataError(f"{path}, line {line}, column 'id': id {applicant} also appears on line "
                                  f"{seen[applicant]}; expected each id once")  # fmt: skip
        seen[applicant] = line
    return columns


def load_german_credit(csv_path: Path | None = None) -> pd.DataFrame:
    """Load the German Credit CSV as the canonical table of the credit schema.

    Parameters
    ----------
    csv_path
        The CSV to read; defaults to the repository's copy (:data:`DEFAULT_CREDIT_CSV`). Pass an absolute path when
        the code runs from a Flower app bundle, which does not carry data.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`CANONICAL_COLUMNS`, sorted by ``id`` (int64): ``bank`` from :data:`BANK_OF_PURPOSE`; the
        numeric columns of :data:`NUMERIC_RANGES` as float64 (whole numbers); ``own_telephone`` a nullable boolean;
        the other categorical columns words of :data:`CATEGORIES`; ``label`` int64, 1 = bad credit risk, 0 = good.
        :data:`EXCLUDED_COLUMNS` are validated but left out.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    CreditDataError
        If the header differs, an id repeats or a cell is not what its column expects (naming file, line, column).
    """
    path = Path(csv_path) if csv_path is not None else DEFAULT_CREDIT_CSV
    _, rows = _read(path)
    columns = _parse(rows, path)
    table = pd.DataFrame(
        {
            "id": np.asarray(columns["id"], dtype=np.int64),
            "bank": [BANK_OF_PURPOSE[p] for p in columns["purpose"]],  # type: ignore[index]
            **{c: np.asarray(columns[c], dtype=np.float64) for c in NUMERIC_RANGES},
            **{c: list(columns[c]) for c in CATEGORIES if c not in ("own_telephone", "class", *EXCLUDED_COLUMNS)},
            "own_telephone": pd.array([v == "yes" for v in columns["own_telephone"]], dtype="boolean"),
            "label": np.asarray([v == "bad" for v in columns["class"]], dtype=np.int64),
        }
    )
    return table.sort_values("id", ignore_index=True)[list(CANONICAL_COLUMNS)]
