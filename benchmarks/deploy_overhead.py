"""Per-round overhead of a deployed federation (real SuperLink + SuperNodes on 127.0.0.1).

    .venv/bin/python benchmarks/deploy_overhead.py [--rounds 3] [--sites cleveland,va_long_beach]

In Flower 1.42 every message a SuperNode receives starts a fresh ``flwr-clientapp`` process.
Overhead = round wall time at the server minus the slowest site's training + evaluation compute
(``client/timing.py``); the server splits it for the site that finished last into process
start-up (interpreter, imports, fetching the message), setup (data, frozen text features, model)
and the rest (Flower's hand-offs: polling, transfer; the server's own work). One invocation runs
the same federation four times, side by side:

* naive:   every message-process imports torch + Opacus + transformers up front (EMULATED: the
           benchmark puts a ``sitecustomize`` doing those imports on the SuperNodes' PYTHONPATH,
           which is what the code did before its imports were made lazy), the site's
           ``feature-cache = false`` (MiniLM loaded and the notes encoded in every message),
           a separate evaluate message per site per round, Flower's default 1 s SuperExec poll and
           its grid's 3 s check for replies;
* cached:  our lazy imports, the site's feature cache, the 0.2 s SuperExec poll that ``site join``
           sets, replies checked every 0.2 s (``server/grid.py``); still a separate evaluate message;
* folded:  as cached, with evaluation folded into the train reply (one message);
* warm:    the default of ``site join``: as folded, with each message's flwr-clientapp forked from the
           site's warm-start supervisor, which imported Flower, torch, Opacus, scikit-learn and pandas once
           (``client/warm_start.py``).

Per variant: the steady-state round (median over rounds 2..N; round 1 fills the feature cache) and
the amortised round (all overhead of the run, round 1 and the folded path's one final evaluation
included, divided by N).

Beside them: the import floor of a fresh process and one site's data cold vs from its cache.
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

from client.app_gate import APPROVED_FILE, record_approval  # noqa: E402
from client.warm_start import supervisor_command  # noqa: E402
from common.runtime.processes import ProcessSet, free_port, wait_for_port  # noqa: E402
from common.runtime.service import flower_env  # noqa: E402

BIN = Path(sys.executable).parent


def _env(home: Path, *, flower_defaults: bool = False) -> dict[str, str]:
    """What `fedfusion federation start` / `site join` give Flower (common.runtime.service.flower_env), or, for the
    naive path, Flower's own defaults (SuperExec polls for a message every 1 s)."""
    env = flower_env(home, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", OMP_NUM_THREADS="1")
    if flower_defaults:
        env.pop("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", None)
    return env


EAGER = "import torch, opacus\nfrom transformers import AutoModel, AutoTokenizer\n"  # the naive variant's imports

VARIANTS = {  # name -> (fold evaluation, site feature cache, eager imports in every message-process, warm start)
    "naive": (False, False, True, False),
    "cached": (False, True, False, False),
    "folded": (True, True, False, False),
    "warm": (True, True, False, True),
}


def _site_toml(tmp: Path, name: str, *, feature_cache: bool) -> Path:
    mods = '["tabular", "text"]' if name != "va_long_beach" else '["tabular"]'
    f = tmp / f"{name}.toml"
    f.write_text(f'[site]\nname = "{name}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "{name}" }}\nmodalities = {mods}\n'
                 f'state-dir = "{tmp / "state" / name}"\ndata-dir = "{ROOT / "data"}"\n'
                 f'feature-cache = {"true" if feature_cache else "false"}\n')
    return f


def run_federation(tmp: Path, sites: list[str], *, rounds: int, variant: str) -> dict:
    fold, feature_cache, eager, warm = VARIANTS[variant]
    home = tmp / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(f'[superlink]\ndefault = "bench"\n[superlink.bench]\n'
                                      f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    out = tmp / "out"
    scenario = tmp / "scenario.toml"
    scenario.write_text("".join(
        f'[[sites]]\nname = "{s}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
        f'select = {{ hospital = "{s}" }}\n'
        f'modalities = {["tabular", "text"] if s != "va_long_beach" else ["tabular"]}\n'.replace("'", '"')
        for s in sites) + f'[scenario]\nschema = "{ROOT / "data" / "schemas" / "heart.toml"}"\n'
                          f'data-dir = "{ROOT / "data"}"\n')
    cfg = tmp / "run.toml"
    cfg.write_text(f'num-server-rounds = {rounds}\nout-dir = "{out}"\nscenario-file = "{scenario}"\n'
                   f'data-dir = "{ROOT / "data"}"\nbatch-size = 64\nmin-train-nodes = {len(sites)}\n'
                   f'min-available-nodes = {len(sites)}\nfold-evaluation = {"true" if fold else "false"}\n'
                   f'federation-id = "bench-{variant}"\n'
                   f'reply-poll-interval = {3.0 if eager else 0.2}\n')  # naive: Flower's grid checks every 3 s
    env = _env(home, flower_defaults=eager)
    node_env = dict(env)
    if eager:  # every Python process the SuperNodes start imports these first
        (tmp / "eager").mkdir()
        (tmp / "eager" / "sitecustomize.py").write_text(EAGER)
        node_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tmp / "eager"), env.get("PYTHONPATH")) if p)
    with ProcessSet() as procs:
        link = procs.start([str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                            "--database", str(tmp / "state.db"), "--host", "127.0.0.1", "--port", str(port)],
                           env=env, log=tmp / "superlink.log")
        wait_for_port(port, timeout=60, proc=link, log=tmp / "superlink.log")
        for s in sites:
            node = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                    "--port", str(free_port()), "--node-config",
                    f'site-config="{_site_toml(tmp, s, feature_cache=feature_cache)}"']
            if warm:  # what `site join` does with warm-start = true (it approves the installed app first)
                (tmp / "state" / s).mkdir(parents=True, exist_ok=True)
                approved = tmp / "state" / s / APPROVED_FILE
                record_approval(approved, ROOT)
                node = supervisor_command(node, state_dir=tmp / "state" / s, approved=approved)
            procs.start(node, env=node_env, log=tmp / f"supernode-{s}.log")
        t0 = time.monotonic()
        subprocess.run([str(BIN / "flwr"), "run", str(ROOT), "bench", "--run-config", str(cfg), "--stream"],
                       env=env, cwd=ROOT, check=True, stdout=(tmp / "run.log").open("w"), stderr=subprocess.STDOUT,
                       timeout=1800)
        total = time.monotonic() - t0
    summary = json.loads((out / "summary.json").read_text())
    steady, all_overhead = [], 0.0
    for r, rec in sorted(summary["rounds"].items(), key=lambda kv: int(kv[0])):
        timing = rec.get("timing", {})
        if int(r) < 1 or "train" not in timing:
            continue
        print(f"    {variant} round {r}: " + "; ".join(
            f"{ph} " + " ".join(f"{k.removesuffix('_s')}={v:.1f}" for k, v in t.items()) for ph, t in timing.items()),
            flush=True)
        all_overhead += sum(t["overhead_s"] for t in timing.values())
        # a round's own messages: train (+ its evaluate when not folded); with folding, the only evaluate
        # phase is the final model's evaluation in the last round, a once-per-run cost (amortised below)
        own = [timing["train"]] + ([timing["evaluate"]] if not fold and "evaluate" in timing else [])
        if int(r) >= 2:  # round 1 fills the site's feature cache: in the amortised figure only
            steady.append({k: sum(t.get(k, 0.0) for t in own) for k in COLUMNS})
    return {"total_s": total, "steady": steady, "amortised_overhead_s": all_overhead / rounds,
            "messages": 1 if fold else 2}


