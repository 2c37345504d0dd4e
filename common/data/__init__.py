"""Data: the UCI heart-disease source, its corrections, generated notes, tabular features and per-site splits;
the German Credit source of the bank federation (:mod:`common.data.credit`, ``credit_site``, ``credit_notes``);
the data contract (schema, site mappings, cleaning with a report) that maps a site's own files onto the schema.

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
from common.data.cleaning import MappedTable, apply_mapping, load_mapped
from common.data.cleaning_report import CleaningReport, ColumnReport
from common.data.credit import BANKS, CREDIT_TABULAR_FEATURES, CreditDataError, load_german_credit
from common.data.credit_site import load_bank, load_mapped_bank, split_bank
from common.data.heart_site import SiteSplit, load_hospital, load_mapped_hospital, split_site
from common.data.mapping import SiteMapping, load_mapping
from common.data.notes import GENERATED_MARKER, NOTE_FIELDS, make_note, notes_for
from common.data.schema import DataContractError, FeatureSpec, Schema, load_schema
from common.data.site_split import split_rows
from common.data.split import stratified_split
from common.data.tabular import TABULAR_FEATURES, NormalizerStats, fit_normalizer, transform

__all__ = [
    "BANKS",
    "CREDIT_TABULAR_FEATURES",
    "CreditDataError",
    "load_bank",
    "load_german_credit",
    "load_mapped_bank",
    "split_bank",
    "split_rows",
    "CANONICAL_COLUMNS",
    "DEFAULT_CSV_PATH",
    "GENERATED_MARKER",
    "HOSPITALS",
    "HOSPITAL_DISPLAY_NAMES",
    "NOTE_FIELDS",
    "TABULAR_FEATURES",
    "CleaningReport",
    "ColumnReport",
    "DataContractError",
    "FeatureSpec",
    "HeartDataError",
    "MappedTable",
    "NormalizerStats",
    "Schema",
    "SiteMapping",
    "SiteSplit",
    "apply_mapping",
    "fit_normalizer",
    "load_heart_disease",
    "load_hospital",
    "load_mapped",
    "load_mapped_hospital",
    "load_mapping",
    "load_schema",
    "make_note",
    "notes_for",
    "split_site",
    "stratified_split",
    "transform",
]
