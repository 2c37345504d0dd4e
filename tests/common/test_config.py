"""The one reader of run settings: defaults from pyproject, validation that names the key."""

from pathlib import Path

import pytest

from common.config import (ConfigError, app_defaults, load_scenario, load_site_file, parse_run_config,
                           resolve_site)
from tests.data.heart_schema import SCENARIO_SCHEMA


def test_every_default_in_pyproject_parses():
    run = parse_run_config(app_defaults())
    assert run.privacy.accountant == "prv"
    assert run.federation.num_rounds >= 1
    assert run.paths.scenario_file.name == "hospitals.toml"


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("num-server-rounds", 0, "'num-server-rounds' must be >= 1"),
        ("fusion", "sum", "'fusion' must be one of concat, attention, late"),
        ("accountant", "gdp", "'accountant' must be one of prv, rdp"),
        ("out-dir", "runs/x", "'out-dir' must be an absolute path"),
        ("target-epsilon", -1.0, "'target-epsilon' must be > 0"),
        ("dp", "yes", "'dp' must be true or false"),
        ("target-epsilon", 50.0, "exceeds epsilon-budget"),
        ("clipping", "per-layer", "'clipping' must be one of flat, per-modality"),
        ("text-projection", -1, "'text-projection' must be >= 0"),
    ],
)
def test_bad_settings_name_the_key(key, value, match):
    cfg = app_defaults() | {key: value}
    with pytest.raises(ConfigError, match=match):
        parse_run_config(cfg)


def test_the_public_projection_applies_to_the_frozen_encoder_only():
    from common.factory import text_config
    from common.factory import _projection

    assert app_defaults()["text-projection"] == 16  # the default (README "Model"): the frozen MiniLM is projected
    frozen = parse_run_config(app_defaults()).model
    assert frozen.text_projection == 16 and _projection(frozen) == 16
    tiny = parse_run_config(app_defaults() | {"text-encoder": "tiny-bert"}).model
    assert _projection(tiny) == 0  # a fine-tuned encoder learns its own output: nothing fixed to project
    assert text_config("tiny-bert", public_projection=_projection(tiny)).public_projection == 0
    assert _projection(parse_run_config(app_defaults() | {"text-projection": 0}).model) == 0


def test_missing_key_is_named():
    cfg = app_defaults()
    del cfg["batch-size"]
    with pytest.raises(ConfigError, match="missing setting 'batch-size'"):
        parse_run_config(cfg)


def test_hospitals_scenario_maps_partitions_to_sites(tmp_path):
    run = parse_run_config(app_defaults() | {"out-dir": str(tmp_path)})
    sc = load_scenario(run.paths.scenario_file)
    assert [s.name for s in sc.sites] == ["cleveland", "hungary", "switzerland", "va_long_beach"]
    assert sc.modalities == ("tabular", "text")
    assert "text" not in sc.sites[3].modalities  # one hospital keeps no notes
    site = resolve_site({"partition-id": 3, "num-partitions": 4}, run)
    assert site.spec.name == "va_long_beach"
    assert site.state_dir == tmp_path / "sites" / "va_long_beach"
    with pytest.raises(ConfigError, match="partition-id 4 has no site"):
        resolve_site({"partition-id": 4}, run)


def test_scenario_privacy_overrides_are_validated(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text('[[sites]]\nname = "a"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 'select = { hospital = "cleveland" }\nmodalities = ["tabular"]\nprivacy = { epsilon-budget = 1.0 }\n'
                 + SCENARIO_SCHEMA)
    run = parse_run_config(app_defaults() | {"out-dir": str(tmp_path), "scenario-file": str(f)})
    with pytest.raises(ConfigError, match="target-epsilon .* exceeds epsilon-budget"):
        resolve_site({"partition-id": 0}, run)
    f.write_text('[[sites]]\nname = "a"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 'select = { hospital = "cleveland" }\nmodalities = ["audio"]\n')
    with pytest.raises(ConfigError, match="'modalities' must be a non-empty list"):
        load_scenario(f)


def test_site_file_for_deployment(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "cleveland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "cleveland" }}\n'
                 f'modalities = ["tabular", "text"]\nstate-dir = "{tmp_path / "state"}"\n'
                 f'data-dir = "{Path(__file__).resolve().parents[2] / "data"}"\n[privacy]\ntarget-epsilon = 2.0\n')
    run = parse_run_config(app_defaults())
    site = resolve_site({"site-config": str(f)}, run)
    assert site.spec.name == "cleveland" and site.privacy.target_epsilon == 2.0
    assert site.state_dir == tmp_path / "state"
    f.write_text('[site]\nname = "x"\nsource = "mapped"\nmodalities = ["tabular"]\n')
    with pytest.raises(ConfigError, match="'state-dir' .* is required"):
        load_site_file(f, run=run)


def test_site_privacy_changes_every_sites_own_table_in_a_copy_and_the_run_asks_the_same(tmp_path, capsys):
    from common.config import APP_DIR, write_with_site_privacy
    from simulations.driver import SimulationRequest, _run_config, _site_privacy

    source = APP_DIR / "simulations" / "scenarios" / "hospitals.toml"
    before = source.read_text()
    req = SimulationRequest(scenario="hospitals", out=tmp_path, site_privacy={"dp": False})
    copy = _site_privacy(req, source, tmp_path)
    assert copy != source and source.read_text() == before  # the packaged scenario is untouched
    sites = load_scenario(copy).sites
    assert [s.privacy_overrides["dp"] for s in sites] == [False] * 4
    assert [s.privacy_overrides["max-records"] for s in sites] == [250, 250, 120, 160]  # the rest is kept
    assert "SITE PRIVACY CHANGED FOR THIS RUN" in capsys.readouterr().err
    assert _run_config(req, copy)["dp"] is False
    with pytest.raises(ConfigError, match="unknown keys \\['epsilon'\\]"):
        write_with_site_privacy(source, tmp_path / "x.toml", {"epsilon": 1.0})


def test_a_site_file_may_declare_its_public_bound_and_timing_choice(tmp_path):
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "c"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "cleveland" }}\nmodalities = ["tabular"]\n'
                 f'state-dir = "{tmp_path / "state"}"\nreport-timing = true\n[privacy]\nmax-records = 250\n'
                 'privacy-mode = "central"\n')
    site = load_site_file(f, run=parse_run_config(app_defaults()))
    assert (site.privacy.max_records, site.privacy.privacy_mode, site.report_timing) == (250, "central", True)
    f.write_text(f.read_text().replace("max-records = 250", "max-records = 0"))
    with pytest.raises(ConfigError, match="'max-records' must be >= 1"):
        load_site_file(f, run=parse_run_config(app_defaults()))


def test_app_defaults_are_read_once_per_file_version_and_handed_out_as_fresh_dicts(tmp_path):
    import os

    from common.config import app_defaults

    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.flwr.app.config]\nseed = 1\n')
    first = app_defaults(pyproject)
    first["seed"] = 99  # a caller's change stays its own
    assert app_defaults(pyproject) == {"seed": 1}
    pyproject.write_text('[tool.flwr.app.config]\nseed = 22\n')  # same size, a new version of the file
    os.utime(pyproject, ns=(1, 10**18))
    assert app_defaults(pyproject) == {"seed": 22}
