"""A whole federation in one process: the real site round and the real strategy, without Flower's runtime.

``benchmarks/utility.py`` needs a few hundred federated runs; through Flower's simulation engine (Ray actors,
a SuperLink, one ``flwr run`` each) that would take many hours on 2 cores. This driver runs the SAME code a
simulated federation runs, minus the transport:

* the server side is the strategy ``server/app.py`` builds (``server.optimizers.build_strategy``: ModalityFedAvg
  or Flower's FedProx / FedOpt on top of it); each round calls its ``configure_train`` (Flower's sampling and
  message construction, with a grid that knows the site ids) and its ``aggregate_train`` on reply Messages;
* each site answers a train message exactly as ``client/app.py``'s handler does: ``SiteRound.from_flower`` with
  the run config, its node config and the message's config, then ``SiteRound.train`` (terms, ledger reservation,
  Opacus DP-SGD, accountant check, signed ledger head) and ``SiteRound.evaluate`` on the final model.

What is left out: Flower's transport, Ray, the recorder's files, checkpoints and replay caches. Each run starts with
empty site ledgers (``fresh_ledgers``), so every run spends its own budget from zero, as a new site would.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.downlink import received_state
from client.round import SiteRound
from common.config import load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.packing import reply_arrays
from common.privacy.ledger_guard import HEAD_MARK_FILE
from common.records import ARRAYS, CONFIG, METRICS, PRIVACY
from server.identity import registry_from_scenario
from server.optimizers import build_strategy
from server.strategy import validation_kwargs

__all__ = ["FederationResult", "SiteResult", "fresh_ledgers", "run_federation", "weighted"]


class _Grid:
    """The part of Flower's Grid that ``configure_train`` uses: which nodes are connected."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


@dataclass(frozen=True)
class SiteResult:
    site: str
    metrics: dict[str, float]  # SiteRound.evaluate of the final global model (test rows; ablations included)
    epsilon: float  # cumulative ε in the site's last reply (its own report: PRV; inf after a release without DP)
    delta: float
    rounds_trained: int  # rounds in which the site trained and released an update in this run


@dataclass(frozen=True)
class FederationResult:
    sites: dict[str, SiteResult]
    arrays: dict[str, np.ndarray] = field(repr=False)  # the final global trainable tensors


def fresh_ledgers(state_root: Path) -> None:
    """Remove every site's ledger, its signed-head mark and its replay cache under ``state_root``: each benchmark
    run is a new dataset's first run (the site's guard refuses a missing ledger beside a head mark); feature and
    calibration caches stay."""
    for ledger in state_root.glob("*/ledger.sqlite*"):
        ledger.unlink()
    for mark in state_root.glob(f"*/{HEAD_MARK_FILE}"):
        mark.unlink()
    for replay in state_root.glob("*/replay"):
        shutil.rmtree(replay, ignore_errors=True)


def _ensure_task_identity() -> None:
    # Messages take their run id from Flower's task identity, as inside a ServerApp
    if TaskIdentity._run_id is None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def run_federation(run_config: Mapping[str, Any], *, run_id: str = "bench") -> FederationResult:
    """One federation: ``num-server-rounds`` rounds with every site of the scenario, then each site's evaluation.

    ``run_config`` is a complete ``[tool.flwr.app.config]`` mapping (defaults merged), with ``scenario-file`` and
    ``site-state-root`` set. Sites that decline or fail are skipped by the strategy, as in a real run.
    """
    _ensure_task_identity()
    run = parse_run_config(run_config)
    scenario = load_scenario(run.paths.scenario_file)
    n = len(scenario.sites)
    fed = run.federation
    nodes = list(range(1, n + 1))  # node i is partition i - 1, as in Flower's simulation
    registry = registry_from_scenario(scenario, discover=lambda: nodes)
    strategy = build_strategy(run.strategy, **validation_kwargs(run, registry), recorder=None,
                              fraction_train=fed.fraction_train,
                              min_train_nodes=min(fed.min_train_nodes, n), fraction_evaluate=0.0,
                              min_available_nodes=min(fed.min_available_nodes, n))
    arrays = ArrayRecord(initial_trainable_state(build_model(run.model, scenario=scenario, seed=fed.seed)))
    grid = _Grid(list(range(1, n + 1)))
    federation_id = f"{run_id}-{fed.seed}"
    last: dict[int, dict[str, Any]] = {}  # node -> its last reply's privacy record
    trained = dict.fromkeys(range(1, n + 1), 0)
    for rnd in range(1, fed.num_rounds + 1):
        config = ConfigRecord({"federation-id": federation_id, "num-server-rounds": fed.num_rounds})
        replies = []
        for msg in strategy.configure_train(rnd, arrays, config, grid):
            node = msg.metadata.dst_node_id
            job = SiteRound.from_flower(run_config, {"partition-id": node - 1, "num-partitions": n},
                                        msg.content[CONFIG], run_id)
            outcome = job.train(received_state({k: a.numpy() for k, a in msg.content[ARRAYS].items()}, job.layout()))
            content = RecordDict({METRICS: MetricRecord(outcome.metrics), PRIVACY: ConfigRecord(outcome.privacy)})
            if outcome.arrays is not None:  # as client/app.py sends them
                wire = reply_arrays(outcome.arrays, mode=outcome.privacy["mode"])
                content[ARRAYS] = ArrayRecord({k: Array(v) for k, v in wire.items()})
            reply = Message(content=content, reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = node  # as Flower's transport sets it  # noqa: SLF001
            replies.append(reply)
            last[node] = dict(outcome.privacy)
            trained[node] += outcome.arrays is not None
        if not any(outcome_arrays(r) for r in replies):  # a benchmark row nobody trained is no result at all
            reasons = "; ".join(f"{p.get('site')}: {p.get('status')} ({p.get('reason')})" for p in last.values())
            raise RuntimeError(f"round {rnd}: no site trained: {reasons}")
        new, _ = strategy.aggregate_train(rnd, replies)
        if new is not None:
            arrays = new
    state = arrays.to_torch_state_dict()
    results = {}
    for i, spec in enumerate(scenario.sites):
        job = SiteRound.from_flower(run_config, {"partition-id": i, "num-partitions": n},
                                    {"server-round": fed.num_rounds, "federation-id": federation_id}, run_id)
        metrics = job.evaluate(state)
        report = last.get(i + 1, {})
        results[spec.name] = SiteResult(site=spec.name, metrics=metrics,
                                        epsilon=float(report.get("epsilon", math.nan)),
                                        delta=float(report.get("delta", math.nan)), rounds_trained=trained[i + 1])
    return FederationResult(sites=results, arrays={k: v.numpy() for k, v in arrays.items()})


def outcome_arrays(reply: Message) -> bool:
    """Whether a reply carries an update."""
    return ARRAYS in reply.content.array_records


def weighted(result: FederationResult, key: str, *, sites: tuple[str, ...] | None = None) -> float:
    """Test-row-weighted mean of ``key`` over ``sites`` (default all) that report a finite value."""
    rows = [(r.metrics.get(key, math.nan), r.metrics.get("num-examples", 0.0)) for name, r in result.sites.items()
            if sites is None or name in sites]
    rows = [(v, w) for v, w in rows if math.isfinite(v) and w > 0]
    return sum(v * w for v, w in rows) / sum(w for _, w in rows) if rows else math.nan
