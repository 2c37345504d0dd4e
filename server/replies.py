"""Every train reply, parsed defensively: a malformed field fails that reply, with a reason, never the run.

What the server takes from a reply, and from where (README "Hostile sites and a careless server"):

* **who**: the node Flower delivered it from, bound to a site by the scenario or the operator's registration
  (:mod:`server.identity`); a reply that names another site fails;
* **status**: one of a closed set; only ``trained`` (and a ``replayed`` copy of it) carries arrays that are merged;
  a declined or failed reply that carries arrays fails;
* **weight**: the site's registered, public ``max-records`` (or 1 for every site, ``weighting = "equal"``); the
  reply's ``num-examples`` must say that same bound, and is never the weight itself;
* **arrays**: exactly float32, tensors of the global model in the branches the site is registered to hold (whole
  branches, the shared head included), of the global shapes, finite, with an update (new - global) whose L2 norm
  is within ``max-update-norm``; a branch may travel as one flat array under its name (``common/packing.py``,
  what a sample-mode site sends), split by the names and shapes of the global model (``server/reply_arrays.py``);
* **privacy record**: typed fields; a mechanism that matches the public facts (q = 1/ceil(max-records / batch-size),
  the steps of the run's local epochs, δ below 1/max-records); a cumulative ε no lower than that of the mechanisms
  this server itself recorded for the site; a signed ledger head that verifies (with the registered key, in
  deployment; with the key the site used before in this server's ledger, in simulation).

The checks are pure: a verdict for one reply (:class:`ReadReply`). The strategy decides what happens to the round.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from numbers import Integral, Real
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import SUPERLINK_NODE_ID

from common.privacy.accountant import ACCOUNTANTS, Mechanism, epsilon_from_history, plan_steps
from common.privacy.signing import verify_head
from common.records import (ARRAYS, ERRORS, EVALUATION, METRICS, NUM_EXAMPLES, PRIVACY, STATUS_DECLINED,
                            STATUS_FAILED, STATUS_REPLAYED, STATUS_TRAINED, TIMING_KEYS)
from common.storage import arrays_digest
from server.aggregation import Update
from server.flat_arrays import ReplyLayout
from server.identity import RegisteredSite, SiteRegistry
from server.reply_arrays import ReadArrays, Rejected, read_arrays

__all__ = ["NO_REPLY", "STATUSES", "ReadReply", "Rejected", "ReplyRules", "SiteEvaluation", "SiteReply", "no_reply",
           "read_evaluation", "read_train_reply"]

STATUSES = (STATUS_TRAINED, STATUS_REPLAYED, STATUS_DECLINED, STATUS_FAILED)  # the closed set
#: the server's own status for a sampled node that sent no reply at all (never one a site can send)
NO_REPLY = "no-reply"
_MODES = ("sample", "none")  # mechanisms of a sample-mode federation's releases (central mode: server/central.py)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EPSILON_SLACK = 0.01  # a reported ε may sit this fraction below the server's own recomputation (numerics)


@dataclass(frozen=True)
class SiteReply:
    """One site's train reply, as the server records it."""

    site: str  # the site bound to the node (server/identity.py), or "node-<id>" for a node that is no site
    node_id: int
    status: str  # trained | declined | replayed | failed
    num_examples: float  # the weight the server merges it with (registered max-records, or 1); 0 if not merged
    privacy: dict[str, Any] = field(default_factory=dict)  # the site's PRIVACY ConfigRecord, as sent
    metrics: dict[str, float] = field(default_factory=dict)  # its train MetricRecord (validated)
    error: str = ""  # why it failed: the site's code and text, or the server's reason for rejecting it
    rejected: bool = False  # the server failed it (the site said otherwise): ``error`` is the server's reason
    digest: str = ""  # sha256 of the update's arrays (common.storage.arrays_digest), for trained/replayed


@dataclass(frozen=True)
class SiteEvaluation:
    site: str
    node_id: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class ReplyRules:
    """What a train reply is checked against: public facts and the server's own records."""

    registry: SiteRegistry
    global_arrays: Mapping[str, np.ndarray]  # the arrays the server sent this round
    max_update_norm: float  # 0 = no bound
    weighting: str  # max-records | equal
    batch_size: int  # the run's batch size: q and the steps follow from it and the site's max-records
    local_epochs: int
    #: site -> the (σ, q, steps) the server recorded for it (trained rows, its ledger), or None if one of them was
    #: a release without DP (ε = ∞ from then on)
    history: Callable[[str], list[Mechanism] | None] = lambda site: []
    #: site -> the public key of the heads this server recorded for it before ("" if none): pinned on first use
    pinned_key: Callable[[str], str] = lambda site: ""

    @cached_property
    def layout(self) -> ReplyLayout:
        """The global arrays as the fast array checks read them (``server/flat_arrays.py``): built once a round."""
        return ReplyLayout(self.global_arrays)


