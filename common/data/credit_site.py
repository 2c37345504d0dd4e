"""One bank of the German Credit federation as a site: its train and test arrays, ready for the models.

Either from the canonical CSV (:func:`load_bank`) or from the bank's own export through its mapping file
(:func:`load_mapped_bank`); both give the same rows, hence the same split and arrays (:func:`split_bank`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from common.data.cleaning import load_mapped_site
from common.data.credit import BANKS, CANONICAL_COLUMNS, CREDIT_TABULAR_FEATURES, load_german_credit
from common.data.credit_notes import credit_notes_for
from common.data.site_split import SiteSplit, split_rows

__all__ = ["german_credit_source", "load_bank", "load_mapped_bank", "mapped_credit_source", "split_bank"]


def split_bank(rows: pd.DataFrame, *, test_fraction: float = 0.3, seed: int = 0) -> tuple[SiteSplit, SiteSplit]:
    """Split one bank's rows of the canonical credit table; standardise with its own training rows only.

    Parameters
    ----------
    rows
        One bank's rows with the columns of ``load_german_credit`` (in the order the split should see them).
    test_fraction
        Share of each class held out for testing (stratified).
    seed
        Seed of the split; the same arguments always give the same split.

    Returns
    -------
    tuple[SiteSplit, SiteSplit]
        ``(train, test)``: tabular = :data:`~common.data.credit.CREDIT_TABULAR_FEATURES`, notes GENERATED from the
        categorical fields (:mod:`common.data.credit_notes`), labels 1 = bad credit risk.
    """
    return split_rows(rows, features=CREDIT_TABULAR_FEATURES, notes=credit_notes_for, test_fraction=test_fraction,
                      seed=seed)  # fmt: skip


def load_bank(
    bank: str, *, csv_path: Path | None = None, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """Load one bank's applicants from the canonical CSV and split them as :func:`split_bank`.

    Parameters
    ----------
    bank
        One of :data:`~common.data.credit.BANKS`.
    csv_path
        The German Credit CSV; defaults to the repository's copy.
    test_fraction, seed
        As for :func:`split_bank`.
    """
    if bank not in BANKS:
        raise ValueError(f"unknown bank {bank!r}; expected one of {list(BANKS)}")
    table = load_german_credit(csv_path)
    return split_bank(table[table["bank"] == bank], test_fraction=test_fraction, seed=seed)


def load_mapped_bank(
    mapping_path: Path, *, bank: str | None = None, test_fraction: float = 0.3, seed: int = 0
) -> tuple[SiteSplit, SiteSplit]:
    """Map a bank's own export onto the credit schema (``data/mappings/*.toml``), then split as :func:`split_bank`.

    Parameters
    ----------
    mapping_path
        The bank's mapping file (its ``[file] path`` names the export).
    bank
        Keep only this bank's rows; needed only when the export holds several banks.
    test_fraction, seed
        As for :func:`split_bank`.

    Raises
    ------
    DataContractError
        If the mapping or the export breaks the data contract (naming file, line and column), the mapping's schema
        is not the credit schema, or the export does not hold exactly one bank.
    """
    table = load_mapped_site(mapping_path, table_name="credit", columns=CANONICAL_COLUMNS, site_column="bank",
                             site=bank)
    return split_bank(table, test_fraction=test_fraction, seed=seed)


def german_credit_source(args: Mapping[str, Any], data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    """Loader of the ``german-credit`` source: ``bank = ...`` rows of ``<data_dir>/german-credit/german_credit.csv``."""
    if "bank" not in args:
        raise ValueError(f"source 'german-credit' needs 'bank' (one of {', '.join(BANKS)})")
    return load_bank(str(args["bank"]), csv_path=data_dir / "german-credit" / "german_credit.csv", seed=seed)


def mapped_credit_source(args: Mapping[str, Any], data_dir: Path, seed: int) -> tuple[SiteSplit, SiteSplit]:
    """Loader of the ``mapped-credit`` data source: ``mapping = ...`` (relative to ``data_dir``), optional ``bank``."""
    if "mapping" not in args:
        raise ValueError("source 'mapped-credit' needs 'mapping' (the bank's mapping TOML, relative to the data "
                         "folder, e.g. 'mappings/car_bank.toml')")  # fmt: skip
    bank = str(args["bank"]) if "bank" in args else None
    return load_mapped_bank(data_dir / str(args["mapping"]), bank=bank, seed=seed)