COLUMNS = ("wall_s", "overhead_s", "last_site_startup_s", "last_site_setup_s", "handoff_s")


def feature_cache_cost() -> tuple[float, float]:
    """Cold MiniLM featurisation of one site's notes vs loading them from the site's cache, fresh processes."""
    code = ("import time;t=time.perf_counter();from common.config import *;from client.site_data import load_site;"
            "from common.config import app_defaults,parse_run_config,load_scenario,resolve_site;"
            "r=parse_run_config(app_defaults()|{'site-state-root':'%s'});s=load_scenario(r.paths.scenario_file);"
            "load_site(resolve_site({'partition-id':0},r),model_modalities=s.modalities,"
            "text_encoder='minilm-frozen');print(time.perf_counter()-t)")
    with tempfile.TemporaryDirectory() as d:
        env = _env(Path(d) / "h")
        times = [float(subprocess.run([sys.executable, "-c", code % d], env=env, cwd=ROOT, capture_output=True,
                                      text=True, check=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    return times[0], times[1]


def import_floor() -> dict[str, float]:
    """Fresh-process import times (fastest of 3): Flower's ClientApp runner, torch, our app, Opacus on top."""
    out = {}
    for name, code in (("flwr-clientapp runner", "import flwr.supernode.cli.flwr_clientapp"),
                       ("torch", "import torch"), ("client.app (lazy)", "import client.app"),
                       ("client.app + opacus (a DP train message)", "import client.app, opacus"),
                       ("torch+opacus+transformers (eager)", EAGER)):
        times = []
        for _ in range(3):
            t = time.monotonic()
            subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=_env(Path("/tmp")))
            times.append(time.monotonic() - t)
        out[name] = min(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4, help="at least 2 (round 1 fills the caches)")
    ap.add_argument("--sites", default="cleveland,va_long_beach")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of " + ",".join(VARIANTS))
    args = ap.parse_args()
    sites = args.sites.split(",")
    print(f"sites {sites}, {args.rounds} rounds, insecure loopback, CPU, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("import floor of a fresh process:", {k: f"{v:.1f} s" for k, v in import_floor().items()})
    cold, warm = feature_cache_cost()
    print(f"site data incl. frozen MiniLM features, fresh process: cold {cold:.1f} s, from cache {warm:.1f} s "
          f"({cold / warm:.1f}x)")
    results = {}
    for variant in args.variants.split(","):
        with tempfile.TemporaryDirectory(prefix=f"ffbench-{variant}-") as d:
            results[variant] = run_federation(Path(d), sites, rounds=args.rounds, variant=variant)
        print(f"  {variant} done: {results[variant]['total_s']:.1f} s", flush=True)
    print(f"\nsteady state: median over rounds 2-{args.rounds} per training round (seconds; start-up, setup and "
          "hand-off of the site that finished last, summed over the round's messages); amortised: all overhead of "
          "the run, round 1's cache fill and the final evaluation included, / rounds")
    print(f"{'path':8s} {'msgs':>4s} {'total':>7s} {'wall':>7s} {'overhead':>9s} {'start-up':>9s} {'setup':>7s} "
          f"{'hand-off':>9s} {'amortised':>10s}")
    med = {}
    for variant, res in results.items():
        med[variant] = m = {k: statistics.median(r[k] for r in res["steady"]) for k in COLUMNS}
        m["amortised"] = res["amortised_overhead_s"]
        print(f"{variant:8s} {res['messages']:4d} {res['total_s']:7.1f} {m['wall_s']:7.1f} {m['overhead_s']:9.1f} "
              f"{m['last_site_startup_s']:9.1f} {m['last_site_setup_s']:7.1f} {m['handoff_s']:9.1f} "
              f"{m['amortised']:10.1f}")
    for a, b in (("naive", "warm"), ("naive", "folded"), ("naive", "cached"), ("cached", "folded"),
                 ("folded", "warm")):
        if a in med and b in med:
            print(f"overhead per round, {a} / {b}: steady {med[a]['overhead_s'] / med[b]['overhead_s']:.2f}x, "
                  f"amortised {med[a]['amortised'] / med[b]['amortised']:.2f}x")


if __name__ == "__main__":
    main()
