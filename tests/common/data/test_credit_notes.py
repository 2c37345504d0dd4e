"""GENERATED loan notes: from the categorical fields only, deterministic, every field stated."""

from __future__ import annotations

import pytest

from common.data.credit import CREDIT_TABULAR_FEATURES, load_german_credit
from common.data.credit_notes import (
    CREDIT_NOTE_FIELDS,
    CREDIT_NOTE_TEMPLATES,
    credit_notes_for,
    make_credit_note,
)
from common.data.notes import GENERATED_MARKER

FIELDS = {"checking_status": "<0", "credit_history": "delayed previously", "purpose": "used car",
          "savings_status": ">=1000", "employment": "unemployed", "other_parties": "guarantor",
          "property_magnitude": "car", "other_payment_plans": "stores", "housing": "for free",
          "job": "unskilled resident"}  # fmt: skip


def test_notes_use_only_categorical_fields_disjoint_from_tabular() -> None:
    assert set(CREDIT_NOTE_FIELDS).isdisjoint(CREDIT_TABULAR_FEATURES)
    base = make_credit_note(FIELDS, applicant_id=7)
    noisy = make_credit_note({**FIELDS, "credit_amount": 99999.0, "age": 19.0, "label": 1}, applicant_id=7)
    assert base == noisy


def test_exact_note_and_determinism() -> None:
    notes = {make_credit_note(FIELDS, applicant_id=i) for i in range(40)}
    assert len(notes) == len(CREDIT_NOTE_TEMPLATES)  # every phrasing is used
    assert make_credit_note(FIELDS, applicant_id=3) == make_credit_note(FIELDS, applicant_id=3)
    text = next(n for n in notes if n.startswith(f"{GENERATED_MARKER} Purpose:"))
    assert text == (f"{GENERATED_MARKER} Purpose: a used car. Checking account: overdrawn (below 0 DM). Savings: "
                    "1000 DM or more. Credit history: delays in paying off in the past. Employed: unemployed. Job: "
                    "unskilled, resident. Housing: lives for free. Property: a car or other. Other debtors: a "
                    "guarantor. Other installment plans: at stores.")  # fmt: skip


def test_missing_field_reads_not_recorded_and_unknown_value_fails() -> None:
    note = make_credit_note({**FIELDS, "housing": None}, applicant_id=11)
    assert "not recorded" in note
    with pytest.raises(ValueError, match=r"applicant 11: field 'housing' has value 'castle'"):
        make_credit_note({**FIELDS, "housing": "castle"}, applicant_id=11)
    with pytest.raises(KeyError, match=r"fields \['job'\] are missing"):
        make_credit_note({k: v for k, v in FIELDS.items() if k != "job"}, applicant_id=11)


def test_every_canonical_row_gets_a_generated_note() -> None:
    table = load_german_credit()
    notes = credit_notes_for(table)
    assert len(notes) == 1000 and all(n.startswith(GENERATED_MARKER) for n in notes)
    assert "not recorded" not in "".join(notes)
    assert credit_notes_for(table, seed=1) != notes
