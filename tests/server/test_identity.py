"""Issue 12: who sent a reply. The operator's registration (deployment) and the scenario (simulation) bind nodes to
sites with their modalities and max-records; a bad registration is refused naming the file, the site and the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.config import ConfigError, app_defaults, load_scenario, parse_run_config
from server.identity import REGISTRY_FILE, find_registry_file, registry_from_file, registry_from_scenario, \
    resolve_registry

HOSPITALS = load_scenario(parse_run_config(app_defaults()).paths.scenario_file)


def _write(folder: Path, sites: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / REGISTRY_FILE).write_text(json.dumps(sites))
    return folder / REGISTRY_FILE


GOOD = {"cleveland": {"node-id": 11, "modalities": ["tabular", "text"], "max-records": 250,
                      "public-key-line": "ecdsa-sha2-nistp384 AAAA"},
        "va_long_beach": {"node-id": 12, "modalities": ["tabular"], "max-records": 160}}


def test_the_registration_binds_node_ids_to_sites_with_their_modalities_and_bounds(tmp_path):
    registry = registry_from_file(_write(tmp_path, GOOD), HOSPITALS)
    assert registry.lookup(11).name == "cleveland" and registry.lookup(11).max_records == 250
    assert registry.lookup(11).public_key.startswith("ecdsa-sha2-nistp384")
    assert registry.lookup(12).branches == frozenset({"tabular", "head"})
    assert registry.lookup(13) is None  # a node nobody registered is no site
    assert [s.name for s in registry.holders("text")] == ["cleveland"]


@pytest.mark.parametrize("change, match", [
    ({"node-id": "11"}, "'node-id' is '11'; expected the SuperNode id"),
    ({"modalities": ["text"]}, "'modalities' is \\['text'\\]; expected a list .* with 'tabular'"),
    ({"modalities": ["tabular", "audio"]}, "'modalities'"),
    ({"max-records": 0}, "'max-records' is 0; expected the site's declared max-records"),
    ({"max-records": None}, "'max-records' is None"),
])
def test_a_registration_missing_a_field_is_refused_naming_file_site_and_field(tmp_path, change, match):
    sites = {"cleveland": GOOD["cleveland"] | change}
    with pytest.raises(ConfigError, match=f"{REGISTRY_FILE} site 'cleveland': {match}.*federation register"):
        registry_from_file(_write(tmp_path, sites), HOSPITALS)


def test_the_registration_is_found_above_the_out_dir_or_named_in_the_run_config(tmp_path):
    path = _write(tmp_path / "op", GOOD)
    run = parse_run_config(app_defaults() | {"out-dir": str(tmp_path / "op" / "runs" / "r1")})
    assert find_registry_file(run) == path
    named = parse_run_config(app_defaults() | {"site-registry": str(path)})
    assert find_registry_file(named) == path
    missing = parse_run_config(app_defaults() | {"site-registry": str(tmp_path / "nope.json")})
    with pytest.raises(ConfigError, match="'site-registry' .* is not a file"):
        find_registry_file(missing)


def test_a_deployed_server_without_a_registration_refuses_to_start(tmp_path):
    run = parse_run_config(app_defaults() | {"out-dir": str(tmp_path / "runs" / "r1")})
    with pytest.raises(ConfigError, match="binds each reply to the site registered for its node"):
        resolve_registry(object(), run, HOSPITALS)  # not the simulation's in-memory grid


def test_in_simulation_node_i_is_the_scenarios_site_i():
    order = [901, 902]
    registry = registry_from_scenario(HOSPITALS, discover=lambda: list(order))
    assert registry.lookup(901).name == "cleveland"  # read while only two nodes are registered
    order.extend([903, 904])
    assert registry.lookup(904).name == "va_long_beach" and registry.lookup(904).max_records == 160
    order.append(905)
    with pytest.raises(ConfigError, match="registered 5 nodes for 4 sites"):
        registry.lookup(999)
