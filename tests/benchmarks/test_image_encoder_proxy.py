"""The public image-encoder proxy (benchmarks/image_encoder_proxy.py): its tasks, its privacy and its output."""

from __future__ import annotations

import numpy as np
import pytest

from tests.benchmarks.scripts import REPO, load_script


def _proxy():
    return load_script("image_encoder_proxy")


def test_the_proxy_mimics_the_median_image_site_and_never_the_construction_pair():
    proxy = _proxy()
    # hospitals-multimodal's image sites declare max-records 250 (cleveland), 250 (hungary), 160 (va_long_beach)
    assert proxy.image_site_records() == 250
    assert all(4 not in pair or 9 not in pair for pair in proxy.PAIRS)  # 4 / 9 is what the sites hold
    generator = proxy.proxy_generator((3, 5))
    assert (generator.classes, generator.flip, generator.salt) == ((3, 5), 0.1, "heart-digits")  # the schema's


def test_training_images_flip_as_the_generator_and_never_meet_the_test_images():
    proxy = _proxy()
    train = proxy._train_set((3, 5), 0, 250, proxy.SCENARIO)
    images, labels = train.tensors["image"].numpy(), train.tensors["label"].numpy()
    assert sorted(np.bincount(labels)) == [125, 125]
    generator = proxy.proxy_generator((3, 5))
    flipped = [generator.digit(f"proxy:3/5:0:{i}", int(y))[0] != generator.classes[y] for i, y in enumerate(labels)]
    assert sum(flipped) == 22  # the hash draws of these 250 ids (~10 %)
    test_images, test_labels = proxy._mnist_test((3, 5))
    assert test_labels.tolist() == [0] * 250 + [1] * 250
    seen = {img.tobytes() for img in test_images.numpy()}
    assert not any(img.tobytes() in seen for img in images)  # train pool and test pool are disjoint


def test_a_tiny_run_reports_every_encoder_within_the_target_epsilon(monkeypatch):
    import client.site_data
    import common.data.sources

    def no_site_data(*args, **kwargs):
        raise AssertionError("the proxy read a site's data")

    monkeypatch.setattr(common.data.sources, "load_site_data", no_site_data)
    monkeypatch.setattr(client.site_data, "load_site", no_site_data)
    proxy = _proxy()
    result = proxy.run_proxy(pairs=((3, 5),), seeds=range(1), n=40, rounds=1)
    assert (result["n"], result["rounds"], result["steps"], result["delta"]) == (40, 1, 2, 0.002)  # ceil(40/32)
    assert result["target_epsilon"] == 4.0
    assert list(result["encoders"]) == ["small-cnn", "pixel-projection"]
    for cells in result["encoders"].values():
        assert sorted(cells) == sorted(["dp_acc", "dp_bacc", "plain_acc", "plain_bacc", "epsilon", "dp_seconds",
                                        "plain_seconds"])
        assert all(len(v) == 1 for v in cells.values())
        for key in ("dp_acc", "dp_bacc", "plain_acc", "plain_bacc"):
            assert 0.0 <= cells[key][0] <= 1.0
        # σ was calibrated for exactly these steps: ε at most the target and close to it (σ within 0.5 %)
        assert 0.95 * 4.0 < cells["epsilon"][0] <= 4.0
    from common.privacy.accountant import calibrate_noise_multiplier

    assert result["sigma"] == calibrate_noise_multiplier(target_epsilon=4.0, delta=0.002, sample_rate=0.5, steps=2,
                                                         accountant="prv")  # the site's own calibration
    proxy.print_table(result, runs=1)  # one run: sd is NaN, still printed


@pytest.mark.parametrize("bad", [0, None])
def test_image_sites_without_a_bound_are_refused(tmp_path, bad):
    scenario = tmp_path / "s.toml"
    schema = REPO / "data" / "schemas" / "heart.toml"
    bound = "" if bad is None else f"privacy = {{ max-records = {bad} }}"
    scenario.write_text(f'[scenario]\nname = "s"\nschema = "{schema}"\n\n[[sites]]\nname = "a"\nsource = "mapped"\n'
                        f'mapping = "m.toml"\nselect = {{ hospital = "x" }}\nmodalities = ["tabular", "image"]\n{bound}\n')
    with pytest.raises(Exception, match="max-records"):
        _proxy().image_site_records(scenario)
