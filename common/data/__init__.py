"""Data: the contract (a schema, each site's mapping of its own files onto it, cleaning with a report) and the model
inputs built from the schema alone (public normalisation, one-hot vocabularies, labels, text and images, generators
of constructed features, the keyed-hash split). No module here knows a domain: the shipped examples (UCI Heart
Disease, German Credit) are schemas, mappings and a data-preparation step under ``data/``, like a user's own data.

Knows nothing of Flower or of the models; everything here is plain pandas / numpy.
"""

from common.data.cleaning import MappedTable, apply_mapping, load_mapped
from common.data.cleaning_report import CleaningReport, ColumnReport
from common.data.features import encode_labels, encode_tabular, label_classes, tabular_columns, tabular_width
from common.data.mapping import SiteMapping, load_mapping
from common.data.schema import DataContractError, FeatureSpec, Schema, load_schema
from common.data.site_split import SiteSplit, build_split
from common.data.sources import load_site_data, site_schema
from common.data.split import keyed_split

__all__ = [
    "CleaningReport", "ColumnReport", "DataContractError", "FeatureSpec", "MappedTable", "Schema", "SiteMapping",
    "SiteSplit", "apply_mapping", "build_split", "encode_labels", "encode_tabular", "keyed_split", "label_classes",
    "load_mapped", "load_mapping", "load_schema", "load_site_data", "site_schema", "tabular_columns", "tabular_width",
]  # fmt: skip
