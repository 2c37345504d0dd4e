"""Robust aggregation on the hospitals federation: accuracy with and without one attacker (issue 12).

Each run is a whole federation in one process, with the production parts and without Flower's runtime: the real
ClientApp handler (``client.app.app``: data, DP-SGD, ledger, reply) for each of the four hospitals, and the real
``ModalityFedAvg`` (reply validation, per-branch aggregation) with its ``RunRecorder``. Messages are Flower
``Message`` objects, passed by function call instead of through a SuperLink. The attacker is Hungary (250
records, holds notes); its attack is CONSTRUCTED here:

* ``none``: no attacker;
* ``scale``: its update (new - global) times 1e6 (the default ``max-update-norm`` = 100 fails the reply);
* ``scale-unbounded``: the same with ``max-update-norm = 0``: the update reaches the aggregator;
* ``claim``: ``num-examples = 1e12`` (fails: a trained reply states the site's registered max-records);
* ``flip``: label flipping: Hungary trains on 1 - y (its replies are well-formed: only the aggregator can help).

Accuracy: the final global model evaluated by every site on its test rows (the sites' evaluate handler), pooled
(sum of correct / sum of test rows). Balanced accuracy: each site's (mean recall over the classes), weighted by its
test rows, as ``make run`` reports it. ``bulyan`` is listed but refused on this federation: it needs 4f + 3 = 7
holders of every branch, and the text branch has 3 (Flower's Bulyan has the same requirement).

Usage::

    .venv/bin/python benchmarks/robust_aggregation.py --seeds 5 --rounds 8 --out benchmarks/results/ra.json
    .venv/bin/python benchmarks/robust_aggregation.py --compare --seeds 5 --rounds 8 --out ...compare.json
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["ATTACKS", "run_once", "main"]

ATTACKER = "hungary"
ATTACKS = ("none", "flip", "scale-unbounded", "scale", "claim")
#: the run's request for DP noise derived from the run seed (simulation only; the sites' files must allow it)
RUN_SEED_NOISE = {"noise-seed": "run-seed"}
AGGREGATORS = ("weighted-mean", "median", "trimmed-mean", "krum", "multikrum", "bulyan")


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _poison(attack: str, glob: ArrayRecord, reply: Message) -> Message:
    from common.packing import pack_branches, unpack_reply

    if attack in ("scale", "scale-unbounded", "both") and "arrays" in reply.content.array_records:
        sent = {k: a.numpy() for k, a in glob.items()}  # the global model per tensor (the message carries it packed)
        got = unpack_reply({k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}, sent)
        poisoned = {k: (sent[k] + np.float32(1e6) * (v - sent[k])).astype(np.float32) for k, v in got.items()}
        reply.content.array_records["arrays"] = ArrayRecord({k: Array(v) for k, v in pack_branches(poisoned).items()})
    if attack in ("claim", "both") and "metrics" in reply.content.metric_records:
        reply.content.metric_records["metrics"]["num-examples"] = 1e12
    return reply


#: whether the attacker trains on flipped labels in the current run (``run_once`` sets it for every run: the patch
#: below stays installed for the process, so it must be switched off again for the runs without label flipping)
_FLIPPING = {"on": False}


def _flip_labels(on: bool) -> None:
    """Make the attacker's SiteRound train on flipped labels (test rows untouched) while ``on``."""
    from client.round import SiteRound
    from client.train import LABEL, TensorDictDataset

    _FLIPPING["on"] = on
    original = SiteRound.data
    if getattr(original, "_flipped", False):
        return

    def data(self):
        d = original(self)
        if not _FLIPPING["on"] or self.site.spec.name != ATTACKER:
            return d
        tensors = dict(d.train.tensors)
        tensors[LABEL] = 1 - tensors[LABEL]
        return replace(d, train=TensorDictDataset(tensors))

    data._flipped = True
    SiteRound.data = data


def _fresh_sites(root: Path) -> None:
    """New site state for a new federation, keeping each site's text-feature cache (``cache/``: features of its
    notes by the frozen encoder, the same in every run) so that runs do not re-encode the notes."""
    import shutil

    for site in root.glob("*"):
        for part in site.iterdir():
            if part.name != "cache":
                shutil.rmtree(part) if part.is_dir() else part.unlink()


