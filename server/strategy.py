"""FedAvg that knows which site holds which modality branch, and takes no site's word for what it can check.

Flower's stock ``FedAvg.aggregate_train`` rejects replies whose array keys differ, weights whole replies by what
they claim, and replaces the global model with whatever it returns. This subclass keeps Flower's loop
(``Strategy.start``), sampling and message construction, and changes only what aggregation means. Each round:

1. every reply is read defensively (``server/replies.py``): bound to a site by its node (``server/identity.py``),
   its status from a closed set, its arrays, weight and privacy record checked; anything malformed fails that
   reply, with a logged reason, and the round goes on;
2. a reply for a (site, round) this server already recorded must carry the update it recorded (same digest);
3. the round is recorded once, after validation (``server/recorder.py``: one ledger transaction for all replies,
   failed ones included, with each signed ledger head that verifies); a node sampled in ``configure_train`` that
   sent no reply at all (timed out, crashed, disconnected) gets a ``no-reply`` row: it may have spent the round;
4. each branch is combined over the sites that sent it by the ``aggregator`` setting (``server/aggregation.py``,
   Flower's own functions) and merged into the global arrays, which ``aggregate_train`` returns.

The train and evaluate messages carry the global arrays packed, one flat array per branch (``server/downlink.py``);
``self._global`` and what Flower's loop and FedOpt hold stay per tensor.

Flower's FedOpt family (FedAdam, ...) applies its server step to what ``FedAvg.aggregate_train`` returns: composed
with this class (``ModalityFedAvg`` first in the MRO), it steps on the merged arrays, whatever the aggregator.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import ERROR, INFO, WARNING
from typing import Any, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.config import AggregationSettings, RunConfig
from common.privacy.accountant import Mechanism
from common.records import EVALUATE_GLOBAL, NUM_EXAMPLES, STATUS_FAILED, TIMING_KEYS
from server.aggregation import merge
from server.downlink import pack_downlink
from server.identity import SiteRegistry
from server.replies import (
    NO_REPLY,
    ReadReply,
    ReplyRules,
    SiteEvaluation,
    SiteReply,
    no_reply,
    read_evaluation,
    read_train_reply,
)

__all__ = ["SiteReply", "SiteEvaluation", "RoundRecorder", "ModalityFedAvg", "validation_kwargs"]


class RoundRecorder(Protocol):
    def on_train(self, server_round: int, replies: list[SiteReply]) -> None: ...
    def on_aggregated(self, server_round: int, arrays: dict[str, np.ndarray]) -> None: ...
    def on_timing(self, server_round: int, phase: str, wall_s: float, sites: list[dict[str, float]]) -> None: ...
    def on_evaluate(self, server_round: int, evaluations: list[SiteEvaluation]) -> None: ...
    def history(self, site: str, *, before_round: int) -> list[Mechanism] | None: ...
    def recorded_digest(self, site: str, server_round: int) -> str | None: ...
    def pinned_key(self, site: str) -> str: ...


def _timing(metrics: dict[str, float]) -> dict[str, float]:
    """A reply's time split (client/timing.py), as the recorder takes it."""
    return {k: float(metrics[k]) for k in TIMING_KEYS if k in metrics}


