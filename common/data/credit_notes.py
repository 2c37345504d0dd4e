"""GENERATED short loan-officer notes for the text modality of the bank federation. They are NOT real text.

The German Credit data has no free text. To exercise a text branch, each applicant gets a note filled in from
templates, using ONLY the categorical fields :data:`CREDIT_NOTE_FIELDS` (checking account, credit history, purpose,
savings, employment, other debtors, property, other installment plans, housing, job) and never a column of
``CREDIT_TABULAR_FEATURES`` (duration, amount, rates, age, counts, telephone), so text and tabular inputs are
disjoint. Several phrasings exist; the one used is chosen deterministically from the applicant id (and a seed).
A field that was not recorded reads "not recorded". Every note starts with :data:`GENERATED_MARKER`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pandas as pd

from common.data.notes import GENERATED_MARKER, NOT_RECORDED

__all__ = ["CREDIT_NOTE_FIELDS", "CREDIT_NOTE_TEMPLATES", "credit_notes_for", "make_credit_note"]

CREDIT_NOTE_FIELDS = ("checking_status", "credit_history", "purpose", "savings_status", "employment",
                      "other_parties", "property_magnitude", "other_payment_plans", "housing", "job")  # fmt: skip

# field -> canonical value (as in load_german_credit's table) -> words used in the note (UCI's code descriptions)
_PHRASES: dict[str, dict[str, str]] = {
    "checking_status": {"<0": "overdrawn (below 0 DM)", "0<=X<200": "0 to 200 DM",
                        ">=200": "200 DM or more, or salary assigned for a year", "no checking": "none"},
    "credit_history": {"no credits/all paid": "no credits taken, or all paid back duly",
                       "all paid": "all credits at this bank paid back duly",
                       "existing paid": "existing credits paid back duly so far",
                       "delayed previously": "delays in paying off in the past",
                       "critical/other existing credit": "critical account, or credits at other banks"},
    "purpose": {"new car": "a new car", "used car": "a used car", "furniture/equipment": "furniture or equipment",
                "radio/tv": "a radio or television", "domestic appliance": "a domestic appliance",
                "repairs": "repairs", "education": "education", "vacation": "a vacation",
                "retraining": "retraining", "business": "business", "other": "another purpose"},
    "savings_status": {"<100": "below 100 DM", "100<=X<500": "100 to 500 DM", "500<=X<1000": "500 to 1000 DM",
                       ">=1000": "1000 DM or more", "no known savings": "none known"},
    "employment": {"unemployed": "unemployed", "<1": "under 1 year", "1<=X<4": "1 to 4 years",
                   "4<=X<7": "4 to 7 years", ">=7": "7 years or more"},
    "other_parties": {"none": "none", "co applicant": "a co-applicant", "guarantor": "a guarantor"},
    "property_magnitude": {"real estate": "real estate", "life insurance": "savings agreement or life insurance",
                           "car": "a car or other", "no known property": "none known"},
    "other_payment_plans": {"bank": "at a bank", "stores": "at stores", "none": "none"},
    "housing": {"rent": "rents", "own": "owns the home", "for free": "lives for free"},
    "job": {"unemp/unskilled non res": "unemployed or unskilled, non-resident",
            "unskilled resident": "unskilled, resident", "skilled": "skilled employee or official",
            "high qualif/self emp/mgmt": "management, self-employed or highly qualified"},
}  # fmt: skip

# Each template names every field, so a "not recorded" value always reads as a complete statement.
CREDIT_NOTE_TEMPLATES = (
    "Purpose: {purpose}. Checking account: {checking_status}. Savings: {savings_status}. Credit history: "
    "{credit_history}. Employed: {employment}. Job: {job}. Housing: {housing}. Property: {property_magnitude}. "
    "Other debtors: {other_parties}. Other installment plans: {other_payment_plans}.",
    "Applicant asks for credit for {purpose}; checking account {checking_status}; savings {savings_status}; "
    "history: {credit_history}; employed {employment} as {job}; housing: {housing}; property {property_magnitude}; "
    "other debtors {other_parties}; other installments {other_payment_plans}.",
    "Credit history: {credit_history}. Job: {job}, employed {employment}. Housing: {housing}. Property: "
    "{property_magnitude}. Savings {savings_status}, checking account {checking_status}. Loan for {purpose}. "
    "Co-debtors: {other_parties}. Installment plans elsewhere: {other_payment_plans}.",
    "Loan for {purpose}. Account {checking_status}, savings {savings_status}. Other installment plans "
    "{other_payment_plans}; other debtors {other_parties}. Property {property_magnitude}; housing: {housing}. "
    "Job: {job} ({employment}). History: {credit_history}.",
)


def _phrase(field: str, value: object, applicant_id: int) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return NOT_RECORDED
    if value not in _PHRASES[field]:
        raise ValueError(f"note for applicant {applicant_id}: field '{field}' has value {value!r}; "
                         f"expected one of {list(_PHRASES[field])} or missing")  # fmt: skip
    return _PHRASES[field][value]  # type: ignore[index]


def _template_index(applicant_id: int, seed: int) -> int:
    digest = hashlib.sha256(f"credit:{seed}:{applicant_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(CREDIT_NOTE_TEMPLATES)


def make_credit_note(fields: Mapping[str, object], *, applicant_id: int, seed: int = 0) -> str:
    """Generated note for one applicant.

    Parameters
    ----------
    fields
        A mapping holding at least :data:`CREDIT_NOTE_FIELDS` (canonical values from ``load_german_credit``; None /
        NaN = not recorded). Any other key (amount, age, label, ...) is ignored.
    applicant_id
        The applicant's id; with ``seed`` it picks the template, so a note never changes between runs.
    seed
        Changes which template each applicant gets.

    Returns
    -------
    str
        ``GENERATED_MARKER`` followed by the filled-in template.
    """
    missing = [f for f in CREDIT_NOTE_FIELDS if f not in fields]
    if missing:
        raise KeyError(f"note for applicant {applicant_id}: fields {missing} are missing "
                       f"(need {list(CREDIT_NOTE_FIELDS)})")  # fmt: skip
    words = {f: _phrase(f, fields[f], applicant_id) for f in CREDIT_NOTE_FIELDS}
    template = CREDIT_NOTE_TEMPLATES[_template_index(applicant_id, seed)]
    return f"{GENERATED_MARKER} {template.format(**words)}"


def credit_notes_for(df: pd.DataFrame, *, seed: int = 0) -> tuple[str, ...]:
    """Generated notes for every row of a ``load_german_credit`` table (needs ``id`` and the note fields)."""
    missing = [c for c in ("id", *CREDIT_NOTE_FIELDS) if c not in df.columns]
    if missing:
        raise KeyError(f"credit_notes_for: columns {missing} are missing from the table (columns: {list(df.columns)})")
    records = df[list(CREDIT_NOTE_FIELDS)].to_dict("records")
    return tuple(make_credit_note(record, applicant_id=int(aid), seed=seed)
                 for aid, record in zip(df["id"], records, strict=True))  # fmt: skip