def run_once(*, aggregator: str, attack: str, seed: int, rounds: int, work: Path, scenario: Path | None = None,
             overrides: dict | None = None, with_state: bool = False) -> dict:
    """One federation; returns the pooled test accuracy of the final global model and how many replies failed.

    ``attack``: one of :data:`ATTACKS`, or ``both`` (``scale`` and ``claim`` in one reply: the issue's end-to-end
    attacker) or ``absent`` (the attacker never replies: the federation without it). ``scenario``: another
    scenario file (default the run config's, hospitals); ``overrides``: more run-config settings. ``with_state``:
    also return the final global arrays (``arrays``) and the server ledger's (site, round, event, reason) rows
    (``ledger``), for tests.
    """
    from client.app import app
    from common.config import AggregationSettings, app_defaults, load_scenario, parse_run_config
    from common.factory import build_model, initial_trainable_state
    from common.records import METRICS
    from server.aggregation import check_aggregation
    from server.identity import SiteRegistry, registry_from_scenario, scenario_branches
    from server.recorder import RunRecorder
    from server.strategy import ModalityFedAvg

    cfg = app_defaults() | {
        "num-server-rounds": rounds, "seed": seed, "site-state-root": str(work / "sites"),
        "aggregator": aggregator, "max-update-norm": 0.0 if attack == "scale-unbounded" else 100.0,
        "fold-evaluation": False, "federation-id": f"bench-{seed}"} | (
        {"scenario-file": str(scenario)} if scenario is not None else {}) | dict(overrides or {})
    _fresh_sites(work / "sites")
    out = work / "out" / f"{aggregator}-{attack}-{seed}"
    shutil.rmtree(out, ignore_errors=True)  # a new server ledger: one left by an interrupted run holds other keys
    run = parse_run_config(cfg)
    scenario = load_scenario(run.paths.scenario_file)
    order = registry_from_scenario(scenario, discover=lambda: [])
    registry = SiteRegistry(order.declared, source="benchmark", nodes={i + 1: s.name
                                                                        for i, s in enumerate(order.declared)})
    check_aggregation(aggregator, run.aggregation.num_malicious_sites,
                      {b: len(registry.holders(b)) for b in scenario_branches(scenario)})
    _flip_labels(attack == "flip")
    nodes = list(range(1, len(registry.declared) + 1))
    strategy = ModalityFedAvg(
        registry=registry, aggregation=run.aggregation, batch_size=run.train.batch_size,
        local_epochs=run.train.local_epochs, fraction_train=1.0, min_train_nodes=len(nodes),
        min_available_nodes=len(nodes), fraction_evaluate=1.0, min_evaluate_nodes=len(nodes),
        recorder=RunRecorder(out_dir=out, federation_id=f"bench-{seed}", run_id="1", run_info={}))
    contexts = {n: Context(run_id=1, node_id=n, node_config={"partition-id": n - 1, "num-partitions": len(nodes)},
                           state=RecordDict(), run_config=cfg) for n in nodes}
    attacker = next(n for n, name in registry._nodes.items() if name == ATTACKER)
    arrays = ArrayRecord(initial_trainable_state(build_model(run.model, scenario=scenario, seed=seed)))
    for rnd in range(1, rounds + 1):
        replies = []
        for msg in strategy.configure_train(rnd, arrays, ConfigRecord(), _Grid(nodes)):
            node = msg.metadata.dst_node_id
            TaskIdentity.node_id = node
            if node == attacker and attack == "absent":
                continue  # it never replies (the server records no-reply)
            reply = app(msg, contexts[node])
            replies.append(_poison(attack, arrays, reply) if node == attacker else reply)
        merged, _ = strategy.aggregate_train(rnd, replies)
        arrays = merged if merged is not None else arrays
    correct = bacc = total = 0.0
    for msg in strategy.configure_evaluate(rounds, arrays, ConfigRecord(), _Grid(nodes)):
        TaskIdentity.node_id = msg.metadata.dst_node_id
        reply = app(msg, contexts[msg.metadata.dst_node_id])
        m = reply.content.metric_records[METRICS]
        correct += float(m["accuracy"]) * float(m["num-examples"])
        bacc += float(m["balanced-accuracy"]) * float(m["num-examples"])
        total += float(m["num-examples"])
    rows = {(e.site, e.round): e.event for e in strategy.recorder.ledger.entries()}
    rejected = sum(1 for (site, _), event in rows.items() if site == ATTACKER and event == "failed")
    out = {"accuracy": correct / total, "balanced_accuracy": bacc / total, "attacker_failed_rounds": rejected}
    if with_state:
        out |= {"arrays": {k: v.numpy().copy() for k, v in arrays.items()},
                "ledger": [(e.site, e.round, e.event, e.reason) for e in strategy.recorder.ledger.entries()]}
    return out


