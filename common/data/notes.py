"""GENERATED short clinical notes for the text modality. They are NOT real clinical text.

The UCI heart-disease data has no free text. To exercise a text branch, each patient gets a note filled in from
templates, using ONLY the categorical fields :data:`NOTE_FIELDS` (sex, chest-pain type, resting ECG, exercise angina,
ST slope, thallium result) and never age or any column of ``TABULAR_FEATURES``, so text and tabular inputs are
disjoint. Several phrasings exist; the one used is chosen deterministically from the patient id (and a seed).
A field that was not recorded reads "not recorded". Every note starts with :data:`GENERATED_MARKER`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import pandas as pd

__all__ = ["GENERATED_MARKER", "NOTE_FIELDS", "NOTE_TEMPLATES", "NOT_RECORDED", "make_note", "notes_for"]

GENERATED_MARKER = "Generated note:"
NOT_RECORDED = "not recorded"
NOTE_FIELDS = ("sex", "cp", "restecg", "exang", "slope", "thal")

# field -> canonical value (as in load_heart_disease's table) -> words used in the note
_PHRASES: dict[str, dict[object, str]] = {
    "sex": {"male": "male", "female": "female"},
    "cp": {
        "typical angina": "typical angina",
        "atypical angina": "atypical angina",
        "non-anginal": "non-anginal pain",
        "asymptomatic": "asymptomatic",
    },
    "restecg": {"normal": "normal", "st-t abnormality": "ST-T abnormality", "lv hypertrophy": "LV hypertrophy"},
    "exang": {True: "yes", False: "no"},
    "slope": {"upsloping": "upsloping", "flat": "flat", "downsloping": "downsloping"},
    "thal": {"normal": "normal", "fixed defect": "fixed defect", "reversable defect": "reversible defect"},
}

# Each template names every field, so a "not recorded" value always reads as a complete statement.
NOTE_TEMPLATES = (
    "Sex: {sex}. Chest pain: {cp}. Resting ECG: {restecg}. Exercise angina: {exang}. ST slope: {slope}. "
    "Thallium: {thal}.",
    "Patient sex {sex}; chest pain {cp}; resting ECG {restecg}; angina on exercise {exang}; "
    "peak ST slope {slope}; thallium scan {thal}.",
    "Thallium scan: {thal}. Exercise test: angina {exang}, ST slope {slope}. ECG at rest: {restecg}. "
    "Chest pain: {cp}. Sex: {sex}.",
    "Chest pain type {cp}. Rest ECG {restecg}. Exercise-induced angina {exang}. ST segment slope {slope}. "
    "Thallium result {thal}. Sex {sex}.",
)


def _phrase(field: str, value: object, patient_id: int) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return NOT_RECORDED
    if value not in _PHRASES[field]:
        raise ValueError(
            f"note for patient {patient_id}: field '{field}' has value {value!r}; "
            f"expected one of {list(_PHRASES[field])} or missing"
        )
    return _PHRASES[field][value]


def _template_index(patient_id: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % len(NOTE_TEMPLATES)


def make_note(fields: Mapping[str, object], *, patient_id: int, seed: int = 0) -> str:
    """Generated note for one patient.

    Parameters
    ----------
    fields
        A mapping holding at least :data:`NOTE_FIELDS` (canonical values from ``load_heart_disease``; None / NaN /
        pd.NA = not recorded). Any other key (age, cholesterol, label, ...) is ignored.
    patient_id
        The patient's id; with ``seed`` it picks the template, so a patient's note never changes between runs.
    seed
        Changes which template each patient gets.

    Returns
    -------
    str
        ``GENERATED_MARKER`` followed by the filled-in template.
    """
    missing = [f for f in NOTE_FIELDS if f not in fields]
    if missing:
        raise KeyError(f"note for patient {patient_id}: fields {missing} are missing (need {list(NOTE_FIELDS)})")
    words = {f: _phrase(f, fields[f], patient_id) for f in NOTE_FIELDS}
    return f"{GENERATED_MARKER} {NOTE_TEMPLATES[_template_index(patient_id, seed)].format(**words)}"


def notes_for(df: pd.DataFrame, *, seed: int = 0) -> tuple[str, ...]:
    """Generated notes for every row of a ``load_heart_disease`` table (needs ``id`` and :data:`NOTE_FIELDS`)."""
    missing = [c for c in ("id", *NOTE_FIELDS) if c not in df.columns]
    if missing:
        raise KeyError(f"notes_for: columns {missing} are missing from the table (columns: {list(df.columns)})")
    records = df[list(NOTE_FIELDS)].to_dict("records")
    return tuple(
        make_note(record, patient_id=int(pid), seed=seed) for pid, record in zip(df["id"], records, strict=True)
    )
