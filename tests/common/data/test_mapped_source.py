"""The schema-driven source: every shipped scenario's sites, and a CONSTRUCTED multimodal dataset that no code knows
(free text, one text file per record, PNG and DICOM image paths, interval codes, a three-class label)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file
from PIL import Image

from common.config import Scenario, SiteSpec, load_scenario
from common.data.partition import PartitionError
from common.data.schema import DataContractError
from common.data.sources import get_source, load_site_data

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "data"
SCENARIOS = ROOT / "simulations" / "scenarios"


def _load(site: SiteSpec, data: Path = DATA):
    return load_site_data(site.source, site.source_args, data_dir=data, modalities=site.modalities)


def test_hospitals_and_their_exports_give_the_same_records_splits_and_inputs() -> None:
    canonical, exports = (load_scenario(SCENARIOS / f"{n}.toml") for n in ("hospitals", "hospitals-exports"))
    for a, b in zip(canonical.sites, exports.sites, strict=True):
        for x, y in zip(_load(a), _load(b), strict=True):
            assert np.array_equal(x.ids.astype(np.int64), y.ids.astype(np.int64))
            np.testing.assert_array_equal(x.tabular, y.tabular)
            np.testing.assert_array_equal(x.tabular_mask, y.tabular_mask)
            assert x.text == y.text and np.array_equal(x.labels, y.labels)


def test_hospital_sizes_and_switzerlands_missing_cholesterol() -> None:
    sites = {s.name: _load(s) for s in load_scenario(SCENARIOS / "hospitals.toml").sites}
    assert {n: (len(tr), len(te)) for n, (tr, te) in sites.items()} == {
        "cleveland": (210, 93), "hungary": (202, 92), "switzerland": (82, 41), "va_long_beach": (132, 68)}
    train, _ = sites["switzerland"]
    assert train.tabular_mask[:, 2].sum() == 0 and np.all(train.tabular[:, 2] == 0)  # chol: never measured
    assert sites["va_long_beach"][0].text is None  # VA holds no notes: none are built


def test_virtual_sites_cover_every_pooled_patient_once() -> None:
    scenario = load_scenario(SCENARIOS / "hospitals-virtual20.toml")
    ids = np.concatenate([np.concatenate([tr.ids, te.ids]) for tr, te in map(_load, scenario.sites)])
    assert len(scenario.sites) == 20 and ids.size == 920 and np.unique(ids).size == 920


@pytest.mark.parametrize("args, error, message", [
    ({}, ValueError, "source 'mapped' needs 'mapping'"),
    ({"mapping": "mappings/uci-heart.toml"}, DataContractError, r"holds hospital\(s\) \['cleveland', 'hungary'"),
    ({"mapping": "mappings/uci-heart.toml", "select": {"ward": "x"}}, DataContractError, "select names 'ward'"),
    ({"mapping": "mappings/uci-heart.toml", "select": {"hospital": "basel"}}, DataContractError, "no row"),
    ({"mapping": "mappings/uci-heart.toml", "partition": {"kind": "quantity", "alpha": 1.0, "num-sites": 4}},
     PartitionError, "needs 'part'"),
    ({"mapping": "mappings/uci-heart.toml", "test-fraction": 1.0}, ValueError, "strictly between 0 and 1"),
])
def test_source_settings_errors_say_what_to_write(args: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        load_site_data("mapped", args, data_dir=DATA)


def test_removed_domain_sources_point_to_the_mapped_source() -> None:
    with pytest.raises(ValueError, match="'uci-heart' was removed: .* source = \"mapped\""):
        get_source("uci-heart")


# ------------------------------------------------------------------ a CONSTRUCTED dataset, configuration only
CONSTRUCTED_SCHEMA = '''
[schema]
name = "wound-clinic"
description = "CONSTRUCTED for tests: a wound clinic with notes and images"

[features.case]
role = "id"
type = "integer"
range = [1, 100000]
required = true
unique = true

[features.age_band]
modality = "tabular"
type = "numeric"
unit = "years"
range = [0, 110]

[features.visits]
modality = "tabular"
type = "integer"
range = [0, 50]

[features.severity]
modality = "tabular"
type = "integer"
range = [1, 3]

[features.wound]
modality = "tabular"
type = "categorical"
vocabulary = ["ulcer", "burn", "surgical"]

[features.note]
modality = "text"
type = "text"

[features.photo]
modality = "image"
type = "image"
size = [16, 16]
channels = 1

[features.outcome]
role = "label"
type = "categorical"
vocabulary = ["healed", "chronic", "amputated"]
required = true
'''

CONSTRUCTED_MAPPING = '''
[mapping]
schema = "schema.toml"

[file]
path = "records.csv"
delimiter = ";"
missing = ["-9"]

[columns.case]

[columns.age]
feature = "age_band"
unit = "years"
interval = "midpoint"

[columns.visits]

[columns.severity]
codes = { low = 1, mid = 2, high = 3 }

[columns.kind]
feature = "wound"
codes = { U = "ulcer", B = "burn", S = "surgical" }

[columns.note_file]
feature = "note"
content = "file"

[columns.image]
feature = "photo"

[columns.result]
feature = "outcome"
codes = { "0" = "healed", "1" = "chronic", "2" = "amputated" }
'''


def _constructed_site(folder: Path) -> Path:
    """A site's folder: schema, mapping, a CSV, one note file per record, PNG and DICOM images (CONSTRUCTED)."""
    (folder / "notes").mkdir(parents=True)
    (folder / "img").mkdir()
    (folder / "schema.toml").write_text(CONSTRUCTED_SCHEMA)
    (folder / "mapping.toml").write_text(CONSTRUCTED_MAPPING)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "img" / "ct.dcm")
    rows = ["case;age;visits;severity;kind;note_file;image;result"]
    for case in range(1, 61):
        label = case % 3
        (folder / "notes" / f"{case}.txt").write_text(f"Case {case}: wound looks {('clean', 'red', 'black')[label]}.")
        Image.fromarray(np.full((20, 24), 80 * label, np.uint8), mode="L").save(folder / "img" / f"{case}.png")
        image = "img/ct.dcm" if case % 10 == 0 else ("-9" if case % 7 == 0 else f"img/{case}.png")
        visits = "-9" if case % 5 == 0 else str(case % 11)
        severity = ("low", "mid", "high")[case % 3]
        rows.append(f"{case};{40 + case % 5 * 10}-{49 + case % 5 * 10};{visits};{severity};{'UBS'[case % 3]};"
                    f"notes/{case}.txt;{image};{label}")
    (folder / "records.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_a_constructed_multimodal_three_class_dataset_trains_from_configuration_alone(tmp_path: Path) -> None:
    from client.train import evaluate
    from common.config.settings import ModelSettings
    from common.factory import build_model

    site = _constructed_site(tmp_path / "site")
    args = {"mapping": "mapping.toml", "split-key": "clinic-secret"}
    train, test = load_site_data("mapped", args, data_dir=site, modalities=("tabular", "text", "image"))
    assert len(train) + len(test) == 60 and train.num_classes == 3
    whole = {int(i): (tr_row, k) for k, split in enumerate((train, test)) for tr_row, i in enumerate(split.ids)}
    row, part = whole[12]
    split = (train, test)[part]
    assert split.tabular[row, 0] == pytest.approx((64.5 - 55) / 55)  # interval '60-69' -> 64.5, public range
    assert split.tabular[row, 2] == pytest.approx((1 - 2) / 1)  # ordinal code 'low' -> 1; range [1, 3]
    assert split.tabular[row, 3:6].tolist() == [1.0, 0.0, 0.0]  # 'U' -> ulcer, one-hot over the vocabulary
    assert split.text[row] == "Case 12: wound looks clean."
    assert split.labels[row] == 0 and split.images.shape[1:] == (1, 16, 16)
    row, part = whole[14]
    assert not (train, test)[part].image_present[row]  # '-9': no image for this record
    row, part = whole[10]
    assert (train, test)[part].tabular_mask[row, 1] == 0  # visits missing (an integer may be missing)

    scenario = Scenario(name="clinic", description="", modalities=("tabular", "text", "image"), sites=(),
                        path=tmp_path / "s.toml", schema=site / "schema.toml")
    model = build_model(ModelSettings(fusion="concat", text_encoder="tiny-bert", image_encoder="small-cnn",
                                      hidden_dim=8), scenario=scenario, seed=0)
    assert model.config.num_classes == 3 and model.config.tabular.in_features == 6
    from client.site_data import _tensors
    from client.train import TensorDictDataset

    data = TensorDictDataset(_tensors(test, site_mods=scenario.modalities, model_mods=scenario.modalities,
                                      text_kind="tiny-bert", cache_dir=None))
    result = evaluate(model, data, device=torch.device("cpu"))
    assert result.num_examples == len(test) and 0.0 <= result.accuracy <= 1.0
    assert np.isfinite(result.loss) and (np.isnan(result.auc) or 0.0 <= result.auc <= 1.0)
