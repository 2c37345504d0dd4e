"""The breast-cancer example: its committed files are what prepare.py writes from scikit-learn's copy of WDBC, and
every clinic's file maps onto the schema with its real values, through configuration only."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import sklearn

from common.data.cleaning import load_mapped

EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "breast-cancer"
SOURCE = Path(sklearn.__file__).parent / "datasets" / "data" / "breast_cancer.csv"


def _prepare():
    spec = importlib.util.spec_from_file_location("breast_cancer_prepare", EXAMPLE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_are_what_prepare_writes() -> None:
    assert _prepare().main(["--check"]) == 0


def test_each_clinic_maps_back_onto_the_real_values() -> None:
    rows = list(csv.reader(SOURCE.read_text().splitlines()))[1:]
    real = np.asarray([[float(v) for v in row[:10]] for row in rows])
    diagnosis = ["malignant" if row[30] == "0" else "benign" for row in rows]
    for clinic, first in (("north", 0), ("south", 1), ("east", 2)):
        table = load_mapped(EXAMPLE / f"{clinic}.toml").table
        ids = np.arange(first, len(rows), 3)  # record i of the source is at clinic i % 3
        assert len(table) == len(ids)
        assert list(table["diagnosis"]) == [diagnosis[i] for i in ids]
        values = table[["radius_mean", "texture_mean", "perimeter_mean", "area_mean", "smoothness_mean",
                        "compactness_mean", "concavity_mean", "concave_points_mean", "symmetry_mean",
                        "fractal_dimension_mean"]].to_numpy(dtype=float)  # fmt: skip
        expected = real[ids].copy()
        if clinic == "south":  # south exports the mean area as a band of 100: its midpoint
            expected[:, 3] = expected[:, 3] // 100 * 100 + 49.5
        recorded = ~np.isnan(values)
        assert 0.97 * recorded.size < recorded.sum() < recorded.size  # about 3% of two columns blanked
        np.testing.assert_allclose(values[recorded], expected[recorded], rtol=1e-12)