def compare(*, seeds: int, rounds: int, work: Path, out: Path) -> dict:
    """Issue 12's end-to-end check, measured: the same federation benign (the attacker honest), attacked (``both``:
    1e6x update and 1e12 examples) and without the attacker (``absent``), per seed, with every site's DP noise
    derived from the run seed (``noise-seed = "run-seed"`` in each site's own privacy table of a COPY of the
    scenario, and requested by the run: a site applies the run's request when it is at least as private as its
    file, and the default request is "secret") so that the three runs differ only by what the attacker sends."""
    from common.config import app_defaults, parse_run_config, write_with_site_privacy

    default = parse_run_config(app_defaults()).paths.scenario_file
    scenario = write_with_site_privacy(default, work / "run-seed-noise.toml",
                                       {"noise-seed": "run-seed"})
    results: dict = json.loads(out.read_text()) if out.exists() else {}
    for seed in range(seeds):
        for attack in ("none", "both", "absent"):
            done = results.setdefault(attack, [])
            if any(r["seed"] == seed for r in done):
                continue
            started = time.monotonic()
            r = run_once(aggregator="weighted-mean", attack=attack, seed=seed, rounds=rounds, work=work,
                         scenario=scenario, overrides=RUN_SEED_NOISE, with_state=True)
            arrays = r.pop("arrays")
            r.pop("ledger")
            np.savez(work / f"compare-{attack}-{seed}.npz", **arrays)
            r |= {"seed": seed, "rounds": rounds, "seconds": round(time.monotonic() - started, 1)}
            done.append(r)
            print("compare", attack, r, flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
    for seed in range(seeds):
        a, b = (np.load(work / f"compare-{x}-{seed}.npz") for x in ("both", "absent"))
        same = all(np.array_equal(a[k], b[k]) for k in a.files)
        acc = {x: next(r["accuracy"] for r in results[x] if r["seed"] == seed) for x in ("none", "both", "absent")}
        print(f"seed {seed}: benign {acc['none']:.4f}  attacked {acc['both']:.4f}  without attacker "
              f"{acc['absent']:.4f}  attacked - benign {acc['both'] - acc['none']:+.4f}  "
              f"attacked == without attacker (bit for bit): {same}")
    return results


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def _table(results: dict) -> str:
    """Markdown table: accuracy / balanced accuracy, mean ± sd over seeds, per aggregator and attack."""
    lines = ["| aggregator | " + " | ".join(ATTACKS) + " |", "|---" * (len(ATTACKS) + 1) + "|"]
    for agg in AGGREGATORS:
        cells = []
        for attack in ATTACKS:
            accs = [r["accuracy"] for r in results.get(agg, {}).get(attack, []) if "accuracy" in r]
            baccs = [r["balanced_accuracy"] for r in results.get(agg, {}).get(attack, []) if "balanced_accuracy" in r]
            n = f" (n={len(accs)})" if accs else ""
            refused = any("refused" in r for r in results.get(agg, {}).get(attack, []))
            if refused:
                cells.append("refused")
            elif accs:
                cells.append(f"{_mean_sd(accs)} / {_mean_sd(baccs)}{n}")
            else:
                cells.append("–")
        lines.append(f"| {agg} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--aggregators", default=",".join(AGGREGATORS))
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/robust_aggregation.json"))
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the sites' state (kept: their note-feature and calibration caches); default a "
                        "new temporary folder")
    p.add_argument("--compare", action="store_true",
                   help="issue 12: benign / attacked / without-attacker runs (run-seed noise) instead of the grid")
    p.add_argument("--table", type=Path, nargs="+", default=None,
                   help="only print the table of these result files (merged), running nothing")
    a = p.parse_args(argv)
    if a.table:
        merged: dict = {}
        for path in a.table:
            for agg, cells in json.loads(path.read_text()).items():
                for attack, runs in cells.items():
                    cell = merged.setdefault(agg, {}).setdefault(attack, [])
                    cell.extend(r for r in runs if all(r.get("seed") != o.get("seed") for o in cell))  # seed once
        print(_table(merged))
        return 0
    from common.config import ConfigError

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    work = a.work or Path(tempfile.mkdtemp(prefix="robust-aggregation-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.compare:
        compare(seeds=a.seeds, rounds=a.rounds, work=work, out=a.out)
        return 0
    results: dict = json.loads(a.out.read_text()) if a.out.exists() else {}
    refused: set[str] = set()
    for seed in range(a.seeds):  # seed outermost: every cell gets its first seed before any gets its second
        for agg in a.aggregators.split(","):
            for attack in a.attacks.split(","):
                done = results.setdefault(agg, {}).setdefault(attack, [])
                if agg in refused or any(r["seed"] == seed for r in done):
                    continue
                started = time.monotonic()
                try:
                    r = run_once(aggregator=agg, attack=attack, seed=seed, rounds=a.rounds, work=work)
                except ConfigError as err:
                    r = {"refused": str(err)}
                    refused.add(agg)
                r |= {"seed": seed, "rounds": a.rounds, "seconds": round(time.monotonic() - started, 1)}
                done.append(r)
                print(agg, attack, r, flush=True)
                a.out.parent.mkdir(parents=True, exist_ok=True)
                a.out.write_text(json.dumps(results, indent=1))
    print(_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
