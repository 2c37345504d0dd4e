"""Per-round overhead of a deployed federation (real SuperLink + SuperNodes on 127.0.0.1).

    .venv/bin/python benchmarks/deploy_overhead.py [--rounds 3] [--sites cleveland,va_long_beach]

In Flower 1.42 every message a SuperNode receives starts a fresh ``flwr-clientapp`` process,
which re-imports torch, Opacus and our code. Overhead = round wall time (server side) minus
the slowest site's compute inside the handler (data, model, training, evaluation). The script
runs the same federation twice, side by side in one invocation:

* naive:  a train message and a separate evaluate message per site per round;
* folded: evaluation folded into the train reply (``fold-evaluation = true``), one message.

Both use the on-disk cache of frozen MiniLM features; the cold-vs-warm featurisation cost is
measured separately below and printed beside them, as is the import floor of a fresh process.
Plain-HTTP (insecure) loopback: TLS adds a handshake per process, not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.processes import ProcessSet, free_port, wait_for_port  # noqa: E402

BIN = Path(sys.executable).parent


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FLWR_HOME": str(home), "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    return env


def _site_toml(tmp: Path, name: str) -> Path:
    mods = '["tabular", "text"]' if name != "va_long_beach" else '["tabular"]'
    f = tmp / f"{name}.toml"
    f.write_text(f'[site]\nname = "{name}"\nsource = "uci-heart"\nhospital = "{name}"\nmodalities = {mods}\n'
                 f'state-dir = "{tmp / "state" / name}"\ndata-dir = "{ROOT / "data"}"\n')
    return f


def run_federation(tmp: Path, sites: list[str], *, rounds: int, fold: bool) -> dict:
    home = tmp / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n[superlink.bench]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    out = tmp / "out"
    scenario = tmp / "scenario.toml"
    scenario.write_text("".join(
        f'[[sites]]\nname = "{s}"\nsource = "uci-heart"\nhospital = "{s}"\n'
        f'modalities = {["tabular", "text"] if s != "va_long_beach" else ["tabular"]}\n'.replace("'", '"')
        for s in sites))
    cfg = tmp / "run.toml"
    cfg.write_text(f'num-server-rounds = {rounds}\nout-dir = "{out}"\nscenario-file = "{scenario}"\n'
                   f'data-dir = "{ROOT / "data"}"\nbatch-size = 64\nmin-train-nodes = {len(sites)}\n'
                   f'min-available-nodes = {len(sites)}\nfold-evaluation = {"true" if fold else "false"}\n'
                   f'federation-id = "bench-{"folded" if fold else "naive"}"\n')
    env = _env(home)
    with ProcessSet() as procs:
        link = procs.start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--database", str(tmp / "state.db"), "--host", "127.0.0.1", "--port", str(port)],
                           env=env, log=tmp / "superlink.log")
        wait_for_port(port, timeout=60, proc=link, log=tmp / "superlink.log")
        for s in sites:
            procs.start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                         "--port", str(free_port()), "--node-config", f'site-config="{_site_toml(tmp, s)}"'],
                        env=env, log=tmp / f"supernode-{s}.log")
        t0 = time.monotonic()
        subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "bench", "--run-config", str(cfg), "--stream"],
                       env=env, cwd=ROOT, check=True, stdout=(tmp / "run.log").open("w"), stderr=subprocess.STDOUT,
                       timeout=1800)
        total = time.monotonic() - t0
    summary = json.loads((out / "summary.json").read_text())
    per_round = []
    for r, rec in summary["rounds"].items():
        timing = rec.get("timing", {})
        if int(r) >= 1 and "train" in timing:
            wall = sum(t["wall_s"] for t in timing.values())
            over = sum(t["overhead_s"] for t in timing.values())
            per_round.append((wall, over))
    return {"total_s": total, "per_round": per_round, "sites": summary["sites"]}


def feature_cache_cost() -> tuple[float, float]:
    """Cold MiniLM featurisation of one site's notes vs loading them from the site's cache, fresh processes."""
    code = ("import time;t=time.perf_counter();from common.config import *;from client.site_data import load_site;"
            "from common.config import app_defaults,parse_run_config,load_scenario,resolve_site;"
            "r=parse_run_config(app_defaults()|{'site-state-root':'%s'});s=load_scenario(r.paths.scenario_file);"
            "load_site(resolve_site({'partition-id':0},r),model_modalities=s.modalities,"
            "text_encoder='minilm-frozen',seed=0);print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as d:
        env = _env(Path(d) / "h")
        times = [float(subprocess.run([sys.executable, "-c", code % d], env=env, cwd=ROOT, capture_output=True,
                                      text=True, check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    return times[0], times[1]


def import_floor() -> dict[str, float]:
    out = {}
    for mod in ("torch", "client.app"):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", f"import {mod}"], cwd=ROOT, check=True, env=_env(Path("/tmp")))
        out[mod] = time.monotonic() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sites", default="cleveland,va_long_beach")
    args = ap.parse_args()
    sites = args.sites.split(",")
    print(f"sites {sites}, {args.rounds} rounds, insecure loopback, CPU, {os.cpu_count()} cores")
    print("import floor of a fresh process:", {k: f"{v:.1f} s" for k, v in import_floor().items()})
    cold, warm = feature_cache_cost()
    print(f"site data incl. frozen MiniLM features, fresh process: cold {cold:.1f} s, from cache {warm:.1f} s "
          f"({cold / warm:.1f}x)")
    results = {}
    for fold in (False, True):
        with tempfile.TemporaryDirectory(prefix="ffbench-") as d:
            results[fold] = run_federation(Path(d), sites, rounds=args.rounds, fold=fold)
    print(f"{'path':8s} {'total s':>8s} {'round wall s':>13s} {'overhead s/round':>17s}")
    for fold, res in results.items():
        walls = [w for w, _ in res["per_round"]]
        overs = [o for _, o in res["per_round"]]
        print(f"{'folded' if fold else 'naive':8s} {res['total_s']:8.1f} {statistics.median(walls):13.1f} "
              f"{statistics.median(overs):17.1f}")
    naive = statistics.median(o for _, o in results[False]["per_round"])
    folded = statistics.median(o for _, o in results[True]["per_round"])
    print(f"overhead per round, naive / folded: {naive / folded:.2f}x")


if __name__ == "__main__":
    main()
