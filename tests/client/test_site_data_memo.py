"""A simulation actor keeps each site's loaded data across messages, while the files it came from are unchanged.

``client/site_data.py``'s per-process memo is keyed by the identity of every file a site's records are read from
(``common.data.sources.site_files``: the mapping, its schema and data file, the site's own image files): a file
rewritten while the process lives is read again. Data: Fashion-MNIST's real 300-image sample written out by
``prepare.py`` (30 images kept); the rewrites below are CONSTRUCTED by the test.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from client.site_data import load_site
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.data.sources import site_files

FASHION = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"


def _prepare(tmp_path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("fashion_prepare_memo", FASHION / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path / "data"
    out = data / "fashion-mnist"
    assert module.main(["--source", str(FASHION / "sample"), "--out", str(out), "--limit", "30"]) == 0
    for name in ("mapping.toml", "schema.toml"):
        shutil.copy(FASHION / name, data / "fashion-mnist" / name)
    scenario = tmp_path / "one.toml"
    scenario.write_text("""[[sites]]
name = "fm-one"
source = "mapped"
mapping = "fashion-mnist/mapping.toml"
modalities = ["tabular", "image"]
privacy = { max-records = 250 }

[scenario]
name = "fashion-one"
schema = "data/fashion-mnist/schema.toml"
data-dir = "data"
""")
    return scenario


def _load(scenario: Path, tmp_path: Path):
    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario), "site-state-root": str(tmp_path / "st")})
    scen = load_scenario(scenario)
    return load_site(resolve_site({"partition-id": 0}, run), model_modalities=scen.modalities,
                     text_encoder="minilm-frozen", schema=scen.schema)


def test_the_same_files_give_the_same_loaded_data_without_reading_again(tmp_path):
    scenario = _prepare(tmp_path)
    first = _load(scenario, tmp_path)
    assert _load(scenario, tmp_path) is first
    files = site_files("mapped", {"mapping": "fashion-mnist/mapping.toml"}, data_dir=tmp_path / "data",
                       modalities=("tabular", "image"))
    names = {p.name for p in files}
    assert {"mapping.toml", "schema.toml", "fashion-mnist.csv"} <= names and len(files) == 3 + 30  # 30 image files


def test_a_data_file_rewritten_while_the_process_lives_is_read_again(tmp_path):
    scenario = _prepare(tmp_path)
    first = _load(scenario, tmp_path)
    csv = tmp_path / "data" / "fashion-mnist" / "fashion-mnist.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-5]) + "\n")  # the last five records removed, in place
    second = _load(scenario, tmp_path)
    assert len(first.train) + len(first.test) == 30 and len(second.train) + len(second.test) == 25


def test_an_image_file_rewritten_while_the_process_lives_is_read_again(tmp_path):
    scenario = _prepare(tmp_path)
    first = _load(scenario, tmp_path)
    folder = tmp_path / "data" / "fashion-mnist" / "images" / "00"
    for png in sorted(folder.glob("*.png")):  # every image inverted in place (same names, same sizes)
        pixels = np.asarray(Image.open(png))
        Image.fromarray(255 - pixels, mode="L").save(png, format="PNG")
    second = _load(scenario, tmp_path)
    assert second is not first
    assert np.allclose(second.train.tensors["image"].numpy(), 1.0 - first.train.tensors["image"].numpy(), atol=1e-6)
    assert second.dataset_id != first.dataset_id  # the ledger sees that other data was spent on


def test_a_later_process_reads_the_decoded_images_from_the_sites_cache_until_one_file_changes(tmp_path, monkeypatch):
    from client import site_data
    from common.data import image_cache

    monkeypatch.setattr(image_cache, "RACY_SECONDS", 0.05)  # the files were written just now (see image_cache)
    scenario = _prepare(tmp_path)
    time.sleep(0.1)
    first = _load(scenario, tmp_path)
    (stored,) = sorted((tmp_path / "st").rglob("images-*.bin"))  # in the site's own cache folder
    site_data._MEMO.clear()  # a later process (a deployed site's next message, or the next simulation run)
    with monkeypatch.context() as m:
        m.setattr(image_cache, "load_images", lambda *a, **k: pytest.fail("decoded although cached"))
        later = _load(scenario, tmp_path)
    assert later is not first and later.dataset_id == first.dataset_id
    assert torch.equal(later.train.tensors["image"], first.train.tensors["image"])
    png = sorted((tmp_path / "data" / "fashion-mnist" / "images" / "00").glob("*.png"))[0]
    Image.fromarray(255 - np.asarray(Image.open(png)), mode="L").save(png, format="PNG")  # one file rewritten
    site_data._MEMO.clear()
    changed = _load(scenario, tmp_path)
    # the rewritten file is within the racy window: decoded, and not cached yet
    assert sorted(stored.parent.glob("images-*.bin")) == [stored]
    diff = [not torch.equal(a, b) for a, b in zip(changed.train.tensors["image"], first.train.tensors["image"])]
    diff += [not torch.equal(a, b) for a, b in zip(changed.test.tensors["image"], first.test.tensors["image"])]
    assert sum(diff) == 1  # exactly the rewritten record's image differs
