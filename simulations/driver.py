"""``fedfusion simulate``: a whole federation on one machine, on Flower's simulation engine.

It starts its own ``flower-superlink --simulation`` on free ports (``FLWR_HOME`` inside the
run folder, run-time dependency installation off), submits the app with ``flwr run``, follows
the run to its end with a progress bar, and stops every process it started — also on
Ctrl-C or error. Then it prints the per-site table and writes the plot.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import (APP_DIR, PACKAGED_SCENARIOS, ConfigError, app_defaults, load_scenario,
                           write_with_site_privacy)
from common.runtime.processes import ProcessSet, free_port, wait_for_port

__all__ = ["SimulationRequest", "SimulationError", "simulate", "scenario_path"]

_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
_RUN_ID = re.compile(r"Successfully started run (\d+)")


class SimulationError(RuntimeError):
    """The federation did not complete; the message says where to look."""


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


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # TOML basic strings accept JSON string escapes


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
    return cfg


def _env(flwr_home: Path, ray_tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # flower-superlink starts flower-superexec etc. by name
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "RAY_TMPDIR": str(ray_tmp), "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1",
    })
    return env


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
    cfg_file = out / "run-config.toml"
    cfg_file.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in sorted(cfg.items())))
    flwr_home = out / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedfusion-sim"\n\n[superlink.fedfusion-sim]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    ray_tmp = Path(tempfile.mkdtemp(prefix="ffray-"))  # short path: Ray's unix sockets cap path length
    env = _env(flwr_home, ray_tmp)
    bindir = Path(sys.executable).parent
    superlink_log, run_log = out / "logs" / "superlink.log", out / "logs" / "run.log"
    fed_cfg = f"num-supernodes={len(scenario.sites)} client-resources-num-cpus={int(req.cpus_per_client)}"
    procs = ProcessSet()
    try:
        link = procs.start([str(bindir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                            "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db"),
                            "--disable-runtime-dependency-installation"], env=env, log=superlink_log)
        wait_for_port(port, timeout=60, proc=link, log=superlink_log)
        runner = subprocess.Popen(
            [str(bindir / "flwr"), "run", str(req.app_dir), "fedfusion-sim", "--run-config", str(cfg_file),
             "--federation-config", fed_cfg, "--stream"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.procs.append(runner)
        _follow(runner, run_log, total=int(cfg.get("num-server-rounds", app_defaults()["num-server-rounds"])),
                timeout=req.timeout, progress=req.progress, procs=procs)
    except KeyboardInterrupt:
        raise SimulationError(f"interrupted; every process was stopped. Logs: {out / 'logs'}") from None
    finally:
        procs.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
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


def _follow(runner: subprocess.Popen, log: Path, *, total: int, timeout: float, progress: bool,
            procs: ProcessSet) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, desc="rounds", unit="round", disable=not progress, file=sys.stderr)
    started, last_track = time.monotonic(), 0.0
    with log.open("a") as fh:
        assert runner.stdout is not None
        for line in runner.stdout:
            fh.write(line)
            fh.flush()
            m = _ROUND.search(line)
            if m:
                bar.n = int(m.group(1)) - 1
                bar.set_postfix_str(f"round {m.group(1)} running")
                bar.refresh()
            if "Strategy execution finished" in line:
                bar.n = total
                bar.refresh()
            if "ERROR" in line or "Traceback" in line:
                tqdm.write(line.rstrip(), file=sys.stderr)
            if time.monotonic() - last_track > 5:  # remember Ray's workers for cleanup
                procs.track()
                last_track = time.monotonic()
            if time.monotonic() - started > timeout:
                raise SimulationError(f"run exceeded {timeout:.0f}s; see {log}")
    runner.wait()
    bar.close()
    if runner.returncode != 0:
        raise SimulationError(f"`flwr run` exited with {runner.returncode}; see {log}")
