"""Flower's simulation pipeline for any Flower app folder: the one copy ``fedfusion simulate`` and the benchmarks use.

It starts a ``flower-superlink --simulation`` on a free port (``FLWR_HOME`` inside the run folder, run-time
dependency installation off), submits the app with ``flwr run --stream``, follows the run to its end, and stops
every process it started, also on Ctrl-C or error. With ``ray_address`` the simulation runtime joins an existing
Ray cluster instead of starting a private Ray instance (``simulations/ray_cluster.py`` checks the cluster first).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from common.runtime.app_files import stage_app
from common.runtime.processes import ProcessSet, free_port, wait_for_port

__all__ = ["AppRun", "AppTimes", "SimulationError", "run_app", "toml_value"]

_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")
CONNECTION = "fedfusion-sim"  # the connection name written into the run's FLWR_HOME/config.toml


class SimulationError(RuntimeError):
    """The federation did not complete; the message says where to look."""


@dataclass(frozen=True)
class AppRun:
    """One ``flwr run`` of ``app_dir`` on a simulation SuperLink of its own."""

    app_dir: Path  # the Flower app folder (its pyproject.toml names the ServerApp and ClientApp)
    run_config: Mapping[str, Any]  # [tool.flwr.app.config] overrides, written to out/run-config.toml
    num_supernodes: int  # simulated SuperNodes
    out: Path  # run folder: logs/, .flwr/ (FLWR_HOME), run-config.toml
    total_rounds: int  # for the progress bar only
    cpus_per_client: int = 1  # Ray CPUs per simulated SuperNode (actors = cluster CPUs / this)
    ray_address: str | None = None  # an existing Ray cluster (RAY_ADDRESS); None = a private Ray instance
    timeout: float = 3600.0  # seconds before the run is abandoned
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class AppTimes:
    """Wall-clock seconds of one :func:`run_app`."""

    superlink_s: float  # start of flower-superlink until it listens
    flwr_run_s: float  # `flwr run --stream` from submission to its exit (the run itself)
    total_s: float  # everything, process shutdown included


def toml_value(v: Any) -> str:
    """A TOML scalar for ``v`` (bool, number or string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # TOML basic strings accept JSON string escapes


def _env(flwr_home: Path, ray_tmp: Path | None, ray_address: str | None) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # flower-superlink starts flower-superexec etc. by name
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "RAY_DEDUP_LOGS": "0", "OMP_NUM_THREADS": "1",
    })
    env.pop("RAY_ADDRESS", None)  # never join a cluster by accident: only when asked
    if ray_address:
        # Flower's RayBackend calls ray.init() without an address: Ray then joins the cluster RAY_ADDRESS names
        # (its temp dir is the cluster's own, so RAY_TMPDIR is not set)
        env["RAY_ADDRESS"] = ray_address
    elif ray_tmp is not None:
        env["RAY_TMPDIR"] = str(ray_tmp)
    return env


def run_app(run: AppRun) -> AppTimes:
    """Run the app to the end of ``flwr run``; raise :class:`SimulationError` if it fails.

    The app's own outputs (summary files) are its business: check them after this returns.
    """
    t0 = time.monotonic()
    out = run.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cfg_file = out / "run-config.toml"
    cfg_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in sorted(run.run_config.items())))
    flwr_home = out / ".flwr"
    flwr_home.mkdir(exist_ok=True)
    port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\n'
        "insecure = true\n")
    # short path: Ray's unix sockets cap path length
    ray_tmp = None if run.ray_address else Path(tempfile.mkdtemp(prefix="ffray-"))
    env = _env(flwr_home, ray_tmp, run.ray_address)
    bindir = Path(sys.executable).parent
    superlink_log, run_log = out / "logs" / "superlink.log", out / "logs" / "run.log"
    # the app's own files only: Flower's FAB build walks every file under the folder it is given (a checkout's
    # .venv and prepared data: 5.6 s), then drops what .gitignore ignores; the FAB is the same (app_files.py)
    app = stage_app(run.app_dir, flwr_home / "app")
    fed_cfg = f"num-supernodes={int(run.num_supernodes)} client-resources-num-cpus={int(run.cpus_per_client)}"
    procs = ProcessSet()
    try:
        link = procs.start([str(bindir / "flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
                            "--host", "127.0.0.1", "--port", str(port), "--database", str(flwr_home / "state.db"),
                            "--disable-runtime-dependency-installation"], env=env, log=superlink_log)
        wait_for_port(port, timeout=60, proc=link, log=superlink_log)
        t_link = time.monotonic()
        runner = subprocess.Popen(
            [str(bindir / "flwr"), "run", str(app), CONNECTION, "--run-config", str(cfg_file),
             "--federation-config", fed_cfg, "--stream"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        procs.procs.append(runner)
        _follow(runner, run_log, total=run.total_rounds, timeout=run.timeout, progress=run.progress, procs=procs)
        t_run = time.monotonic()
    except KeyboardInterrupt:
        raise SimulationError(f"interrupted; every process was stopped. Logs: {out / 'logs'}") from None
    finally:
        procs.stop()
        if ray_tmp is not None:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    return AppTimes(superlink_s=t_link - t0, flwr_run_s=t_run - t_link, total_s=time.monotonic() - t0)


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
