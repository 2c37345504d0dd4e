"""FedAvg that knows which site holds which modality branch.

Flower's stock ``FedAvg.aggregate_train`` rejects replies whose array keys differ and
replaces the global model with whatever it returns (keys nobody sent vanish). This
subclass keeps Flower's loop (``Strategy.start``), sampling and message construction, and
changes only what aggregation means:

* each tensor is averaged over the sites that trained it, weighted by their examples, and
  merged into the current global arrays (``server/aggregation.py``);
* sites that declined (privacy budget) or failed are skipped, and every reply — trained,
  declined or failed — is handed to the :class:`RoundRecorder` (server ledger, metrics).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, Iterable, Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.records import (ARRAYS, CONFIG, EVALUATE_GLOBAL, EVALUATION, METRICS, NUM_EXAMPLES, PRIVACY, SITE,
                            STATUS_DECLINED, STATUS_FAILED, TIMING_KEYS)
from server.aggregation import Update, UpdateError, check_update, merge_weighted, npy_view

__all__ = ["SiteReply", "SiteEvaluation", "RoundRecorder", "ModalityFedAvg"]


@dataclass(frozen=True)
class SiteReply:
    site: str  # site name (from its privacy record), or "node-<id>" if unknown
    node_id: int
    status: str  # trained | declined | replayed | failed
    num_examples: int
    privacy: dict[str, Any] = field(default_factory=dict)  # the site's PRIVACY ConfigRecord
    metrics: dict[str, float] = field(default_factory=dict)  # its train MetricRecord
    error: str = ""  # why it failed


@dataclass(frozen=True)
class SiteEvaluation:
    site: str
    node_id: int
    metrics: dict[str, float]


class RoundRecorder(Protocol):
    def on_train(self, server_round: int, replies: list[SiteReply]) -> None: ...
    def on_aggregated(self, server_round: int, arrays: dict[str, np.ndarray]) -> None: ...
    def on_timing(self, server_round: int, phase: str, wall_s: float, sites: list[dict[str, float]]) -> None: ...
    def on_evaluate(self, server_round: int, evaluations: list[SiteEvaluation]) -> None: ...


def _timing(metrics: dict[str, float]) -> dict[str, float]:
    """A reply's time split (client/timing.py), as the recorder takes it."""
    return {k: float(metrics[k]) for k in TIMING_KEYS if k in metrics}


def _view_or_copy(array: Array) -> np.ndarray:
    view = npy_view(array.data, dtype=array.dtype, shape=array.shape)
    return view if view is not None else array.numpy()


