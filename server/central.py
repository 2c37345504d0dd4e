"""``privacy-mode = "central"``: site-level DP of the released model, with Flower's DP wrapper and accountant.

The run: :func:`common.privacy.central.plan_central` checks the settings and fixes σ BEFORE any training; then
Flower's ``DifferentialPrivacyServerSideFixedClipping`` wraps a plain Flower ``FedAvg`` (equal weights on
``site-weight``, un-overridden ``aggregate_train``) with a ``RdpAccountant`` (no amplification). Flower clips,
noises and accounts; nothing here touches an update or an ε formula. :class:`CentralDPStrategy` only adds the
records, after Flower's own ``aggregate_train`` has run:

* one server-ledger row per round for the whole federation (site ``"*federation*"``): the mechanism
  (σ, q = m/N for the record, steps = 1 release, C, δ, accountant) and the cumulative ε Flower's accountant
  reports, with the sampling assumption in ``reason`` (:meth:`~common.privacy.central.CentralPlan.assumption`);
* one server-ledger row per site per round, with what the site reported: each site records its participation
  in its OWN ledger before its update leaves (record-level: the server's σ/2 as one Gaussian release, at the
  site's δ, against its lifetime budget), and signs its ledger head, which is recorded here as in sample mode;
* per-site train status and evaluation metrics in ``metrics.csv`` / ``summary.json``, and
  ``summary.json["central_dp"]`` with Flower's ε and dp_accounting's PLD ε beside it.

A round in which any site declines (its own file refuses central mode, or its budget is spent) or fails releases
nothing: the noise is sized for every site taking part (zero-out-one-site, ``common/privacy/central.py``), so
Flower's wrapper is handed only the replies that carry a model, sees fewer than it sampled, and skips the round.
The server sees every site's raw update (trusted curator); the ledger rows and the audit say so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from common.config import ConfigError, RunConfig, Scenario
from common.factory import build_model, initial_trainable_state
from common.privacy.central import FEDERATION_SITE, CentralPlan, central_accountant, federation_row, plan_central
from common.privacy.ledger import Ledger
from common.privacy.reference import epsilon_pld
from common.records import ARRAYS, CENTRAL_NOISE_MULTIPLIER, METRICS, NUM_EXAMPLES, PRIVACY, SITE, SITE_WEIGHT
from common.storage import atomic_write_bytes
from server.downlink import pack_downlink
from server.recorder import RunRecorder
from server.strategy import SiteEvaluation, SiteReply

__all__ = ["CentralDPStrategy", "run_central"]

log = logging.getLogger(__name__)


class CentralDPStrategy(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed-clipping DP wrapper (with its accountant) plus the run's records.

    Parameters
    ----------
    plan : CentralPlan
        The checked mechanism (σ, C, m, N, δ, planned ε per release).
    recorder : RunRecorder
        Where rows and metrics go.
    federation_id, run_id : str
        Identify the rows.
    **fedavg_kwargs
        Sampling settings for the inner ``FedAvg`` (``fraction_train``, ``min_train_nodes``, ...).
    """

    def __init__(self, *, plan: CentralPlan, recorder: RunRecorder, federation_id: str, run_id: str,
                 **fedavg_kwargs: Any) -> None:
        accountant = central_accountant(num_sites=plan.num_sites, delta=plan.delta, max_epsilon=plan.target_epsilon)
        super().__init__(FedAvg(weighted_by_key=SITE_WEIGHT, **fedavg_kwargs), plan.noise_multiplier,
                         plan.clipping_norm, plan.sampled_sites, accountant=accountant)
        self.plan, self.recorder = plan, recorder
        self.federation_id, self.run_id = federation_id, run_id
        self._sites: dict[int, str] = {}  # node id -> site name, learnt from replies

    def _site_of(self, msg: Message) -> str:
        node = msg.metadata.src_node_id
        if not msg.has_error():
            records = msg.content.config_records
            name = records[PRIVACY].get("site") if PRIVACY in records else (
                records[SITE].get("name") if SITE in records else None)
            if name:
                self._sites[node] = str(name)
        return self._sites.get(node, f"node-{node}")

    def _site_reply(self, msg: Message) -> SiteReply:
        site, node = self._site_of(msg), msg.metadata.src_node_id
        if msg.has_error():
            return SiteReply(site, node, "failed", 0, error=str(msg.error.reason))
        privacy = dict(msg.content.config_records.get(PRIVACY, {}))
        status = str(privacy.get("status", "failed"))
        if status == "trained" and ARRAYS not in msg.content.array_records:
            status = "failed"
        return SiteReply(site, node, status, 0, privacy, dict(msg.content.metric_records.get(METRICS, {})),
                         error=str(privacy.get("reason", "")) if status == "failed" else "")

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's wrapper keeps ``arrays`` per tensor (it clips each reply against them); the messages carry them
        packed (``server/downlink.py``)."""
        return pack_downlink(super().configure_train(server_round, arrays, config, grid))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return pack_downlink(super().configure_evaluate(server_round, arrays, config, grid))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's clipping, equal-weight FedAvg, noise and accounting; then the records of the round.

        Only replies that carry a model go to Flower's wrapper: if any site declined or failed, it sees fewer than
        it sampled and releases nothing (the noise is sized for every site).
        """
        replies = list(replies)
        site_replies = [self._site_reply(m) for m in replies]
        models = [m for m, r in zip(replies, site_replies) if r.status in ("trained", "replayed")]
        order = list(self.current_arrays.keys())
        for m in models:
            _in_global_order(m, order)
        before = self.accountant.num_releases
        arrays, metrics = super().aggregate_train(server_round, models)
        released = self.accountant.num_releases == before + 1 and arrays is not None
        self.recorder.on_train(server_round, site_replies)  # each site's own record-level report and ledger head
        self._record_round(server_round, site_replies, released)
        return arrays, metrics

    def _record_round(self, server_round: int, sites: list[SiteReply], released: bool) -> None:
        plan, rec = self.plan, self.recorder
        k = self.accountant.num_releases
        epsilon = float(self.accountant.get_privacy_spent().epsilon) if k else 0.0
        if k and not math.isclose(epsilon, plan.planned_epsilon[k - 1], rel_tol=1e-12):
            raise RuntimeError(f"round {server_round}: Flower's accountant reports ε={epsilon} after {k} releases, "
                               f"the plan checked before training said {plan.planned_epsilon[k - 1]}")
        missing = [r.site for r in sites if r.status not in ("trained", "replayed")]
        note = "" if released else (f"no release: Flower's DP wrapper skipped the round ({len(sites)} replies, "
                                    f"{len(missing)} without a model: {missing}; {plan.sampled_sites} needed)")
        if rec.ledger is not None:
            rec.ledger.append(federation_row(plan, server_round=server_round, released=released, epsilon=epsilon,
                                             federation_id=self.federation_id, run_id=self.run_id, note=note))
        if not released:
            for r in sites:
                row = rec.rows.get((server_round, r.site))
                if row is not None and row.get("status") in ("trained", "replayed"):
                    row["status"] = "not-released"
        rec.rows[(server_round, FEDERATION_SITE)] = {
            "round": server_round, "site": FEDERATION_SITE, "status": "trained" if released else "failed",
            "mode": "central", "epsilon": epsilon, "epsilon-rdp": epsilon, "noise-multiplier": plan.noise_multiplier,
            "sample-rate": plan.sample_rate, "steps": 1 if released else 0}
        pld = epsilon_pld([(plan.noise_multiplier, 1.0, k)], delta=plan.delta) if k else 0.0
        rec.run_info["central_dp"] = _plan_info(plan) | {
            "releases": k, "epsilon": epsilon, "epsilon_pld": pld, "last_round": server_round}
        log.info("round %d: %s; site-level epsilon %.4f after %d releases (Flower RDP; dp_accounting PLD %.4f), "
                 "delta %g", server_round, "released" if released else "NOT released", epsilon, k, pld, plan.delta)
        rec.flush()

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Per-site evaluation metrics to the recorder; their example-weighted mean (metrics are not private)."""
        evaluations = []
        for msg in replies:
            site = self._site_of(msg)
            if msg.has_error():
                log.warning("round %d: evaluation failed at %s: %s", server_round, site, msg.error.reason)
                continue
            metrics = {k: float(v) for k, v in msg.content.metric_records.get(METRICS, {}).items()}
            evaluations.append(SiteEvaluation(site, msg.metadata.src_node_id, metrics))
        self.recorder.on_evaluate(server_round, evaluations)
        rows = [e.metrics for e in evaluations if e.metrics.get(NUM_EXAMPLES)]
        if not rows:
            return None
        total = sum(m[NUM_EXAMPLES] for m in rows)
        keys = sorted({k for m in rows for k in m if k != NUM_EXAMPLES})
        agg = {k: sum(m[k] * m[NUM_EXAMPLES] for m in rows if k in m and math.isfinite(m[k])) /
               max(sum(m[NUM_EXAMPLES] for m in rows if k in m and math.isfinite(m[k])), 1e-12) for k in keys}
        return MetricRecord({**agg, NUM_EXAMPLES: float(total)})


def _in_global_order(msg: Message, order: list[str]) -> None:
    """Flower's wrapper clips a reply against the global arrays by POSITION (``to_numpy_ndarrays``): a reply with
    exactly the global tensors, in another order, is put in the global order (the same Arrays; no value changes).
    The train message no longer carries the server's order: it is packed per branch (``server/downlink.py``)."""
    record = msg.content.array_records.get(ARRAYS)
    if record is not None and list(record) != order and set(record) == set(order):
        msg.content[ARRAYS] = ArrayRecord({k: record[k] for k in order})


