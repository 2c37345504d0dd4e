"""``fedfusion simulate``: a whole federation on one machine, on Flower's simulation engine.

It starts its own ``flower-superlink --simulation`` on free ports (``FLWR_HOME`` inside the
run folder, run-time dependency installation off), submits the app with ``flwr run``, follows
the run to its end with a progress bar, and stops every process it started — also on
Ctrl-C or error. Then it prints the per-site table and writes the plot.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import (APP_DIR, PACKAGED_SCENARIOS, ConfigError, app_defaults, load_scenario,
                           write_with_site_privacy)
from simulations.engine import AppRun, SimulationError, run_app
from simulations.ray_cluster import check_cluster

__all__ = ["SimulationRequest", "SimulationError", "simulate", "scenario_path"]


@dataclass(frozen=True)
class SimulationRequest:
    scenario: str  # packaged scenario name ("hospitals") or path of a scenario TOML
    out: Path  # run folder (created); holds summary.json, metrics.csv, ledger.sqlite, sites/, logs/
    rounds: int | None = None  # overrides num-server-rounds
    site_state: Path | None = None  # existing site-state root (sites/<site>/) to keep spending a budget
    overrides: dict[str, Any] = field(default_factory=dict)  # other [tool.flwr.app.config] keys
    cpus_per_client: int = 1  # Ray CPUs per simulated site
    timeout: float = 3600.0  # seconds before the run is abandoned
    progress: bool = True  # show a progress bar
    check_sites: bool = True  # check every site's data (as `site check`) before starting any Flower process
    # changes to EVERY site's own privacy table (the scenario plays the sites' files), made in a copy of the
    # scenario in the run folder and reported loudly; the run asks for the same values (e.g. dp=false baselines)
    site_privacy: dict[str, Any] = field(default_factory=dict)
    app_dir: Path = APP_DIR  # the Flower app submitted with `flwr run` (tests: an instrumented copy)
    ray_address: str | None = None  # join this existing Ray cluster (HOST:PORT) instead of a private Ray instance


def scenario_path(scenario: str) -> Path:
    p = Path(scenario).expanduser()
    if p.suffix == ".toml":
        if not p.exists():
            raise ConfigError(f"scenario file {p} not found (looked for {p.resolve()})")
        return p.resolve()
    packaged = PACKAGED_SCENARIOS / f"{scenario}.toml"
    if not packaged.exists():
        names = sorted(f.stem for f in PACKAGED_SCENARIOS.glob("*.toml"))
        raise ConfigError(f"unknown scenario {scenario!r}; packaged scenarios: {names}, or pass a .toml path")
    return packaged


def _site_privacy(req: SimulationRequest, scenario_file: Path, out: Path) -> Path:
    """The scenario with ``req.site_privacy`` in every site's own table (a copy in ``out``), announced loudly."""
    if not req.site_privacy:
        return scenario_file
    copy = write_with_site_privacy(scenario_file, out / "scenario-site-privacy.toml", req.site_privacy)
    changed = ", ".join(f"{k} = {v!r}" for k, v in req.site_privacy.items())
    print(f"fedfusion simulate: SITE PRIVACY CHANGED FOR THIS RUN: every site's own privacy table now says "
          f"{changed} (a copy of the scenario: {copy}); the run asks for the same", file=sys.stderr)
    return copy


def _run_config(req: SimulationRequest, scenario_file: Path) -> dict[str, Any]:
    known = app_defaults()
    cfg: dict[str, Any] = {k: v for k, v in req.site_privacy.items() if k in known} | dict(req.overrides)
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"unknown run settings {unknown}; see [tool.flwr.app.config] in {APP_DIR / 'pyproject.toml'}")
    if cfg.get("data-dir"):  # the user's data folder: honoured, made absolute (Flower's apps need absolute paths)
        cfg["data-dir"] = str(Path(str(cfg["data-dir"])).expanduser().resolve())
    cfg.update({"scenario-file": str(scenario_file), "out-dir": str(req.out)})
    if req.rounds is not None:
        cfg["num-server-rounds"] = int(req.rounds)
    if req.site_state is not None:
        cfg["site-state-root"] = str(req.site_state.resolve())
    # the virtual sites' caches (frozen-text features, content-keyed per note: client/site_data.py; σ calibrations),
    # kept beside the run folders: the next run of a scenario computes none again; --set site-cache-root="" = per run
    cfg.setdefault("site-cache-root", str(req.out.resolve().parent / ".site-cache"))
    return cfg


def simulate(req: SimulationRequest) -> dict[str, Any]:
    """Run the federation to completion; return the server's summary (also in ``out/summary.json``)."""
    out = req.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    scenario_file = _site_privacy(req, scenario_path(req.scenario), out)
    scenario = load_scenario(scenario_file)
    cfg = _run_config(req, scenario_file)
    if req.check_sites:  # every site's data, before any process: one table of what is wrong, nothing started
        from simulations.preflight import check_scenario_sites, format_site_table

        checks = check_scenario_sites(scenario_file, cfg)
        if not all(c.ok for c in checks):
            bad = sum(not c.ok for c in checks)
            raise SimulationError(f"{bad} of {len(checks)} sites fail their check; no Flower process was started "
                                  f"(scenario {scenario_file}):\n{format_site_table(checks)}")
    if cfg.get("privacy-mode") == "central":  # refuse what Flower's accounting cannot honour, before any process
        from common.config import parse_run_config
        from common.privacy.central import plan_central

        plan_central(parse_run_config(app_defaults() | cfg), scenario)
    if cfg.get("site-cache-root"):
        Path(cfg["site-cache-root"]).mkdir(mode=0o700, parents=True, exist_ok=True)  # derived patient data
    if req.ray_address:  # refuse a cluster whose nodes cannot see the run folder (each site's ledger lives there)
        check_cluster(req.ray_address, shared=[out, req.app_dir, Path(cfg.get("data-dir") or APP_DIR / "data"),
                                               *[Path(cfg[k]) for k in ("site-state-root", "site-cache-root")
                                                 if cfg.get(k)]])
    run_app(AppRun(app_dir=req.app_dir, run_config=cfg, num_supernodes=len(scenario.sites), out=out,
                   total_rounds=int(cfg.get("num-server-rounds", app_defaults()["num-server-rounds"])),
                   cpus_per_client=req.cpus_per_client, ray_address=req.ray_address, timeout=req.timeout,
                   progress=req.progress))
    run_log, superlink_log = out / "logs" / "run.log", out / "logs" / "superlink.log"
    summary_file = out / "summary.json"
    if not summary_file.exists():
        raise SimulationError(f"the run wrote no summary; see {run_log} and {superlink_log}")
    summary = json.loads(summary_file.read_text())
    if not summary.get("completed"):
        raise SimulationError(f"the run did not complete; see {run_log} and {superlink_log}")
    sites = summary.get("sites", {})
    if sites and not any(s.get("rounds_trained") for s in sites.values()):
        errors = sorted({f"{n}: {s.get('last_error') or s.get('last_decline_reason', '?')}" for n, s in sites.items()})
        raise SimulationError("the federation ran but no site trained in any round:\n  " + "\n  ".join(errors[:8])
                              + f"\nsee {run_log}")
    return summary
