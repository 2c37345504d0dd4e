"""Per-message time split (client/timing.py) and the feature-cache site setting."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from client.site_data import load_site
from client.timing import Stopwatch, process_age_seconds
from common.config import ConfigError, app_defaults, load_site_file, parse_run_config

DATA = Path(__file__).resolve().parents[2] / "data"


def test_process_age_counts_from_the_process_start_not_from_the_import():
    code = ("import time; time.sleep(0.6); from client.timing import process_age_seconds as a; "
            "print(a())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    age = float(out.strip())
    assert age >= 0.55  # the sleep before the import is included (clock ticks are 10 ms)
    this = process_age_seconds()
    assert this is not None and this > age  # pytest has been running longer than that child


def test_stopwatch_adds_up_its_blocks_and_counts_a_return_from_inside():
    watch = Stopwatch()

    def inside() -> int:
        with watch:
            time.sleep(0.05)
            return 7

    assert inside() == 7 and watch.seconds >= 0.05
    first = watch.seconds
    with watch:
        time.sleep(0.05)
    assert watch.seconds >= first + 0.05
    with pytest.raises(ValueError):
        with watch:
            raise ValueError("still timed")
    assert watch.seconds >= first + 0.05


def _site_file(tmp_path: Path, extra: str = "", hospital: str = "cleveland") -> Path:
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "{hospital}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "{hospital}" }}\n'
                 f'modalities = ["tabular", "text"]\nstate-dir = "{tmp_path / "state"}"\n'
                 f'data-dir = "{DATA}"\n{extra}')
    return f


def test_feature_cache_is_on_by_default_and_must_be_a_boolean(tmp_path):
    run = parse_run_config(app_defaults())
    assert load_site_file(_site_file(tmp_path), run=run).feature_cache is True
    assert load_site_file(_site_file(tmp_path, "feature-cache = false\n"), run=run).feature_cache is False
    with pytest.raises(ConfigError, match=r"site.toml \[site\]: 'feature-cache' must be true or false, got 'no'"):
        load_site_file(_site_file(tmp_path, 'feature-cache = "no"\n'), run=run)


def test_feature_cache_off_writes_nothing_derived_and_gives_the_same_features(tmp_path):
    run = parse_run_config(app_defaults())
    # Switzerland: the fewest notes (123) for MiniLM to embed twice; what is checked does not depend on the site
    site = load_site_file(_site_file(tmp_path, hospital="switzerland"), run=run)
    kw = dict(model_modalities=("tabular", "text"), text_encoder="minilm-frozen")
    cached = load_site(site, **kw)
    assert [p.name for p in (site.state_dir / "cache").glob("text-*")] == ["text-minilm-frozen.safetensors"]
    other = tmp_path / "other-state"
    uncached = load_site(dataclasses.replace(site, state_dir=other, feature_cache=False), **kw)
    assert not other.exists()  # nothing derived from the notes is written
    for part in ("train", "test"):
        a, b = getattr(cached, part).tensors, getattr(uncached, part).tensors
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), part


def test_text_features_are_cached_per_record(tmp_path):
    """One embedding per distinct note in the store: adding a note computes only that note, and every other note's
    row is the one cached before (a record's features never depend on the other records)."""
    from safetensors.torch import load

    from client.site_data import text_features

    notes = ("Generated note: Sex: male.", "Generated note: Sex: female.", "Generated note: Sex: male.")
    first = text_features(notes, kind="minilm-frozen", cache_dir=tmp_path)
    store = tmp_path / "text-minilm-frozen.safetensors"
    assert len(load(store.read_bytes())) == 2  # two distinct notes
    assert torch.equal(first["text"][0], first["text"][2])
    more = text_features((notes[1], "Generated note: Sex: not recorded."), kind="minilm-frozen", cache_dir=tmp_path)
    assert len(load(store.read_bytes())) == 3 and torch.equal(more["text"][0], first["text"][1])
    assert torch.equal(text_features(notes, kind="minilm-frozen", cache_dir=tmp_path)["text"], first["text"])


def test_a_message_process_imports_opacus_only_when_it_needs_it():
    """Lazy imports: loading the ClientApp and evaluating an attention model never imports Opacus (~2-3 s),
    nor the audit's dp-accounting (scipy, ~1 s)."""
    code = ("import sys, client.app\n"
            "assert 'dp_accounting' not in sys.modules and 'scipy' not in sys.modules\n"
            "from common.models.config import FusionConfig, TabularEncoderConfig\n"
            "from common.models.model import FusionModel\n"
            "cfg = dict(modalities=('tabular',), tabular=TabularEncoderConfig(in_features=4))\n"
            "FusionModel(FusionConfig(fusion='attention', **cfg))\n"
            "print('opacus' in sys.modules)\n"
            "FusionModel(FusionConfig(fusion='late', **cfg))\n"
            "from opacus.grad_sample.grad_sample_module import GradSampleModule\n"
            "from common.models.fusion import LateFusion, compute_late_fusion_grad_sample\n"
            "print(GradSampleModule.GRAD_SAMPLERS[LateFusion] is compute_late_fusion_grad_sample)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out == ["False", "True"]  # not imported for attention; the late-fusion rule registered once built
