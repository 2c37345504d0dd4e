"""One hospital of the heart-disease data as a federated site: its train and test arrays, ready for the models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.data.cleaning import load_mapped
from common.data.heart import CANONICAL_COLUMNS, DEFAULT_CSV_PATH, HOSPITAL_DISPLAY_NAMES, HOSPITALS, load_heart_disease
from common.data.notes import notes_for
from common.data.schema import DataContractError
from common.data.split import stratified_split
from common.data.tabular import NormalizerStats, fit_normalizer, transform

__all__ = ["SiteSplit", "load_hospital", "load_mapped_hospital", "split_site"]


@dataclass(frozen=True)
class SiteSplit:
    """The rows of one site's train or test set; row i of every field is the same patient."""

    ids: np.ndarray  # int64 (n,), patient ids from the CSV
    labels: np.ndarray  # int64 (n,), 1 = heart disease (num > 0), 0 = none
    tabular: np.ndarray  # float32 (n, F), standardised TABULAR_FEATURES, 0 where missing
    tabular_mask: np.ndarray  # float32 (n, F), 1 = observed, 0 = missing
    notes: tuple[str, ...]  # n generated notes (categorical fields only; see common.data.notes)

    def __post_init__(self) -> None:
        n = len(self.ids)
        lengths = {
            "labels": len(self.labels),
            "tabular": len(self.tabular),
            "tabular_mask": len(self.tabular_mask),
            "notes": len(self.notes),
        }
        wrong = {name: length for name, length in lengths.items() if length != n}
        if wrong:
            raise ValueError(f"SiteSplit: ids has {n} rows but {wrong}")
        if self.tabular.shape != self.tabular_mask.shape:
            raise ValueError(f"SiteSplit: tabular {self.tabular.shape} and mask {self.tabular_mask.shape} differ")

    def __len__(self) -> int:
        return len(self.ids)


def _site_split(rows: pd.DataFrame, stats: NormalizerStats) -> SiteSplit:
    tabular, mask = transform(rows, stats)
    return SiteSplit(
        ids=rows["id"].to_numpy(dtype=np.int64),
        labels=rows["label"].to_numpy(dtype=np.int64),
        tabular=tabular,
        tabular_mask=mask,
        notes=notes_for(rows),
    )


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
    rows = rows.reset_index(drop=True)
    train_idx, test_idx = stratified_split(rows["label"].to_numpy(), test_fraction=test_fraction, seed=seed)
    train_rows, test_rows = rows.iloc[train_idx], rows.iloc[test_idx]
    stats = fit_normalizer(train_rows)  # this site's training rows only
    return _site_split(train_rows, stats), _site_split(test_rows, stats)


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
    mapped = load_mapped(mapping_path)
    table = mapped.table
    lacking = [c for c in CANONICAL_COLUMNS if c not in table.columns]
    if lacking:
        raise DataContractError(f"schema '{mapped.mapping.schema.name}' lacks the heart table's column(s) {lacking}",
                                file=mapping_path, expected="a mapping onto data/schemas/heart.toml")  # fmt: skip
    if hospital is not None:
        table = table[table["hospital"] == hospital]
    held = sorted(set(table["hospital"]))
    if len(held) != 1:
        raise DataContractError(
            f"the mapped export holds hospital(s) {held}", file=mapped.mapping.file.path, mapping=mapping_path,
            expected="exactly one hospital (name it with 'hospital')",
        )
    return split_site(table[list(CANONICAL_COLUMNS)], test_fraction=test_fraction, seed=seed)
