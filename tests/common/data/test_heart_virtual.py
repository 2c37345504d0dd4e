"""VIRTUAL sites: the pooled heart patients re-split into 20 sites; every patient in exactly one site."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import load_scenario
from common.data.heart_virtual import load_virtual_site
from common.data.partition import PartitionError
from common.data.sources import get_source, load_site_data

ROOT = Path(__file__).resolve().parents[3]
SPEC = {"kind": "quantity", "alpha": 100.0, "num-sites": 20, "seed": 0, "min-size": 20}


def test_virtual20_scenario_covers_every_patient_once_and_is_labelled_virtual():
    # Prepare
    scenario = load_scenario(ROOT / "simulations" / "scenarios" / "hospitals-virtual20.toml")
    # Execute
    splits = [load_site_data(s.source, s.source_args, data_dir=ROOT / "data", seed=0) for s in scenario.sites]
    # Assert
    assert len(scenario.sites) == 20 and scenario.modalities == ("tabular",)
    assert "VIRTUAL" in scenario.description and "VIRTUAL" in get_source("uci-heart-virtual").note
    ids = np.concatenate([np.concatenate([tr.ids, te.ids]) for tr, te in splits])
    assert ids.size == 920 and np.unique(ids).size == 920  # disjoint, covering the pooled 920 patients
    assert min(len(tr) + len(te) for tr, te in splits) >= 20


def test_part_selects_one_part_deterministically():
    a = load_virtual_site(SPEC | {"part": 3}, seed=0)
    b = load_virtual_site(SPEC | {"part": 3}, seed=0)
    c = load_virtual_site(SPEC | {"part": 4}, seed=0)
    assert np.array_equal(a[0].ids, b[0].ids) and not set(a[0].ids) & set(c[0].ids)


@pytest.mark.parametrize("spec, match", [
    (SPEC, "needs 'part'"),
    (SPEC | {"part": 20}, "out of range: the partition has 20 parts"),
    (SPEC | {"part": "1"}, "must be an integer"),
    (SPEC | {"part": 0, "kind": "nope"}, "kind 'nope' is unknown"),
])
def test_bad_partition_tables_say_why(spec, match):
    with pytest.raises(PartitionError, match=match):
        load_virtual_site(spec, seed=0)


def test_natural_kind_uses_the_hospital_column():
    train, test = load_virtual_site({"kind": "natural", "part": 2}, seed=0)  # sorted: cleveland, hungary, switz...
    assert len(train) + len(test) == 123  # Switzerland