def _weighted_mean(rows: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Weighted mean per metric over the rows that report a finite value for it."""
    out: dict[str, float] = {}
    keys = {k for m, _ in rows for k in m if k != NUM_EXAMPLES}
    for k in sorted(keys):
        vals = [(m[k], w) for m, w in rows if k in m and np.isfinite(m[k])]
        if vals:
            out[k] = float(sum(v * w for v, w in vals) / sum(w for _, w in vals))
    return out


def _failed(read: ReadReply, why: str) -> ReadReply:
    r = read.reply
    reply = SiteReply(r.site, r.node_id, STATUS_FAILED, 0.0, r.privacy, r.metrics, error=why, rejected=True,
                      digest=r.digest)
    return ReadReply(reply, None, read.evaluation)


def validation_kwargs(run: RunConfig, registry: SiteRegistry) -> dict[str, Any]:
    """What :class:`ModalityFedAvg` checks replies against, from the run's settings: pass as ``**kwargs``."""
    return {"registry": registry, "aggregation": run.aggregation, "batch_size": run.train.batch_size,
            "local_epochs": run.train.local_epochs}


class ModalityFedAvg(FedAvg):
    """FedAvg with validated replies, per-branch robust aggregation and a recorder for every reply.

    Parameters
    ----------
    registry : SiteRegistry
        Who each node is, its modalities and max-records (never taken from a reply).
    aggregation : AggregationSettings
        The aggregator, f, the weighting and the update-norm bound.
    batch_size, local_epochs : int
        The run's settings: with a site's max-records they fix its sample rate and steps (checked in replies).
    recorder : RoundRecorder | None
        Where every reply, the merged arrays, timing and evaluations go.
    round_offset : int
        Rounds completed before a restart: round r of the loop is r + offset.
    fold_evaluation : bool
        Sites evaluate the received global model inside the train reply.
    **fedavg_kwargs
        Flower's FedAvg sampling settings.
    """

    def __init__(self, *, registry: SiteRegistry, aggregation: AggregationSettings, batch_size: int,
                 local_epochs: int, recorder: RoundRecorder | None = None, round_offset: int = 0,
                 fold_evaluation: bool = False, **fedavg_kwargs: Any) -> None:
        # the final evaluation's sampling (``fraction-evaluate``, its minimum), also when rounds fold evaluation
        # (Flower zeroes min_evaluate_nodes when fraction_evaluate is 0)
        self._final_sampling = (float(fedavg_kwargs.get("fraction_evaluate", 1.0)),
                                int(fedavg_kwargs.get("min_evaluate_nodes", 2)))
        if fold_evaluation:  # sites evaluate inside the train reply; no separate evaluate messages per round
            fedavg_kwargs["fraction_evaluate"] = 0.0
        super().__init__(**fedavg_kwargs)
        self.registry, self.aggregation = registry, aggregation
        self.batch_size, self.local_epochs = batch_size, local_epochs
        self.recorder = recorder
        self.fold_evaluation = fold_evaluation
        self.round_offset = round_offset
        self._global: ArrayRecord | None = None
        self._sampled: list[int] = []  # the nodes this round's train messages went to
        self._sent: list[Message] = []  # those messages (Flower's grid sets their message ids when it pushes them)

    # The loop hands us the current global arrays here; keep them to merge into.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays
        self._round_started = time.monotonic()
        if self.fold_evaluation:
            config[EVALUATE_GLOBAL] = True
        # Flower's sampling and messages (FedOpt keeps its per-tensor copy here); the messages carry them packed
        messages = pack_downlink(super().configure_train(server_round + self.round_offset, arrays, config, grid))
        self._sampled = [m.metadata.dst_node_id for m in messages]
        self._sent = messages
        return messages

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._evaluate_started = time.monotonic()
        return pack_downlink(super().configure_evaluate(server_round + self.round_offset, arrays, config, grid))

    def _rules(self, global_np: Mapping[str, np.ndarray], server_round: int) -> ReplyRules:
        rec = self.recorder
        return ReplyRules(
            registry=self.registry, global_arrays=global_np, max_update_norm=self.aggregation.max_update_norm,
            weighting=self.aggregation.weighting, batch_size=self.batch_size, local_epochs=self.local_epochs,
            history=(lambda site: rec.history(site, before_round=server_round)) if rec else (lambda site: []),
            pinned_key=rec.pinned_key if rec else (lambda site: ""))

    def _check_round(self, server_round: int, read: list[ReadReply]) -> list[ReadReply]:
        """One accepted update per site, and a reply for a round already recorded carries the recorded update."""
        seen: set[str] = set()
        out = []
        for r in read:
            if r.update is not None:
                recorded = self.recorder.recorded_digest(r.reply.site, server_round) if self.recorder else None
                if r.reply.site in seen:
                    r = _failed(r, f"a second update from site '{r.reply.site}' in round {server_round}")
                elif recorded is not None and recorded != r.reply.digest:
                    r = _failed(r, f"a {r.reply.status} reply for round {server_round}, which this server already "
                                   f"recorded for site '{r.reply.site}' with another update (sha256 {recorded[:12]})")
                seen.add(r.reply.site)
            out.append(r)
        return out

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        server_round += self.round_offset
        global_np = {k: v.numpy() for k, v in self._global.items()}
        rules = self._rules(global_np, server_round)
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in self._sent if m.metadata.message_id}
        read = self._check_round(server_round, [read_train_reply(m, rules, sent_to=sent_to) for m in replies])
        answered = {r.reply.node_id for r in read}
        read += [ReadReply(no_reply(node, self.registry), None, None) for node in self._sampled if node not in answered]
        site_replies = [r.reply for r in read]
        for r in site_replies:
            if r.status in (STATUS_FAILED, NO_REPLY):
                log(WARNING, "round %d: site %s %s%s: %s", server_round, r.site, r.status,
                    " (rejected by the server)" if r.rejected else "", r.error)
        counts = {s: sum(r.status == s for r in site_replies)
                  for s in ("trained", "replayed", "declined", "failed", NO_REPLY)}
        log(INFO, "round %d: %s", server_round, ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        updates = [r.update for r in read if r.update is not None]
        if self.recorder:
            self.recorder.on_timing(server_round, "train", time.monotonic() - self._round_started,
                                    [_timing(r.metrics) for r in site_replies])
            folded = [r.evaluation for r in read if r.evaluation is not None]
            if folded:  # metrics of the model the sites received = the previous round's global model
                self.recorder.on_evaluate(server_round - 1, folded)
            self.recorder.on_train(server_round, site_replies)  # the round's ledger rows: once, after validation
        merged = None
        if updates:
            try:
                result = merge(global_np, updates, aggregator=self.aggregation.aggregator,
                               num_malicious=self.aggregation.num_malicious_sites)
                merged = result.arrays
                for branch, why in result.skipped.items():
                    log(WARNING, "round %d: the %s branch keeps its global value: %s", server_round, branch, why)
                log(INFO, "round %d: %s", server_round, "; ".join(
                    f"{b} <- {', '.join(s)}" for b, s in result.used.items()))
            except Exception as err:  # noqa: BLE001 - the ledger is written; the model stays as it was
                log(ERROR, "round %d: aggregation failed (%s: %s); the global model keeps its value", server_round,
                    type(err).__name__, err)
        if self.recorder:
            self.recorder.on_aggregated(server_round, merged if merged is not None else global_np)
        if merged is None:
            return None, None  # the loop keeps the current global arrays
        metrics = _weighted_mean([(r.metrics, r.num_examples) for r in site_replies if r.num_examples > 0])
        metrics[NUM_EXAMPLES] = float(sum(u.weight for u in updates))
        return ArrayRecord({k: Array(v) for k, v in merged.items()}), MetricRecord(metrics)

    def evaluate_final(self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, *, server_round: int,
                       timeout: float) -> MetricRecord | None:
        """One evaluate round of the final model (with folded evaluation, nothing else evaluates it).

        It asks ``fraction-evaluate`` of the sites (at least ``min_evaluate_nodes``), sampled by Flower's own
        ``configure_evaluate``: a 1000-site run at 10 % evaluates 100 sites, not all 1000.
        """
        folded = (self.fraction_evaluate, self.min_evaluate_nodes)
        self.fraction_evaluate, self.min_evaluate_nodes = self._final_sampling
        try:  # Flower's sampling and messages; our configure_evaluate adds the round offset back
            messages = list(self.configure_evaluate(server_round - self.round_offset, arrays, config, grid))
        finally:
            self.fraction_evaluate, self.min_evaluate_nodes = folded
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        return self.aggregate_evaluate(server_round - self.round_offset, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        if not replies:
            return None
        started = getattr(self, "_evaluate_started", None)
        evaluations = []
        for msg in replies:
            evaluation = read_evaluation(msg, self.registry)
            if evaluation is None:
                log(WARNING, "round %d: no usable evaluation from node %s", server_round, msg.metadata.src_node_id)
            else:
                evaluations.append(evaluation)
        if self.recorder:
            self.recorder.on_evaluate(server_round, evaluations)
            if started is not None:
                self.recorder.on_timing(server_round, "evaluate", time.monotonic() - started,
                                        [_timing(e.metrics) for e in evaluations])
        rows = [(e.metrics, e.metrics.get(NUM_EXAMPLES, 0.0)) for e in evaluations if e.metrics.get(NUM_EXAMPLES)]
        if not rows:
            return None
        agg = _weighted_mean(rows)
        agg[NUM_EXAMPLES] = float(sum(w for _, w in rows))
        return MetricRecord(agg)
