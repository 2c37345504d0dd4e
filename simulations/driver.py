"""``fedfusion simulate``: a whole federation on one machine, on Flower's simulation engine.

It starts its own ``flower-superlink --simulation`` on free ports (``FLWR_HOME`` inside the
run folder, run-time dependency installation off), submits the app with ``flwr run``, follows
the run to its end with a progress bar, and stops every process it started — also on
Ctrl-C or error. Then it prints the per-site table and writes the plot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import APP_DIR, PACKAGED_SCENARIOS, ConfigError, app_defaults, load_scenario
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
    ray_address: str | None = None  # join this existing Ray cluster (HOST:PORT) instead of a private Ray instance


def scenario_path(scenario: str) -> Path:
    p = Path(scenario)
    if p.suffix == ".toml":
        if not p.exists():
            raise ConfigError(f"scenario file {p} not found")
        return p.resolve()
    packaged = PACKAGED_SCENARIOS / f"{scenario}.toml"
    if not packaged.exists():
        names = sorted(f.stem for f in PACKAGED_SCENARIOS.glob("*.toml"))
        raise ConfigError(f"unknown scenario {scenario!r}; packaged scenarios: {names}, or pass a .toml path")
    return packaged


def _run_config(req: SimulationRequest, scenario_file: Path) -> dict[str, Any]:
    known = app_defaults()
    cfg: dict[str, Any] = dict(req.overrides)
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ConfigError(f"unknown run settings {unknown}; see [tool.flwr.app.config] in {APP_DIR / 'pyproject.toml'}")
    cfg.update({"scenario-file": str(scenario_file), "data-dir": str(APP_DIR / "data"), "out-dir": str(req.out)})
    if req.rounds is not None:
        cfg["num-server-rounds"] = int(req.rounds)
    if req.site_state is not None:
        cfg["site-state-root"] = str(req.site_state.resolve())
    return cfg


def simulate(req: SimulationRequest) -> dict[str, Any]:
    """Run the federation to completion; return the server's summary (also in ``out/summary.json``)."""
    scenario_file = scenario_path(req.scenario)
    scenario = load_scenario(scenario_file)
    out = req.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cfg = _run_config(req, scenario_file)
    if cfg.get("privacy-mode") == "central":  # refuse what Flower's accounting cannot honour, before any process
        from common.config import parse_run_config
        from common.privacy.central import plan_central

        plan_central(parse_run_config(app_defaults() | cfg), scenario)
    if req.ray_address:  # refuse a cluster whose nodes cannot see the run folder (each site's ledger lives there)
        check_cluster(req.ray_address, shared=[out, APP_DIR, Path(cfg.get("data-dir") or APP_DIR / "data"),
                                               *([Path(cfg["site-state-root"])] if cfg.get("site-state-root") else [])])
    run_app(AppRun(app_dir=APP_DIR, run_config=cfg, num_supernodes=len(scenario.sites), out=out,
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