def _plan_info(plan: CentralPlan) -> dict[str, Any]:
    return {"noise_multiplier": plan.noise_multiplier, "calibrated": plan.calibrated,
            "clipping_norm": plan.clipping_norm, "delta": plan.delta, "target_epsilon": plan.target_epsilon,
            "num_sites": plan.num_sites, "sampled_sites": plan.sampled_sites, "planned_rounds": plan.num_rounds,
            "planned_epsilon": list(plan.planned_epsilon), "assumption": plan.assumption(),
            "ledger_site": FEDERATION_SITE}


def _refuse_resume(run: RunConfig, federation_id: str) -> None:
    path = run.paths.out_dir / "ledger.sqlite" if run.paths.out_dir else None
    if path is None or not path.exists():
        return
    if any(e.site == FEDERATION_SITE and e.federation_id == federation_id for e in Ledger(path).entries()):
        raise ConfigError(f"privacy-mode = \"central\": {path} already holds central rows of federation "
                          f"'{federation_id}'; resuming a central-DP federation is not supported (its accountant "
                          "would restart at ε = 0). Use a new out-dir or federation-id")


def run_central(grid: Grid, context: Context, *, run: RunConfig, scenario: Scenario) -> None:
    """The whole central-DP run: check and plan, train with Flower's DP wrapper, save the model and records."""
    plan = plan_central(run, scenario)  # raises ConfigError before any message is sent
    federation_id = run.federation.federation_id or f"run-{context.run_id}"
    _refuse_resume(run, federation_id)
    initial = initial_trainable_state(build_model(run.model, scenario=scenario, seed=run.federation.seed))
    recorder = RunRecorder(
        out_dir=run.paths.out_dir, federation_id=federation_id, run_id=str(context.run_id),
        run_info={
            "scenario": scenario.name, "scenario_description": scenario.description,
            "modalities": list(scenario.modalities), "num_rounds": run.federation.num_rounds,
            "fusion": run.model.fusion, "text_encoder": run.model.text_encoder, "privacy_mode": "central",
            "central_dp": _plan_info(plan) | {"releases": 0, "epsilon": 0.0},
            "accountant_note": (f"privacy-mode central: SITE-level (ε, δ={plan.delta:g}) of the released models, "
                                "zero-out-one-site with every site in every round, Flower RdpAccountant without "
                                f"sampling amplification; ledger site '{FEDERATION_SITE}'. The server sees every raw "
                                "update (trusted curator). Each site's epsilon is its own record-level account of "
                                "its participation (the server's sigma/2 per round, at its own delta)"),
            "data_note": scenario.description,
        },
    )
    fed = run.federation
    strategy = CentralDPStrategy(
        plan=plan, recorder=recorder, federation_id=federation_id, run_id=str(context.run_id),
        fraction_train=fed.fraction_train, min_train_nodes=fed.min_train_nodes,
        fraction_evaluate=fed.fraction_evaluate, min_evaluate_nodes=min(fed.min_train_nodes, fed.min_available_nodes),
        min_available_nodes=fed.min_available_nodes)
    started = time.time()
    config = ConfigRecord({"federation-id": federation_id, "num-server-rounds": fed.num_rounds,
                           CENTRAL_NOISE_MULTIPLIER: plan.noise_multiplier})  # each site records its release with it
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=fed.num_rounds,
                            timeout=fed.round_timeout, train_config=config, evaluate_config=ConfigRecord(dict(config)))
    final = result.arrays if len(result.arrays) else ArrayRecord(initial)
    recorder.run_info["duration_s"] = round(time.time() - started, 1)
    recorder.run_info["completed"] = True
    if run.paths.out_dir is not None:
        from safetensors.numpy import save

        arrays = {k: np.asarray(v.numpy()) for k, v in final.items()}
        atomic_write_bytes(run.paths.out_dir / "model.safetensors",
                           save(arrays, metadata={"federation_id": federation_id, "scenario": scenario.name,
                                                  "privacy_mode": "central"}))
    recorder.flush()
