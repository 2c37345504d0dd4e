"""What a fresh process imports and spends to answer one site's first train message (issue 15: each Ray actor).

    .venv/bin/python benchmarks/first_message.py [--tree OTHER_CHECKOUT ...] [--repeats 5] [--site 0] [--top 12]

A Ray actor of ``fedfusion simulate`` (and a deployed message-process without warm start) imports our ClientApp and,
on its first message, everything that message needs: torch, pandas, Opacus (whose package imports all its
accountants, and with them SciPy), torch._dynamo (which ``torch.optim.Optimizer`` imports on its first use) and the
units library. Here each run is a fresh interpreter under ``python -X importtime`` that imports ``client.app`` and
hands it one round-1 train message of the packaged hospitals scenario, folded evaluation included, with the run's
defaults (DP-SGD, PRV accountant, frozen MiniLM), as the simulation engine hands it (no Ray). The site's feature cache
is filled once before (as on a second ``make run``). Several source trees (``--tree``; this checkout first) run
alternately in the same invocation, so that before/after sit side by side under the same machine load.

Printed per tree (median and fastest of ``--repeats``): ``import client.app``, the first message, the whole process,
the sum of ``-X importtime``'s top-level imports, the heaviest top-level imports (cumulative ms; one imported inside
a function counts where it is first imported), and the heavy modules loaded when the message is answered.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pandas", "opacus", "scipy", "scipy.stats", "sympy", "torch._dynamo", "pint", "PIL", "torchvision",
         "transformers", "sklearn", "matplotlib", "dp_accounting", "pyarrow")
_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


# ------------------------------------------------------------------ the child: one fresh process, one message
def _run_config(work: Path) -> dict:
    from common.config import app_defaults

    return app_defaults() | {"out-dir": str(work / "out"), "site-state-root": str(work / f"sites-{os.getpid()}"),
                             "site-cache-root": str(work / "cache"), "federation-id": "fed-first-message"}


def _child(work: Path, site: int, prepare: bool) -> None:
    started = time.perf_counter()
    if prepare:  # the global model's arrays, once, for every tree (numpy: the measured child imports no torch)
        import numpy as np

        from common.config import load_scenario, parse_run_config
        from common.factory import build_model, initial_trainable_state

        run = parse_run_config(_run_config(work))
        state = initial_trainable_state(build_model(run.model, scenario=load_scenario(run.paths.scenario_file),
                                                    seed=0))
        np.savez(work / "initial.npz", **{k: v.numpy() for k, v in state.items()})
    t0 = time.perf_counter()
    from client.app import app

    t1 = time.perf_counter()
    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    arrays = {k: Array(v) for k, v in np.load(work / "initial.npz").items()}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, site + 1
    msg = Message(content=RecordDict({"arrays": ArrayRecord(arrays), "config": ConfigRecord(
        {"server-round": 1, "federation-id": "fed-first-message", "evaluate-global": True})}), dst_node_id=site + 1,
        message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=site + 1, node_config={"partition-id": site, "num-partitions": 4},
                      state=RecordDict(), run_config=_run_config(work))
    t2 = time.perf_counter()
    reply = app(msg, context)
    t3 = time.perf_counter()
    print(json.dumps({"import_app_ms": 1e3 * (t1 - t0), "message_ms": 1e3 * (t3 - t2),
                      "process_ms": 1e3 * (t3 - started), "status": reply.content["privacy"]["status"],
                      "loaded": [m for m in HEAVY if m in sys.modules]}))


# ------------------------------------------------------------------ the parent: fresh processes, side by side
def _top_level(importtime: str) -> dict[str, float]:
    """Cumulative ms of each import that no other import contains (``-X importtime``'s depth 0)."""
    out: dict[str, float] = {}
    for line in importtime.splitlines():
        m = _LINE.match(line)
        if m and not m[3]:
            out[m[4]] = out.get(m[4], 0.0) + int(m[2]) / 1e3
    return out


def _one(tree: Path, work: Path, site: int, *, prepare: bool = False) -> dict:
    cmd = [sys.executable, "-X", "importtime", str(Path(__file__).resolve()), "--child", str(work), "--site",
           str(site)] + (["--prepare"] if prepare else [])
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the message-process of {tree} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["status"] != "trained":
        raise SystemExit(f"{tree}: the site did not train (status {result['status']}): nothing comparable measured")
    result["imports"] = _top_level(done.stderr)
    return result


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", default=[], type=Path,
                    help="another checkout to measure beside this one (repeatable)")
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes per tree (alternating trees)")
    ap.add_argument("--site", type=int, default=0, help="partition of the hospitals scenario (0 = cleveland)")
    ap.add_argument("--top", type=int, default=12, help="heaviest top-level imports shown")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return _child(args.child, args.site, args.prepare)
    trees = [ROOT, *(t.resolve() for t in args.tree)]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="first-message-") as tmp:
        work = Path(tmp)
        _one(trees[0], work, args.site, prepare=True)  # model arrays, and the site's feature cache filled
        runs: dict[Path, list[dict]] = {t: [] for t in trees}
        for _ in range(args.repeats):
            for tree in trees:
                runs[tree].append(_one(tree, work, args.site))
    print(f"one round-1 train message (hospitals site {args.site}, defaults, warm feature cache), fresh process, "
          f"{args.repeats} each, alternating; load {load_before:.1f} -> {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'tree':<32} {'import client.app':>18} {'first message':>14} {'process':>14} {'importtime sum':>15}  "
          "(ms: median / fastest)")
    for tree, rs in runs.items():
        for r in rs:
            r["importtime_ms"] = sum(r["imports"].values())
        cells = [f"{_median(rs, k):.0f} / {min(r[k] for r in rs):.0f}"
                 for k in ("import_app_ms", "message_ms", "process_ms", "importtime_ms")]
        print(f"{str(tree)[-32:]:<32} {cells[0]:>18} {cells[1]:>14} {cells[2]:>14} {cells[3]:>15}")
    for tree, rs in runs.items():
        names = {n for r in rs for n in r["imports"]}
        med = {n: statistics.median(r["imports"].get(n, 0.0) for r in rs) for n in names}
        heaviest = sorted(med.items(), key=lambda kv: -kv[1])[:args.top]
        print(f"\n{tree}: heaviest top-level imports (cumulative ms, median)")
        print("  " + ", ".join(f"{n} {ms:.0f}" for n, ms in heaviest))
        print(f"  loaded once answered: {', '.join(rs[-1]['loaded'])}")


if __name__ == "__main__":
    main()
