"""The "mapped-credit" and "german-credit" sources: the banks scenario's sites, their splits and arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import ModelSettings, load_scenario
from common.data.credit import BANKS, CREDIT_TABULAR_FEATURES, load_german_credit
from common.data.credit_site import load_mapped_bank, split_bank
from common.data.notes import GENERATED_MARKER
from common.data.schema import DataContractError
from common.data.sources import get_source, load_site_data
from common.data.tabular import fit_normalizer, transform
from common.factory import fusion_config

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data"
SCENARIO = ROOT / "simulations" / "scenarios" / "banks.toml"
#: bank -> (train rows, train bad, test rows, test bad) for test_fraction 0.3 (any seed: sizes are fixed per class)
SPLIT_SIZES = {"car_bank": (236, 74, 101, 32), "retail_bank": (346, 92, 149, 40), "business_bank": (117, 43, 51, 19)}


def _same(a, b) -> None:
    for field in ("ids", "labels", "tabular", "tabular_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert getattr(a, field).dtype == getattr(b, field).dtype
    assert a.notes == b.notes


def test_scenario_has_three_banks_from_their_own_exports() -> None:
    scenario = load_scenario(SCENARIO)
    assert [s.name for s in scenario.sites] == list(BANKS)
    assert {s.source for s in scenario.sites} == {"mapped-credit"}
    assert [s.source_args for s in scenario.sites] == [{"mapping": f"mappings/{b}.toml"} for b in BANKS]
    assert scenario.modalities == ("tabular", "text")
    assert "GENERATED" in scenario.description.upper()


def test_factory_builds_one_model_over_the_credit_schema() -> None:
    model = ModelSettings(fusion="attention", text_encoder="minilm-frozen", image_encoder="small-cnn", hidden_dim=64)
    config = fusion_config(model, scenario=load_scenario(SCENARIO))
    assert config.tabular.in_features == len(CREDIT_TABULAR_FEATURES) == 8  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [0, 5])
def test_each_mapped_bank_equals_the_canonical_bank(seed: int) -> None:
    for spec in load_scenario(SCENARIO).sites:
        mapped = load_site_data(spec.source, spec.source_args, data_dir=DATA, seed=seed)
        direct = load_site_data("german-credit", {"bank": spec.name}, data_dir=DATA, seed=seed)
        for part_mapped, part_direct in zip(mapped, direct, strict=True):
            _same(part_mapped, part_direct)


def test_stratified_split_sizes_and_disjoint_ids() -> None:
    for bank, (n_train, bad_train, n_test, bad_test) in SPLIT_SIZES.items():
        train, test = load_site_data("german-credit", {"bank": bank}, data_dir=DATA, seed=0)
        assert (len(train), int(train.labels.sum()), len(test), int(test.labels.sum())) == (
            n_train, bad_train, n_test, bad_test)  # fmt: skip
        assert not set(train.ids) & set(test.ids)
        assert train.tabular.shape == (n_train, 8) and train.tabular.dtype == np.float32
        assert train.tabular_mask.min() == 1.0  # the data has no missing values
        assert all(note.startswith(GENERATED_MARKER) for note in train.notes + test.notes)
    a, _ = load_site_data("german-credit", {"bank": "car_bank"}, data_dir=DATA, seed=0)
    b, _ = load_site_data("german-credit", {"bank": "car_bank"}, data_dir=DATA, seed=1)
    assert not np.array_equal(a.ids, b.ids)  # the seed moves the split


def test_normalisation_is_fitted_on_training_rows_only() -> None:
    table = load_german_credit()
    rows = table[table["bank"] == "business_bank"]
    train, test = split_bank(rows, seed=2)
    train_rows = rows.set_index("id").loc[train.ids].reset_index()
    test_rows = rows.set_index("id").loc[test.ids].reset_index()
    stats = fit_normalizer(train_rows, features=CREDIT_TABULAR_FEATURES)
    np.testing.assert_array_equal(transform(test_rows, stats)[0], test.tabular)
    np.testing.assert_allclose(train.tabular.mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(test.tabular.mean(axis=0)).max() > 1e-3  # test rows were not used for the statistics
    # changing a test row's values leaves the training arrays unchanged
    shifted = rows.copy()
    shifted.loc[shifted["id"].isin(test.ids), "credit_amount"] *= 10
    _same(split_bank(shifted, seed=2)[0], train)


def test_sources_are_registered_with_the_credit_features() -> None:
    for name in ("german-credit", "mapped-credit"):
        source = get_source(name)
        assert source.tabular_features == CREDIT_TABULAR_FEATURES
        assert "GENERATED" in source.note and "Hofmann 1994" in source.note and "CC BY 4.0" in source.note


def test_source_arguments_and_bank_filter_errors() -> None:
    with pytest.raises(ValueError, match=r"source 'mapped-credit' needs 'mapping'"):
        load_site_data("mapped-credit", {}, data_dir=DATA, seed=0)
    with pytest.raises(ValueError, match=r"source 'german-credit' needs 'bank' \(one of car_bank, retail_bank"):
        load_site_data("german-credit", {}, data_dir=DATA, seed=0)
    with pytest.raises(ValueError, match=r"unknown bank 'savings_bank'"):
        load_site_data("german-credit", {"bank": "savings_bank"}, data_dir=DATA, seed=0)
    mapping = DATA / "mappings" / "car_bank.toml"
    with pytest.raises(DataContractError, match=r"car_bank\.data: the mapped export holds bank\(s\) \[\]; expected "
                                                r"exactly one bank"):  # fmt: skip
        load_mapped_bank(mapping, bank="retail_bank")
    with pytest.raises(DataContractError, match=r"schema 'heart' lacks the credit table's column\(s\)"):
        load_mapped_bank(DATA / "mappings" / "cleveland.toml")
