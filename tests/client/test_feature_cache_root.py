"""A simulation's frozen-text-feature cache kept across runs (run setting ``site-cache-root``).

A virtual site's features are a pure function of each note and the encoder settings (client/site_data.py), so the
next run of a scenario (a new run folder, new state folders and ledgers) reads them instead of running MiniLM
again. A deployed site never takes that location from a run config: its cache stays under its own state-dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.site_data import load_site
from common.config import app_defaults, load_site_file, parse_run_config, resolve_site
from simulations.driver import SimulationRequest, _run_config, scenario_path

DATA = Path(__file__).resolve().parents[2] / "data"
HOSPITALS = scenario_path("hospitals")
SWITZERLAND = 2  # hospitals.toml: partition 2, the smallest site with notes (123 patients)


def _run(tmp_path: Path, **settings):
    return parse_run_config(app_defaults() | {"scenario-file": str(HOSPITALS)} | settings)


def test_the_root_holds_one_folder_per_virtual_site_and_defaults_to_the_state_dir(tmp_path):
    shared = _run(tmp_path, **{"out-dir": str(tmp_path / "run1"), "site-cache-root": str(tmp_path / "fc")})
    site = resolve_site({"partition-id": SWITZERLAND}, shared)
    assert site.feature_cache_path == tmp_path / "fc" / "switzerland"
    assert site.state_dir == tmp_path / "run1" / "sites" / "switzerland"  # the ledger stays in the run's folder
    per_run = resolve_site({"partition-id": SWITZERLAND}, _run(tmp_path, **{"out-dir": str(tmp_path / "run1")}))
    assert per_run.feature_cache_path == tmp_path / "run1" / "sites" / "switzerland" / "cache"


def test_a_deployed_site_keeps_its_cache_under_its_own_state_dir_whatever_the_run_says(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "cleveland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "cleveland" }}\nmodalities = ["tabular", "text"]\n'
                 f'state-dir = "{tmp_path / "state"}"\ndata-dir = "{DATA}"\n')
    site = load_site_file(f, run=_run(tmp_path, **{"site-cache-root": str(tmp_path / "server-chosen")}))
    assert site.feature_cache_path == tmp_path / "state" / "cache"
    assert load_site_file(f.with_name("site.toml"), run=_run(tmp_path)).cache_dir is None


def test_simulate_keeps_the_cache_beside_the_run_folders_unless_told_otherwise(tmp_path):
    cfg = _run_config(SimulationRequest(scenario="hospitals", out=tmp_path / "runs" / "h-1"), HOSPITALS)
    assert cfg["site-cache-root"] == str((tmp_path / "runs" / ".site-cache").resolve())
    own = _run_config(SimulationRequest(scenario="hospitals", out=tmp_path / "x",
                                        overrides={"site-cache-root": ""}), HOSPITALS)
    assert own["site-cache-root"] == ""  # --set site-cache-root="": per run, under each state-dir
    assert parse_run_config(app_defaults() | own | {"scenario-file": str(HOSPITALS)}).paths.site_cache_root is None


def test_a_second_run_computes_no_feature_and_gets_the_same_values(tmp_path, monkeypatch):
    # tiny-bert's features are its tokens (cheap to compute); the cache is the same for every encoder kind
    kw = dict(model_modalities=("tabular", "text"), text_encoder="tiny-bert")
    root = str(tmp_path / "fc")
    first = load_site(resolve_site({"partition-id": SWITZERLAND},
                                   _run(tmp_path, **{"out-dir": str(tmp_path / "run1"), "site-cache-root": root})),
                      **kw)
    assert (tmp_path / "fc" / "switzerland" / "text-tiny-bert.safetensors").is_file()
    assert not (tmp_path / "run1" / "sites" / "switzerland" / "cache").exists()

    from common.models import text

    def no_minilm(*_args, **_kwargs):  # the second run must not run the featurizer at all
        raise AssertionError("the featurizer ran although every note's features were in the shared cache")

    monkeypatch.setattr(text.TextFeaturizer, "featurize", no_minilm)
    second = load_site(resolve_site({"partition-id": SWITZERLAND},
                                    _run(tmp_path, **{"out-dir": str(tmp_path / "run2"), "site-cache-root": root})),
                       **kw)
    for part in ("train", "test"):
        a, b = getattr(first, part).tensors, getattr(second, part).tensors
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert first.dataset_id == second.dataset_id
    # a third run without the shared cache computes its features
    with pytest.raises(AssertionError, match="the featurizer ran"):
        load_site(resolve_site({"partition-id": SWITZERLAND}, _run(tmp_path, **{"out-dir": str(tmp_path / "run3")})),
                  **kw)


def _ledger_rows(job) -> list[tuple]:
    from common.privacy.ledger import Ledger

    return [(e.round, e.event, e.noise_multiplier, e.sample_rate, e.steps, e.epsilon, e.delta)
            for e in Ledger(job.site.state_dir / "ledger.sqlite").entries(site=job.site.spec.name)]


def test_sigma_calibration_is_shared_across_runs_and_the_ledger_rows_are_identical(make_job, initial_state, tmp_path,
                                                                                   monkeypatch):
    """The second run reads σ from the shared cache (no calibration at all); its ledger rows, and those of a run
    without the shared cache, equal the first run's: the cache changes no ε, σ, q or step."""
    import client.privacy

    root = str(tmp_path / "shared")
    lean = {"batch-size": 100, "hidden-dim": 16, "num-server-rounds": 1}  # one DP-SGD step: the test is the σ
    first = make_job(round_=1, run_id="r1", **lean,
                     **{"site-cache-root": root, "site-state-root": str(tmp_path / "s1")})
    assert first.train(initial_state(first)).privacy["status"] == "trained"
    assert (tmp_path / "shared" / "switzerland" / "calibration.json").is_file()
    assert not (tmp_path / "s1" / "switzerland" / "cache").exists()
    calibrate = client.privacy.calibrate_noise_multiplier

    def no_calibration(**kwargs):
        raise AssertionError(f"σ was calibrated again although the shared cache holds it: {kwargs}")

    monkeypatch.setattr(client.privacy, "calibrate_noise_multiplier", no_calibration)
    second = make_job(round_=1, run_id="r2", **lean,
                      **{"site-cache-root": root, "site-state-root": str(tmp_path / "s2")})
    assert second.train(initial_state(second)).privacy["status"] == "trained"
    monkeypatch.setattr(client.privacy, "calibrate_noise_multiplier", calibrate)
    # without the shared cache: its own <state-dir>/cache, calibrated again
    alone = make_job(round_=1, run_id="r3", **lean, **{"site-state-root": str(tmp_path / "s3")})
    assert alone.train(initial_state(alone)).privacy["status"] == "trained"
    assert (tmp_path / "s3" / "switzerland" / "cache" / "calibration.json").is_file()
    rows = _ledger_rows(first)
    assert [r[:2] for r in rows] == [(1, "reserve"), (1, "confirm")]
    assert _ledger_rows(second) == rows and _ledger_rows(alone) == rows
