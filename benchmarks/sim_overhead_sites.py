"""What one virtual site costs per message, in one process: our ClientApp called as a Ray actor calls it.

    .venv/bin/python benchmarks/sim_overhead_sites.py --scenario fashion1000 --sites 100 --rounds 3 [--profile]

No Ray, no SuperLink: the messages ``client.app`` gets in a simulation (train with folded evaluation, then one
evaluate of the final model) are built here and handed to the ClientApp object in this process, one site after
the other, as one Ray actor handles them. The server's part is left out: the global arrays stay the initial ones
(the cost of a message does not depend on their values). ``--sites N`` takes the scenario's first N sites, every
one sampled in every round. It prints milliseconds per message: the first message of each site (its data, its
σ) and the later ones, "dp-sgd" = the part of each train message spent in the DP-SGD steps
(``client.train.train_dp``: the site's compute), and with ``--profile`` the functions that took the time
(cProfile, cumulative). ``--set`` / ``--variant`` compare run settings in one invocation.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import tempfile
import time
from pathlib import Path

__all__ = ["main", "run_messages"]


def run_messages(scenario: str, *, sites: int, rounds: int, out: Path, final_evaluation: bool = True,
                 overrides: dict | None = None, profiler: cProfile.Profile | None = None,
                 profile_first: bool = True) -> dict[str, list[float]]:
    """Seconds of each message, by kind: "first" (a site's first train message), "later", "evaluate".

    ``profiler``: enabled around the messages (around the later ones only when ``profile_first`` is False).
    """
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app
    from common.config import app_defaults, load_scenario, parse_run_config
    from common.factory import build_model, initial_trainable_state
    from common.records import ARRAYS, CONFIG, EVALUATE_GLOBAL
    from simulations.driver import scenario_path

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # the server's side of Message()
    path = scenario_path(scenario)
    scen = load_scenario(path)
    n = min(sites, len(scen.sites))
    run_config = app_defaults() | {"scenario-file": str(path), "out-dir": str(out), "num-server-rounds": rounds,
                                   **(overrides or {})}
    run = parse_run_config(run_config)
    arrays = ArrayRecord(initial_trainable_state(build_model(run.model, scenario=scen, seed=run.federation.seed)))
    times: dict[str, list[float]] = {"first": [], "later": [], "evaluate": [], "dp-sgd": []}
    import client.round

    train_dp = client.round.train_dp

    def timed_train_dp(*args, **kwargs):  # the site's compute: its DP-SGD steps (Opacus), timed per message
        t = time.perf_counter()
        try:
            return train_dp(*args, **kwargs)
        finally:
            times["dp-sgd"].append(time.perf_counter() - t)

    client.round.train_dp = timed_train_dp
    contexts = {i: Context(run_id=1, node_id=1000 + i, node_config={"partition-id": i, "num-partitions": len(scen.sites)},
                           state=RecordDict(), run_config=run_config) for i in range(n)}
    for rnd in range(1, rounds + 1):
        for i in range(n):
            config = ConfigRecord({"server-round": rnd, "federation-id": "bench", "num-server-rounds": rounds,
                                   EVALUATE_GLOBAL: True})
            msg = Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=1000 + i, message_type="train")
            profiling = profiler is not None and (profile_first or rnd > 1)
            if profiling:
                profiler.enable()
            t0 = time.perf_counter()
            reply = app(message=msg, context=contexts[i])
            times["first" if rnd == 1 else "later"].append(time.perf_counter() - t0)
            if profiling:
                profiler.disable()
            privacy = reply.content.config_records.get("privacy", {})
            if privacy.get("status") not in ("trained", "declined"):
                raise SystemExit(f"site {i} round {rnd}: {dict(privacy)}")
    client.round.train_dp = train_dp
    if final_evaluation:
        for i in range(n):
            config = ConfigRecord({"server-round": rounds, "federation-id": "bench", "num-server-rounds": rounds})
            msg = Message(RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=1000 + i, message_type="evaluate")
            if profiler is not None:
                profiler.enable()
            t0 = time.perf_counter()
            app(message=msg, context=contexts[i])
            times["evaluate"].append(time.perf_counter() - t0)
            if profiler is not None:
                profiler.disable()
    return times


def _setting(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as TOML (true, 0.1, "adam"; a bare word stays a string)."""
    import tomllib

    key, _, value = text.partition("=")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="fashion1000")
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the top functions by cumulative time (cProfile)")
    ap.add_argument("--profile-later", action="store_true",
                    help="profile only the later messages (each site's second message on): the per-round cost")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run setting for these messages (e.g. missing-modality-evaluation=false); repeatable")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="after the run with --set, run the same messages again in this process with these settings "
                         "too (new state folders; the process's memos are then warm: compare later messages)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as in a Ray actor of one CPU
    import torch

    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    base = dict(_setting(kv) for kv in args.set)
    runs = [("", base)] + [(v, base | dict(_setting(kv) for kv in v.split(","))) for v in args.variant]
    prof = cProfile.Profile() if args.profile or args.profile_later else None
    for label, overrides in runs:
        with tempfile.TemporaryDirectory(prefix="ff-sites-") as tmp:
            t0 = time.perf_counter()
            times = run_messages(args.scenario, sites=args.sites, rounds=args.rounds, out=Path(tmp), profiler=prof,
                                 profile_first=not args.profile_later, overrides=overrides)
            wall = time.perf_counter() - t0
        print(f"-- settings {overrides or 'defaults'}" + (f" (variant {label})" if label else ""))
        for kind, ts in times.items():
            if ts:
                print(f"{kind:<9s} {len(ts):>5d} messages  median {1e3 * statistics.median(ts):8.1f} ms  "
                      f"mean {1e3 * statistics.fmean(ts):8.1f} ms  max {1e3 * max(ts):8.1f} ms")
        print(f"all: {wall:.1f} s in this process (imports excluded); load average {os.getloadavg()[0]:.2f} now")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