def _weighted_mean(rows: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Weighted mean per metric over the rows that report a finite value for it."""
    out: dict[str, float] = {}
    keys = {k for m, _ in rows for k in m if k != NUM_EXAMPLES}
    for k in sorted(keys):
        vals = [(m[k], w) for m, w in rows if k in m and np.isfinite(m[k])]
        if vals:
            out[k] = float(sum(v * w for v, w in vals) / sum(w for _, w in vals))
    return out


class ModalityFedAvg(FedAvg):
    """FedAvg with per-tensor, per-modality aggregation and a recorder for every reply."""

    def __init__(self, *, recorder: RoundRecorder | None = None, round_offset: int = 0, fold_evaluation: bool = False,
                 **fedavg_kwargs: Any) -> None:
        if fold_evaluation:  # sites evaluate inside the train reply; no separate evaluate messages per round
            fedavg_kwargs["fraction_evaluate"] = 0.0
        super().__init__(**fedavg_kwargs)
        self.recorder = recorder
        self.fold_evaluation = fold_evaluation
        self.round_offset = round_offset  # rounds completed before a restart: round r of the loop is r + offset
        self._global: ArrayRecord | None = None
        self._sites: dict[int, str] = {}  # node id -> site name, learnt from replies

    # The loop hands us the current global arrays here; keep them to merge into.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._global = arrays
        self._round_started = time.monotonic()
        if self.fold_evaluation:
            config[EVALUATE_GLOBAL] = True
        return super().configure_train(server_round + self.round_offset, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        self._evaluate_started = time.monotonic()
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def _site_of(self, node_id: int) -> str:
        return self._sites.get(node_id, f"node-{node_id}")

    def _read_reply(self, msg: Message) -> tuple[SiteReply, Update | None]:
        node = msg.metadata.src_node_id
        if msg.has_error():
            return SiteReply(self._site_of(node), node, "failed", 0, error=str(msg.error.reason)), None
        content = msg.content
        privacy = dict(content.config_records[PRIVACY]) if PRIVACY in content.config_records else {}
        site = str(privacy.get("site") or self._site_of(node))
        self._sites[node] = site
        metrics = dict(content.metric_records[METRICS]) if METRICS in content.metric_records else {}
        n = int(metrics.get(NUM_EXAMPLES, 0))
        status = str(privacy.get("status", "failed" if not privacy else ""))
        if status == STATUS_DECLINED:
            return SiteReply(site, node, status, 0, privacy, metrics), None
        if status == STATUS_FAILED:  # the site caught its own error and said why
            return SiteReply(site, node, status, 0, privacy, metrics, error=str(privacy.get("reason", ""))), None
        if ARRAYS not in content.array_records or n <= 0:
            return SiteReply(site, node, "failed", n, privacy, metrics,
                             error="reply carries no arrays or no example count"), None
        # zero-copy views where the .npy header is the plain one (BENCHMARKS.md: aggregation), else Flower's copy
        arrays = {k: _view_or_copy(v) for k, v in content.array_records[ARRAYS].items()}
        return SiteReply(site, node, status or "trained", n, privacy, metrics), Update(site, arrays, float(n))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self._global is None:
            raise RuntimeError("aggregate_train called before configure_train")
        server_round += self.round_offset
        global_np = {k: v.numpy() for k, v in self._global.items()}
        site_replies, updates, folded = [], [], []
        for msg in replies:
            reply, update = self._read_reply(msg)
            if not msg.has_error() and EVALUATION in msg.content.metric_records:
                folded.append(SiteEvaluation(reply.site, reply.node_id,
                                             {k: float(v) for k, v in msg.content.metric_records[EVALUATION].items()}))
            if update is not None:
                try:
                    check_update(global_np, update)
                    updates.append(update)
                except UpdateError as err:  # a malformed update never crashes the federation
                    log(WARNING, "round %d: dropping update: %s", server_round, err)
                    reply = SiteReply(reply.site, reply.node_id, "failed", reply.num_examples, reply.privacy,
                                      reply.metrics, error=str(err))
            site_replies.append(reply)
        counts = {s: sum(r.status == s for r in site_replies) for s in ("trained", "replayed", "declined", "failed")}
        log(INFO, "round %d: %s", server_round, ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        if self.recorder:
            self.recorder.on_timing(server_round, "train", time.monotonic() - self._round_started,
                                    [_timing(r.metrics) for r in site_replies])
            if folded:  # metrics of the model the sites received = the previous round's global model
                self.recorder.on_evaluate(server_round - 1, folded)
            self.recorder.on_train(server_round, site_replies)
        if not updates:
            if self.recorder:
                self.recorder.on_aggregated(server_round, global_np)
            return None, None  # the loop keeps the current global arrays
        merged = merge_weighted(global_np, updates)
        if self.recorder:
            self.recorder.on_aggregated(server_round, merged)
        metrics = _weighted_mean([(r.metrics, r.num_examples) for r in site_replies if r.num_examples > 0
                                  and r.status != "failed"])
        metrics[NUM_EXAMPLES] = float(sum(u.weight for u in updates))
        return ArrayRecord({k: Array(v) for k, v in merged.items()}), MetricRecord(metrics)

    def evaluate_final(self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, *, server_round: int,
                       timeout: float) -> MetricRecord | None:
        """One evaluate round of the final model (with folded evaluation, nothing else evaluates it)."""
        config["server-round"] = server_round
        self._evaluate_started = time.monotonic()
        messages = [Message(content=RecordDict({ARRAYS: arrays, CONFIG: config}), dst_node_id=node,
                            message_type=MessageType.EVALUATE) for node in grid.get_node_ids()]
        replies = grid.send_and_receive(messages=messages, timeout=timeout)
        return self.aggregate_evaluate(server_round - self.round_offset, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        replies = list(replies)
        if not replies:
            return None
        evaluations = []
        started = getattr(self, "_evaluate_started", None)
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                log(WARNING, "round %d: evaluation failed at %s: %s", server_round, self._site_of(node),
                    msg.error.reason)
                continue
            content = msg.content
            if PRIVACY in content.config_records and content.config_records[PRIVACY].get("status") == STATUS_FAILED:
                log(WARNING, "round %d: evaluation failed at %s: %s", server_round,
                    content.config_records[PRIVACY].get("site"), content.config_records[PRIVACY].get("reason"))
                continue
            site = str(content.config_records[SITE]["name"]) if SITE in content.config_records else self._site_of(node)
            self._sites[node] = site
            metrics = {k: float(v) for k, v in content.metric_records.get(METRICS, {}).items()}
            evaluations.append(SiteEvaluation(site, node, metrics))
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