@dataclass(frozen=True)
class ReadReply:
    reply: SiteReply
    update: Update | None  # what may be merged (trained / replayed and valid)
    evaluation: SiteEvaluation | None  # the received global model's test metrics, folded into the reply


# ------------------------------------------------------------------------------------------ small readers
def _integer(v: Any, what: str, *, low: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, Integral) or v < low:
        raise Rejected(f"{what} is {v!r}; expected a whole number >= {low}")
    return int(v)


def _number(v: Any, what: str, *, low: float = 0.0, low_open: bool = False, inf: bool = False) -> float:
    ok = not isinstance(v, bool) and isinstance(v, Real) and not math.isnan(v) and (inf or math.isfinite(v))
    if not ok or v < low or (low_open and v == low):
        raise Rejected(f"{what} is {v!r}; expected a {'' if inf else 'finite '}number {'>' if low_open else '>='} "
                       f"{low:g}")
    return float(v)


def _text(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > 4096:
        raise Rejected(f"{what} is not a short string: {type(v).__name__}")
    return v


def _scalars(record: Mapping[str, Any], what: str, *, allowed: tuple[str, ...] | None) -> dict[str, float]:
    """A MetricRecord of finite scalars (keys from ``allowed`` if given)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if allowed is not None and key not in allowed:
            raise Rejected(f"{what} carries '{key}', which is not one of {allowed}")
        if isinstance(value, bool) or not isinstance(value, Real):
            raise Rejected(f"{what} '{key}' is a {type(value).__name__}, expected a number")
        out[key] = float(value)
    return out


# ------------------------------------------------------------------------------------------ the parts
@dataclass(frozen=True)
class _Content:
    """A reply's records by kind, read once: each of Flower's ``RecordDict.array_records`` / ``metric_records`` /
    ``config_records`` builds a new synced view of the whole RecordDict (a third of a reply's reading time when
    asked nine times a reply)."""

    array_records: dict[str, ArrayRecord]
    metric_records: dict[str, MetricRecord]
    config_records: dict[str, ConfigRecord]

    @classmethod
    def of(cls, msg: Message) -> _Content:
        parts: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = ({}, {}, {})
        for key, record in msg.content.items():
            for part, kind in zip(parts, (ArrayRecord, MetricRecord, ConfigRecord), strict=True):
                if isinstance(record, kind):
                    part[key] = record
        return cls(*parts)


def _records(content: _Content) -> tuple[dict[str, Any], dict[str, float]]:
    unknown = sorted({*content.config_records} - {PRIVACY}) + sorted({*content.metric_records} - {METRICS, EVALUATION})
    if unknown or set(content.array_records) - {ARRAYS}:
        raise Rejected(f"reply carries undeclared records {unknown or sorted(content.array_records)}")
    if PRIVACY not in content.config_records:
        raise Rejected("reply carries no privacy record")
    privacy = dict(content.config_records[PRIVACY])
    metrics = _scalars(content.metric_records.get(METRICS, {}), "metric", allowed=(NUM_EXAMPLES, *TIMING_KEYS))
    if any(not math.isfinite(v) or v < 0 for v in metrics.values()):
        raise Rejected(f"metrics {metrics} are not all finite and >= 0")
    return privacy, metrics


def _arrays(content: _Content, site: RegisteredSite, rules: ReplyRules) -> ReadArrays:
    if ARRAYS not in content.array_records:
        raise Rejected("a trained reply carries no arrays")
    return read_arrays(content.array_records[ARRAYS].items(), site, rules.global_arrays, rules.layout,
                       rules.max_update_norm)


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    return epsilon_from_history(list(history), delta=delta, accountant=accountant) if history else 0.0


def _check_head(p: Mapping[str, Any], site: RegisteredSite, rules: ReplyRules) -> None:
    """The signed ledger head a reply carries (every trained or declined reply does) must verify."""
    seq = _integer(p.get("ledger-head-seq"), "ledger-head-seq")
    head_hash, key = _text(p.get("ledger-head-hash"), "ledger-head-hash"), _text(p.get("site-public-key"), "key")
    signature = _text(p.get("ledger-head-signature"), "ledger-head-signature")
    if not _HEX64.fullmatch(head_hash):
        raise Rejected("ledger-head-hash is not a sha256 hex digest")
    expected = site.public_key or rules.pinned_key(site.name)
    if expected and key.split()[:2] != expected.split()[:2]:
        raise Rejected(f"the ledger head is signed with another key than the one "
                       f"{'the operator registered' if site.public_key else 'this site used before'}")
    if not verify_head(key, signature, kind="site-ledger", site=site.name, seq=seq, head_hash=head_hash):
        raise Rejected(f"the signed ledger head (seq {seq}) does not verify for site '{site.name}'")


def _check_privacy(p: Mapping[str, Any], status: str, site: RegisteredSite, rules: ReplyRules) -> None:
    """Typed fields; for a trained reply, a mechanism that matches the public facts; ε no lower than the server's."""
    for key in ("reason", "code", "dataset-id", "noise-seed"):
        _text(p.get(key, ""), key)
    mode = p.get("mode")
    if mode not in _MODES:
        raise Rejected(f"mode is {mode!r}; expected one of {_MODES}")
    bound = _integer(p.get("max-records"), "max-records", low=1)
    if site.max_records is not None and bound != site.max_records:
        raise Rejected(f"max-records is {bound}; site '{site.name}' is registered with {site.max_records}")
    accountant = p.get("accountant")
    if accountant not in ACCOUNTANTS:
        raise Rejected(f"accountant is {accountant!r}; expected one of {ACCOUNTANTS}")
    delta = _number(p.get("delta"), "delta", low_open=True)
    if not delta < 1.0 / bound:
        raise Rejected(f"delta {delta:g} is not below 1/max-records = {1 / bound:.3g}")
    epsilon = _number(p.get("epsilon"), "epsilon", inf=True)
    _number(p.get("epsilon-rdp"), "epsilon-rdp", inf=True)
    for key in ("target-epsilon", "epsilon-budget", "max-grad-norm"):
        _number(p.get(key), key, low_open=True)
    total = _integer(p.get("total-steps"), "total-steps")
    _integer(p.get("rounds-trained"), "rounds-trained")
    if not isinstance(p.get("secure-mode"), bool):
        raise Rejected(f"secure-mode is {p.get('secure-mode')!r}; expected true or false")
    _check_head(p, site, rules)
    history = rules.history(site.name)
    if status == STATUS_DECLINED:
        mechanism: tuple[Mechanism, ...] = ()
    elif mode == "none":
        if epsilon != math.inf:
            raise Rejected(f"a release without DP reports epsilon {epsilon}; it is infinite")
        return
    else:
        plan = plan_steps(max_records=bound, batch_size=rules.batch_size, epochs=rules.local_epochs)
        sigma = _number(p.get("noise-multiplier"), "noise-multiplier", low_open=True)
        q = _number(p.get("sample-rate"), "sample-rate", low_open=True)
        steps = _integer(p.get("steps"), "steps", low=1)
        if not math.isclose(q, plan.sample_rate, rel_tol=1e-12) or steps != plan.steps or total < steps:
            raise Rejected(f"the mechanism (q={q:g}, {steps} steps, {total} in all) is not what max-records {bound}, "
                           f"batch-size {rules.batch_size} and local-epochs {rules.local_epochs} give "
                           f"(q={plan.sample_rate:g}, {plan.steps} steps)")
        mechanism = ((sigma, q, steps),)
    if history is None:  # this server recorded a release without DP of this site: ε is ∞ for good
        floor = math.inf
    else:
        floor = _epsilon((*map(tuple, history), *mechanism), delta, accountant)
    if epsilon < floor * (1 - _EPSILON_SLACK):
        raise Rejected(f"reported epsilon {epsilon:.4g} is below {floor:.4g}, the {accountant.upper()} epsilon of the "
                       f"mechanisms this server recorded for site '{site.name}' (at its delta {delta:g})")


# ------------------------------------------------------------------------------------------ the verdict
def _evaluation(content: _Content, name: str, node: int) -> SiteEvaluation | None:
    if EVALUATION not in content.metric_records:
        return None
    try:
        return SiteEvaluation(name, node, _scalars(content.metric_records[EVALUATION], "evaluation",
                                                   allowed=None))
    except Rejected:
        return None


def read_train_reply(msg: Message, rules: ReplyRules, *, sent_to: Mapping[str, int] | None = None) -> ReadReply:
    """The server's verdict on one train reply: what it records, and the update it may merge (if any).

    ``sent_to`` maps the ids of the round's train messages to the nodes they went to: an error reply the SuperLink
    writes itself (the node vanished; its source is the SuperLink's own node id) is the failure of the node the
    message went to, and is recorded as that site's, not as an unknown node's.
    """
    node = msg.metadata.src_node_id
    if msg.has_error() and node == SUPERLINK_NODE_ID and sent_to:
        node = sent_to.get(msg.metadata.reply_to_message_id, node)
    site = rules.registry.lookup(node)
    name = site.name if site else f"node-{node}"
    if msg.has_error():  # Flower's own error reply (the ClientApp crashed, or the node vanished)
        return ReadReply(SiteReply(name, node, STATUS_FAILED, 0.0, error=str(msg.error.reason)[:300]), None, None)
    privacy: dict[str, Any] = {}
    try:
        if site is None:
            raise Rejected(f"node {node} is not a site of this federation ({rules.registry.source})")
        content = _Content.of(msg)
        privacy, metrics = _records(content)
        claimed, status = privacy.get("site", ""), privacy.get("status")
        if claimed not in ("", name):
            raise Rejected(f"the reply names site {str(claimed)[:64]!r}; node {node} is site '{name}' "
                           f"({rules.registry.source})")
        if status not in STATUSES:
            raise Rejected(f"status {str(status)[:64]!r} is not one of {STATUSES}")
        evaluation = _evaluation(content, name, node)
        if status != STATUS_TRAINED and status != STATUS_REPLAYED and ARRAYS in content.array_records:
            raise Rejected(f"a {status} reply carries arrays")
        if status == STATUS_FAILED:
            code = privacy.get("code")
            why = f"[{code}] {ERRORS[code].text}" if code in ERRORS else "a failure without a known code"
            return ReadReply(SiteReply(name, node, STATUS_FAILED, 0.0, privacy, metrics, error=why), None, evaluation)
        _check_privacy(privacy, status, site, rules)
        if status == STATUS_DECLINED:
            return ReadReply(SiteReply(name, node, STATUS_DECLINED, 0.0, privacy, metrics), None, evaluation)
        if metrics.get(NUM_EXAMPLES) != float(site.max_records or 0):
            raise Rejected(f"num-examples is {metrics.get(NUM_EXAMPLES)!r}; a trained reply states its site's public "
                           f"max-records, registered as {site.max_records}")
        arrays = _arrays(content, site, rules)
        weight = float(site.max_records) if rules.weighting == "max-records" else 1.0
        digest = arrays_digest(arrays.tensors)
        reply = SiteReply(name, node, status, weight, privacy, metrics, digest=digest)
        return ReadReply(reply, Update(name, arrays.tensors, weight, arrays.packed), evaluation)
    except Rejected as err:
        return ReadReply(SiteReply(name, node, STATUS_FAILED, 0.0, privacy, error=str(err), rejected=True), None, None)
    except Exception as err:  # noqa: BLE001 - a reply the checks did not foresee still never ends the run
        why = f"unreadable reply ({type(err).__name__})"
        return ReadReply(SiteReply(name, node, STATUS_FAILED, 0.0, privacy, error=why, rejected=True), None, None)


def no_reply(node: int, registry: SiteRegistry) -> SiteReply:
    """The server's record of a node it sent a train message to that never answered (timeout, crash, gone).

    The site may have reserved and spent the round before it went silent: its row says so, and the audit then
    compares it with the site's own ledger (a reservation there is a WARN, not a round the server never heard of).
    """
    site = registry.lookup(node)
    return SiteReply(site.name if site else f"node-{node}", node, NO_REPLY, 0.0,
                     error="no reply to this round's train message (timed out, crashed or disconnected); "
                           "the site may have spent this round")


def read_evaluation(msg: Message, registry: SiteRegistry) -> SiteEvaluation | None:
    """An evaluate reply's metrics, named by the registry (None if it failed, is no site's, or is malformed)."""
    node = msg.metadata.src_node_id
    site = registry.lookup(node)
    if site is None or msg.has_error() or METRICS not in msg.content.metric_records:
        return None
    if PRIVACY in msg.content.config_records and msg.content.config_records[PRIVACY].get("status") == STATUS_FAILED:
        return None  # the site could not evaluate (its code is in its own log)
    try:
        return SiteEvaluation(site.name, node, _scalars(msg.content.metric_records[METRICS], "metric", allowed=None))
    except Rejected:
        return None
