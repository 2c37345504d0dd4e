"""One hospital of the heart-disease data as a federated site: its train and test arrays, ready for the models.

:class:`SiteSplit` and the split itself are domain-agnostic (:mod:`common.data.site_split`); they are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from common.data.cleaning import load_mapped_site
from common.data.heart import CANONICAL_COLUMNS, DEFAULT_CSV_PATH, HOSPITAL_DISPLAY_NAMES, HOSPITALS, load_heart_disease
from common.data.notes import notes_for
from common.data.site_split import SiteSplit, split_rows
from common.data.tabular import TABULAR_FEATURES

__all__ = ["SiteSplit", "load_hospital", "load_mapped_hospital", "split_site"]


def load_hospital(
    hospital: str, *, csv_path: Path | None = None, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """Load one hospital's patients, split them, and standardise with statistics of its own training rows.

    Parameters
    ----------
    hospital
        A slug from ``HOSPITALS`` (e.g. ``"va_long_beach"``).
    csv_path
        The heart-disease CSV; defaults to the repository's copy (see ``load_heart_disease``).
    test_fraction
        Share of each class held out for testing (stratified, see ``stratified_split``).
    seed
        Seed of the split; the same arguments always give the same split.

    Returns
    -------
    tuple[SiteSplit, SiteSplit]
        ``(train, test)``, rows in id order. Test rows never influence the normalisation.
    """
    if hospital not in HOSPITALS:
        by_name = {name.lower(): slug for slug, name in HOSPITAL_DISPLAY_NAMES.items()}
        hint = f" (did you mean '{by_name[hospital.lower()]}'?)" if hospital.lower() in by_name else ""
        raise ValueError(f"unknown hospital {hospital!r}{hint}; expected one of {list(HOSPITALS)}")
    table = load_heart_disease(csv_path)
    rows = table[table["hospital"] == hospital].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"{csv_path or DEFAULT_CSV_PATH} has no rows for hospital {hospital!r}")
    return split_site(rows, test_fraction=test_fraction, seed=seed)


def split_site(rows: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[SiteSplit, SiteSplit]:
    """Split one site's rows of the canonical heart table, and standardise with its own training rows only.

    Parameters
    ----------
    rows
        One site's rows with the columns of ``load_heart_disease`` (in the order the split should see them).
    test_fraction, seed
        As for :func:`load_hospital`.

    Returns
    -------
    tuple[SiteSplit, SiteSplit]
        ``(train, test)``; test rows never influence the normalisation.
    """
    return split_rows(rows, features=TABULAR_FEATURES, notes=notes_for, test_fraction=test_fraction, seed=seed)


def load_mapped_hospital(
    mapping_path: Path, *, hospital: str | None = None, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """Map a hospital's own export onto the heart schema (``data/mappings/*.toml``), then split as :func:`split_site`.

    Parameters
    ----------
    mapping_path
        The site's mapping file (its ``[file] path`` names the export; see ``common.data.mapping``).
    hospital
        Keep only this hospital's rows; needed only when the export holds several hospitals.
    test_fraction, seed
        As for :func:`load_hospital`.

    Raises
    ------
    DataContractError
        If the mapping or the export breaks the data contract (the message names file, line and column), or the
        mapping's schema is not the heart schema.
    """
    table = load_mapped_site(mapping_path, table_name="heart", columns=CANONICAL_COLUMNS, site_column="hospital",
                             site=hospital)
    return split_site(table, test_fraction=test_fraction, seed=seed)
