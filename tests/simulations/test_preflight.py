"""`fedfusion simulate` checks every site before it starts any Flower process; --set data-dir is honoured; a
scenario's relative paths resolve against its own folder; errors show the absolute path that was tried.

The sites are the breast-cancer example's three clinics (data/breast-cancer: real WDBC values in CONSTRUCTED files),
copied into a temporary folder of a user's own, then broken.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.config import load_scenario
from simulations.cli import main
from simulations.driver import SimulationError, SimulationRequest, _run_config, simulate
from simulations.preflight import check_scenario_sites

EXAMPLE = Path(__file__).resolve().parents[2] / "data" / "breast-cancer"
SCENARIO = """[scenario]
name = "my-clinics"
schema = "schema.toml"
{extra}
[[sites]]
name = "north"
source = "mapped"
mapping = "north.toml"
modalities = ["tabular"]
privacy = {{ max-records = 200 }}

[[sites]]
name = "south"
source = "mapped"
mapping = "south.toml"
modalities = ["tabular"]
privacy = {{ max-records = 200 }}

[[sites]]
name = "east"
source = "mapped"
mapping = "east.toml"
modalities = ["tabular"]
privacy = {{ max-records = 200 }}
"""


def _project(folder: Path, extra: str = "") -> Path:
    """A user's own folder: the three clinics' files, their mappings, the schema, and a scenario beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("schema.toml", "north.toml", "north.csv", "south.toml", "south.tsv", "east.toml", "east.arff"):
        shutil.copy(EXAMPLE / name, folder / name)
    (folder / "scenario.toml").write_text(SCENARIO.format(extra=extra))
    return folder / "scenario.toml"


def test_relative_paths_resolve_against_the_scenario_files_folder(tmp_path: Path, monkeypatch) -> None:
    scenario = _project(tmp_path / "my project")
    monkeypatch.chdir(tmp_path)  # anywhere else than the scenario's folder
    assert load_scenario(scenario).data_dir == scenario.parent
    checks = check_scenario_sites(scenario, {})
    assert [(c.site, c.ok, c.train_rows + c.test_rows) for c in checks] == [
        ("north", True, 190), ("south", True, 190), ("east", True, 189)]


def test_set_data_dir_is_honoured_made_absolute_and_named_in_errors(tmp_path: Path, monkeypatch) -> None:
    scenario = _project(tmp_path / "scenario-only")
    data = _project(tmp_path / "elsewhere").parent
    for name in ("north.toml", "south.toml", "east.toml"):
        (scenario.parent / name).unlink()  # the mappings are only in the data folder now
    monkeypatch.chdir(tmp_path)
    request = SimulationRequest(scenario=str(scenario), out=tmp_path / "out", overrides={"data-dir": "elsewhere"})
    cfg = _run_config(request, scenario)
    assert cfg["data-dir"] == str(data)  # honoured (d954fa0 overwrote it with the repository's data/), absolute
    assert all(c.ok for c in check_scenario_sites(scenario, cfg))
    empty = tmp_path / "empty"
    empty.mkdir()
    checks = check_scenario_sites(scenario, {"data-dir": str(empty)})
    assert [c.ok for c in checks] == [False, False, False]
    assert checks[0].errors == [f"empty/north.toml: mapping file not found (looked for {empty / 'north.toml'})"]


def test_simulate_checks_every_site_first_and_starts_nothing(tmp_path: Path) -> None:
    scenario = _project(tmp_path / "clinics")
    south = scenario.parent / "south.tsv"
    lines = south.read_text().splitlines()
    cells = lines[4].split("\t")
    cells[10] = "X"  # line 5: a grade the mapping has no code for
    lines[4] = "\t".join(cells)
    south.write_text("\n".join(lines) + "\n")
    east = scenario.parent / "east.toml"
    east.write_text(east.read_text().replace('path = "east.arff"', 'path = "east-export.arff"'))
    out = tmp_path / "run"
    with pytest.raises(SimulationError) as caught:
        simulate(SimulationRequest(scenario=str(scenario), out=out, progress=False))
    message = str(caught.value)
    assert message.startswith(f"2 of 3 sites fail their check; no Flower process was started (scenario {scenario})")
    table = message.splitlines()[1:5]
    assert table[0].split() == ["site", "rows", "(train/test)", "modalities", "status"]
    assert table[1].split() == ["north", "124/66", "tabular", "ok"]
    assert table[2].split() == ["south", "-", "-", "1", "error"]
    assert table[3].split() == ["east", "-", "-", "1", "error"]
    assert f"south: {south} line 5, column 'grade': unknown code 'X'; expected one of L, M, H, or a missing-value " \
           f"code ('NA') (mapping {scenario.parent / 'south.toml'})" in message  # fmt: skip
    assert f"east: {scenario.parent / 'east-export.arff'}: file not found" in message
    assert not (out / ".flwr").exists() and not (out / "logs" / "superlink.log").exists()  # nothing was started


def test_the_cli_prints_the_table_and_exits_1(tmp_path: Path, capsys) -> None:
    scenario = _project(tmp_path / "clinics")
    (scenario.parent / "north.csv").write_bytes(b"")
    assert main(["simulate", "--scenario", str(scenario), "--out", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fedfusion simulate: 1 of 3 sites fail their check; no Flower process was started")
    assert f"north: {scenario.parent / 'north.csv'} line 1: the file is empty" in err
