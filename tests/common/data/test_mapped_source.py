"""The "mapped-csv" source: the hospitals scenario from GENERATED exports through mapping files alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import load_scenario
from common.data.heart import HOSPITALS
from common.data.heart_site import load_hospital, load_mapped_hospital, split_site
from common.data.schema import DataContractError
from common.data.sources import get_source, load_site_data

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data"
SCENARIO = ROOT / "simulations" / "scenarios" / "hospitals-exports.toml"


def _same(a, b) -> None:
    for field in ("ids", "labels", "tabular", "tabular_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert getattr(a, field).dtype == getattr(b, field).dtype
    assert a.notes == b.notes


def test_scenario_maps_all_four_hospitals_through_mapping_files() -> None:
    scenario = load_scenario(SCENARIO)
    assert [s.name for s in scenario.sites] == list(HOSPITALS)
    assert {s.source for s in scenario.sites} == {"mapped-csv"}
    assert scenario.sites[1].source_args == {"mapping": "mappings/hungary-variant.toml"}  # Hungary from the variant
    assert scenario.modalities == load_scenario(SCENARIO.with_name("hospitals.toml")).modalities


@pytest.mark.parametrize("seed", [0, 3])
def test_each_site_split_equals_the_uci_heart_one(seed: int) -> None:
    for spec in load_scenario(SCENARIO).sites:
        mapped = load_site_data(spec.source, spec.source_args, data_dir=DATA, seed=seed)
        direct = load_site_data("uci-heart", {"hospital": spec.name}, data_dir=DATA, seed=seed)
        for part_mapped, part_direct in zip(mapped, direct, strict=True):
            _same(part_mapped, part_direct)


def test_load_hospital_is_split_site_of_the_canonical_rows() -> None:
    from common.data.heart import load_heart_disease

    table = load_heart_disease()
    rows = table[table["hospital"] == "switzerland"]
    for a, b in zip(split_site(rows, seed=1), load_hospital("switzerland", seed=1), strict=True):
        _same(a, b)


def test_source_is_registered_with_the_heart_features() -> None:
    source = get_source("mapped-csv")
    assert source.tabular_features == get_source("uci-heart").tabular_features
    assert "GENERATED" in source.note


def test_source_needs_a_mapping() -> None:
    with pytest.raises(ValueError, match=r"source 'mapped-csv' needs 'mapping'"):
        load_site_data("mapped-csv", {}, data_dir=DATA, seed=0)


def test_hospital_filter_and_its_errors() -> None:
    mapping = DATA / "mappings" / "cleveland.toml"
    with pytest.raises(DataContractError, match=r"processed\.cleveland\.data: the mapped export holds hospital\(s\) "
                                                r"\[\]; expected exactly one hospital"):  # fmt: skip
        load_mapped_hospital(mapping, hospital="hungary")
    train, test = load_mapped_hospital(mapping, hospital="cleveland")
    assert len(train) + len(test) == 303
