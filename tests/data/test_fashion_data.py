"""Fashion-MNIST as configuration (the 1000-site scale benchmark's data): prepare.py on a real 300-image sample,
the virtual sites read through the mapped source with a Dirichlet partition, and the committed scenario current."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.data.sources import load_site_data

HERE = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"
SCENARIO = HERE.parents[1] / "simulations" / "scenarios" / "fashion1000.toml"


def _prepare():
    spec = importlib.util.spec_from_file_location("fashion_prepare", HERE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_1000_site_scenario_is_what_prepare_writes():
    assert SCENARIO.read_text() == _prepare().scenario_text(1000)


def test_prepare_writes_the_real_images_and_their_derived_numbers(tmp_path):
    prep = _prepare()
    out = tmp_path / "fashion-mnist"
    assert prep.main(["--source", str(HERE / "sample"), "--out", str(out)]) == 0
    lines = (out / "fashion-mnist.csv").read_text().splitlines()
    assert lines[0] == "id,label,image,ink,coverage,height,width" and len(lines) == 301
    # the first training image of Fashion-MNIST is an ankle boot (label 9)
    assert lines[1].startswith("1,ankle boot,fashion-mnist/images/00/00001.png,")
    from PIL import Image

    images = prep.read_idx(HERE / "sample" / "train-images-idx3-ubyte.gz")
    assert np.array_equal(np.asarray(Image.open(out / "images" / "00" / "00001.png")), images[0])


def test_a_virtual_site_reads_its_dirichlet_part_of_the_pooled_images(tmp_path):
    out = tmp_path / "fashion-mnist"
    assert _prepare().main(["--source", str(HERE / "sample"), "--out", str(out)]) == 0
    for name in ("mapping.toml", "schema.toml"):
        shutil.copy(HERE / name, out / name)
    part = {"kind": "dirichlet", "alpha": 0.5, "num-sites": 10, "seed": 0, "min-size": 5}
    sizes, seen = [], set()
    for i in range(10):
        train, test = load_site_data("mapped", {"mapping": "fashion-mnist/mapping.toml", "partition": part | {"part": i}},
                                     data_dir=tmp_path, modalities=("tabular", "image"))
        assert train.images is not None and train.images.shape[1:] == (1, 28, 28)
        sizes.append(len(train) + len(test))
        ids = set(train.ids.tolist()) | set(test.ids.tolist())
        assert not ids & seen  # the parts are disjoint
        seen |= ids
    assert sum(sizes) == 300 and seen == set(range(1, 301))


def test_prepare_names_the_missing_package(tmp_path, capsys):
    assert _prepare().main(["--source", str(tmp_path)]) == 1
    assert "dataset-fashion-mnist" in capsys.readouterr().err
