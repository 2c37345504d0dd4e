"""Data: the UCI heart-disease source, its corrections, generated notes, tabular features and per-site splits.

Knows nothing of Flower or of the models; everything here is plain pandas / numpy.
"""

from common.data.heart import (
    CANONICAL_COLUMNS,
    DEFAULT_CSV_PATH,
    HOSPITAL_DISPLAY_NAMES,
    HOSPITALS,
    HeartDataError,
    load_heart_disease,
)
from common.data.heart_site import SiteSplit, load_hospital
from common.data.notes import GENERATED_MARKER, NOTE_FIELDS, make_note, notes_for
from common.data.split import stratified_split
from common.data.tabular import TABULAR_FEATURES, NormalizerStats, fit_normalizer, transform

__all__ = [
    "CANONICAL_COLUMNS",
    "DEFAULT_CSV_PATH",
    "GENERATED_MARKER",
    "HOSPITALS",
    "HOSPITAL_DISPLAY_NAMES",
    "NOTE_FIELDS",
    "TABULAR_FEATURES",
    "HeartDataError",
    "NormalizerStats",
    "SiteSplit",
    "fit_normalizer",
    "load_heart_disease",
    "load_hospital",
    "make_note",
    "notes_for",
    "stratified_split",
    "transform",
]
