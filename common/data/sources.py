"""Registry of the data sources a site can hold: name -> schema + loader.

A source turns a site's own files into (train, test) :class:`SiteSplit` rows. The server
needs only the schema (tabular feature names) to build the global model, never the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from common.data.credit import CREDIT_TABULAR_FEATURES
from common.data.credit_site import german_credit_source, mapped_credit_source
from common.data.heart_site import SiteSplit, load_hospital, load_mapped_hospital
from common.data.heart_virtual import load_virtual_site
from common.data.tabular import TABULAR_FEATURES

__all__ = ["DataSource", "SOURCES", "get_source", "load_site_data"]


@dataclass(frozen=True)
class DataSource:
    name: str  # registry key used in scenario / site files ("source = ...")
    tabular_features: tuple[str, ...]  # columns of the tabular modality, in model order
    note: str  # provenance line shown in reports (what is real, what is constructed)
    load: Callable[[Mapping[str, Any], Path, int], tuple[SiteSplit, SiteSplit]]  # (args, data_dir, seed)


def _uci_heart(args: Mapping[str, Any], data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    if "hospital" not in args:
        raise ValueError("source 'uci-heart' needs 'hospital' (one of cleveland, hungary, switzerland, va_long_beach)")
    csv = data_dir / "uci-heart-disease" / "heart_disease_uci.csv"
    return load_hospital(str(args["hospital"]), csv_path=csv, seed=seed)


def _mapped_csv(args: Mapping[str, Any], data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    if "mapping" not in args:
        raise ValueError("source 'mapped-csv' needs 'mapping' (the site's mapping TOML, relative to the data folder, "
                         "e.g. 'mappings/cleveland.toml')")
    hospital = str(args["hospital"]) if "hospital" in args else None
    return load_mapped_hospital(data_dir / str(args["mapping"]), hospital=hospital, seed=seed)


def _uci_heart_virtual(args: Mapping[str, Any], data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    if not isinstance(args.get("partition"), Mapping):
        raise ValueError("source 'uci-heart-virtual' needs 'partition', e.g. { kind = \"quantity\", alpha = 100.0, "
                         "num-sites = 20, seed = 0, part = 3 } (see common/data/heart_virtual.py)")
    csv = data_dir / "uci-heart-disease" / "heart_disease_uci.csv"
    return load_virtual_site(args["partition"], csv_path=csv, seed=seed)


SOURCES: dict[str, DataSource] = {
    "uci-heart": DataSource(
        name="uci-heart",
        tabular_features=TABULAR_FEATURES,
        note="UCI Heart Disease (Janosi, Steinbrunn, Pfisterer, Detrano 1988; CC BY 4.0): real records; "
             "clinical notes are template-GENERATED from each patient's categorical fields.",
        load=_uci_heart,
    ),
    "mapped-csv": DataSource(
        name="mapped-csv",
        tabular_features=TABULAR_FEATURES,
        note="UCI Heart Disease records read from a hospital's own export through its mapping file "
             "(data/mappings; the exports in data/uci-heart-disease/exports are GENERATED from the canonical CSV); "
             "clinical notes are template-GENERATED from each patient's categorical fields.",
        load=_mapped_csv,
    ),
    "uci-heart-virtual": DataSource(
        name="uci-heart-virtual",
        tabular_features=TABULAR_FEATURES,
        note="VIRTUAL sites: the real UCI Heart Disease records of all four hospitals pooled and re-split by a "
             "partitioner (common/data/heart_virtual.py); no such sites exist. Notes are template-GENERATED.",
        load=_uci_heart_virtual,
    ),
    "german-credit": DataSource(
        name="german-credit",
        tabular_features=CREDIT_TABULAR_FEATURES,
        note="German Credit (Hofmann 1994, UCI Statlog; CC BY 4.0): real loan applications, split across three "
             "banks by loan purpose (a documented construction); loan notes are template-GENERATED from each "
             "applicant's categorical fields.",
        load=german_credit_source,
    ),
    "mapped-credit": DataSource(
        name="mapped-credit",
        tabular_features=CREDIT_TABULAR_FEATURES,
        note="German Credit (Hofmann 1994, UCI Statlog; CC BY 4.0) records read from each bank's own export through "
             "its mapping file (data/mappings; the exports in data/german-credit/exports are GENERATED from the "
             "canonical CSV; banks split by loan purpose); loan notes are template-GENERATED from each applicant's "
             "categorical fields.",
        load=mapped_credit_source,
    ),
}


def get_source(name: str) -> DataSource:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; known sources: {sorted(SOURCES)}") from None


def load_site_data(source: str, args: Mapping[str, Any], *, data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    """Load one site's (train, test) rows from its own files."""
    return get_source(source).load(args, data_dir, seed)
