"""What the server keeps of a run: its ledger, per-site metrics, the summary.

* ``ledger.sqlite``: one row per site per round (trained, declined, failed, or no-reply: sampled, never answered)
  with the mechanism and the cumulative ε the site reported; append-only and hash-chained
  (``common/privacy/ledger.py``, the same format as a site's own ledger).
* ``metrics.csv``: one row per site per round (status, evaluation metrics, ε). No training loss: a site keeps it
  in its own log (it is computed from the training rows outside the DP mechanism).
* ``summary.json``: the latest privacy state and metrics of every site.

Every file is written atomically. A round's ledger rows are written once, after every reply of the round was
validated (``server/replies.py``), in ONE transaction with the round's signed heads: never partially, and a reply
the server failed still gets its row (its reason: why the server failed it; the site's claims kept as evidence)
and, if its signed head verifies, its head: a round that sites spent is never missing. A trained row's reason ends
with ``update-sha256=<digest>`` of the update accepted: a reply for that (site, round) sent again after a restart
must carry the same update (``server/strategy.py``), and is then not recorded twice.

Signed heads: each site signs its own ledger's head after every round and sends it in its PRIVACY record; the
server keeps each one that verifies for that site, with the key the operator registered (deployment) or the key
the site first used here (simulation), in the ``heads`` table of ``ledger.sqlite`` (append-only, hash-chained);
one that does not verify is logged and not recorded. After every event the server signs the heads of both of its
tables with its own key (``server_key`` in the run folder) into ``ledger-head.json``. ``fedfusion audit`` checks
every ledger against these.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from common.privacy.accountant import Mechanism
from common.privacy.entry import NO_DP, statement_mode
from common.privacy.ledger import Ledger, LedgerEntry
from common.privacy.signing import (
    SERVER_HEAD_FILE,
    SERVER_KEY_FILE,
    HeadRecord,
    load_or_create_key,
    verify_head,
    write_signed_heads,
)
from common.records import COMPUTE_SECONDS, SETUP_SECONDS, STARTUP_SECONDS, TIMING_KEYS
from common.storage import arrays_digest, atomic_write_text
from server.checkpoint import Checkpoint, save_checkpoint
from server.replies import NO_REPLY, SiteEvaluation, SiteReply

__all__ = ["RunRecorder"]

log = logging.getLogger(__name__)

_EVAL_KEYS = ("accuracy", "balanced-accuracy", "auc", "loss", "num-examples")
_DIGEST = "update-sha256="  # a trained row's reason ends with the sha256 of the update the server accepted
CSV_FIELDS = ("round", "site", "status", "mode", "accuracy", "balanced-accuracy", "auc", "eval-loss",
              "eval-examples", "epsilon", "epsilon-rdp", "noise-multiplier", "sample-rate", "steps")


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _eps(v: Any) -> float | None:
    """An ε as the ledger keeps it: ∞ stays ∞ (a release without DP), NaN and junk become None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or f < 0 else f


def _int(v: Any, *, strict: bool = False) -> int:
    """A whole number a site reported (0 for anything else; ``strict``: ValueError instead)."""
    if isinstance(v, bool) or not isinstance(v, int):
        if strict:
            raise ValueError(f"not a whole number: {v!r}")
        return 0
    return v


def _site_summary(p: dict[str, Any]) -> dict[str, Any]:
    """The latest privacy state of a site in ``summary.json``, from a reply the server accepted."""
    out = {
        "epsilon": _num(p.get("epsilon")), "epsilon_rdp": _num(p.get("epsilon-rdp")),
        "target_epsilon": _num(p.get("target-epsilon")), "epsilon_budget": _num(p.get("epsilon-budget")),
        "delta": _num(p.get("delta")), "noise_multiplier": _num(p.get("noise-multiplier")),
        "sample_rate": _num(p.get("sample-rate")), "steps": _int(p.get("total-steps")),
        "max_grad_norm": _num(p.get("max-grad-norm")), "accountant": str(p.get("accountant", "")),
        "lifetime_rounds_trained": _int(p.get("rounds-trained")),
        "secure_mode": p.get("secure-mode") is True, "dataset_id": str(p.get("dataset-id", "")),
        "noise_seed": str(p.get("noise-seed", "not recorded")), "mode": str(p.get("mode", "sample")),
        "max_records": _num(p.get("max-records")),
    }
    if p.get("mode") == "none":
        out["released_without_dp"] = True
    return out


class RunRecorder:
    """Implements :class:`server.strategy.RoundRecorder`; writes under ``out_dir``."""

    def __init__(self, *, out_dir: Path | None, federation_id: str, run_id: str, run_info: dict[str, Any],
                 registered_keys: dict[str, str] | None = None) -> None:
        self.out_dir, self.federation_id, self.run_id = out_dir, federation_id, run_id
        self.registered_keys = dict(registered_keys or {})  # deployment: site -> the public key the operator registered
        self._trained: dict[str, list[tuple[str, int, Mechanism | None, str]]] = {}  # site -> (fed, round, σqs, digest)
        self._keys: dict[str, str] = {}  # site -> the key of its first recorded head (pinned)
        self.ledger = Ledger(out_dir / "ledger.sqlite") if out_dir else None
        self.key = load_or_create_key(out_dir / SERVER_KEY_FILE, comment="fedfusion-server") if out_dir else None
        self.run_info = run_info
        self.rows: dict[tuple[int, str], dict[str, Any]] = {}
        self.sites: dict[str, dict[str, Any]] = {}
        self.rounds: dict[int, dict[str, Any]] = {}
        self._load_index()

    def _row(self, rnd: int, site: str) -> dict[str, Any]:
        return self.rows.setdefault((rnd, site), {"round": rnd, "site": site})

    def _site(self, site: str) -> dict[str, Any]:
        return self.sites.setdefault(site, {"rounds_trained": 0, "rounds_declined": 0, "rounds_failed": 0})

    # ------------------------------------------------------------------ train
    def _load_index(self) -> None:
        """What this server recorded before (a resumed run): each site's trained rows and its first signing key."""
        if self.ledger is None:
            return
        for e in self.ledger.entries():
            if e.event == "trained":
                self._index(e.site, e.federation_id, e.round, e.noise_multiplier, e.sample_rate, e.steps, e.reason)
        for h in self.ledger.heads():
            self._keys.setdefault(h.site, h.public_key)

    def _index(self, site: str, federation_id: str, rnd: int, sigma: float | None, q: float | None, steps: int,
               reason: str) -> None:
        mechanism = None if statement_mode(reason) == NO_DP or sigma is None or q is None else (sigma, q, steps)
        digest = next((part.split("=", 1)[1] for part in reason.split(" | ") if part.startswith(_DIGEST)), "")
        self._trained.setdefault(site, []).append((federation_id, rnd, mechanism, digest))

    def history(self, site: str, *, before_round: int) -> list[Mechanism] | None:
        """The (σ, q, steps) of every round this server recorded as trained for ``site`` (any federation), except
        this federation's rounds from ``before_round`` on; None if one of them was a release without DP."""
        rows = [m for fed, rnd, m, _ in self._trained.get(site, [])
                if fed != self.federation_id or rnd < before_round]
        return None if any(m is None for m in rows) else [m for m in rows if m is not None]

    def recorded_digest(self, site: str, server_round: int) -> str | None:
        """The update digest this server recorded for ``site`` in ``server_round`` of this federation, if any."""
        return next((d for fed, rnd, _, d in self._trained.get(site, [])
                     if fed == self.federation_id and rnd == server_round and d), None)

    def pinned_key(self, site: str) -> str:
        """The public key of the first signed head this server recorded for ``site`` ("" if none yet)."""
        return self._keys.get(site, "")

    def on_train(self, server_round: int, replies: list[SiteReply]) -> None:
        """Record the round: every reply's row and each signed head that verifies, in ONE ledger transaction."""
        entries, heads = [], []
        for r in replies:
            event = {"trained": "trained", "replayed": "trained", "declined": "declined",
                     NO_REPLY: NO_REPLY}.get(r.status, "failed")
            if event == "trained" and self.recorded_digest(r.site, server_round) is not None:
                continue  # the same update, sent again after a restart: neither counted nor logged twice
            p = {} if r.rejected else r.privacy  # what the server failed is evidence in its ledger row, not a fact
            s = self._site(r.site)
            counter = f"rounds_{event.replace('-', '_')}"
            s[counter] = s.get(counter, 0) + 1
            if p:
                s.update(_site_summary(p))
                if r.status == "declined":
                    s["last_decline_reason"] = str(p.get("reason", ""))
            if r.status in ("failed", NO_REPLY):
                s["last_error"] = r.error
            self._row(server_round, r.site).update({
                "status": r.status, "mode": str(p.get("mode", "")), "epsilon": _num(p.get("epsilon")),
                "epsilon-rdp": _num(p.get("epsilon-rdp")), "noise-multiplier": _num(p.get("noise-multiplier")),
                "sample-rate": _num(p.get("sample-rate")), "steps": _int(p.get("steps"))})
            entry = self._entry(server_round, r, event)
            entries.append(entry)
            if event == "trained":
                self._index(r.site, self.federation_id, server_round, entry.noise_multiplier, entry.sample_rate,
                            entry.steps, entry.reason)
            head = self._head(server_round, r)
            if head is not None:
                heads.append(head)
                self._keys.setdefault(r.site, head.public_key)
        if self.ledger is not None and (entries or heads):
            self.ledger.append_round(entries, heads)
        self.flush()

    def _entry(self, server_round: int, r: SiteReply, event: str) -> LedgerEntry:
        """The server's row of one reply: the site's reported mechanism and ε, or only why it failed."""
        p = r.privacy
        if r.rejected:
            reason = f"rejected by the server: {r.error}"
        elif r.status in ("failed", NO_REPLY):
            reason = r.error
        else:
            reason = str(p.get("reason", ""))
            if r.digest:
                reason = " | ".join(x for x in (reason, f"{_DIGEST}{r.digest}") if x)
        ids = dict(site=r.site, round=server_round, event=event, federation_id=self.federation_id,
                   run_id=self.run_id, reason=reason[:2000])
        try:
            return LedgerEntry(**ids, dataset_id=str(p.get("dataset-id", "")),
                               noise_multiplier=_num(p.get("noise-multiplier")), sample_rate=_num(p.get("sample-rate")),
                               steps=_int(p.get("steps")) if event == "trained" else 0,
                               max_grad_norm=_num(p.get("max-grad-norm")), delta=_num(p.get("delta")),
                               accountant=str(p.get("accountant", "")), epsilon=_eps(p.get("epsilon")),
                               epsilon_rdp=_eps(p.get("epsilon-rdp")), target_epsilon=_num(p.get("target-epsilon")))
        except (TypeError, ValueError):  # a failed reply's values that no row can hold: its reason only
            return LedgerEntry(**ids)

    def _head(self, server_round: int, r: SiteReply) -> HeadRecord | None:
        """The signed ledger head a reply carries, if it verifies for its site (failed replies included)."""
        p = r.privacy
        if not p.get("ledger-head-signature"):
            return None
        try:
            record = HeadRecord(
                kind="site-ledger", site=r.site, round=server_round, run_id=self.run_id,
                head_seq=_int(p["ledger-head-seq"], strict=True), head_hash=str(p.get("ledger-head-hash", "")),
                public_key=str(p.get("site-public-key", "")), signature=str(p["ledger-head-signature"]),
                secure_mode=p["secure-mode"] if isinstance(p.get("secure-mode"), bool) else None,
                epsilon_budget=_num(p.get("epsilon-budget")))
            ok = verify_head(record.public_key, record.signature, kind=record.kind, site=r.site,
                             seq=record.head_seq, head_hash=record.head_hash)
        except (KeyError, TypeError, ValueError):
            ok = False
        expected = self.registered_keys.get(r.site) or self.pinned_key(r.site)
        if ok and expected and record.public_key.split()[:2] != expected.split()[:2]:
            ok = False
        if not ok:
            log.warning("round %d: the signed ledger head site %s sent does not verify (or is signed with another "
                        "key); not recorded", server_round, r.site)
            return None
        return record

    def _sign_state(self) -> None:
        """Sign the heads of this server's ledger tables into ``ledger-head.json`` (atomic)."""
        if self.ledger is None or self.key is None or self.out_dir is None:
            return
        from datetime import datetime, timezone

        write_signed_heads(self.out_dir / SERVER_HEAD_FILE, self.ledger.sign_state(self.key),
                           signed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    # ---------------------------------------------------------------- timing
    def on_timing(self, server_round: int, phase: str, wall_s: float, sites: list[dict[str, float]]) -> None:
        """Round wall time minus the slowest site's compute (training + evaluation) = the round's overhead.

        The overhead is split for the site that finished last (largest start-up + setup + compute):
        its process start-up (deployment), its data/model setup, and the rest, which is Flower's
        hand-offs (polling, transfer) and the server's own work.
        """
        compute = [s.get(COMPUTE_SECONDS, 0.0) for s in sites]
        slowest = max(compute, default=0.0)
        row = {"wall_s": round(wall_s, 3), "slowest_site_compute_s": round(slowest, 3),
               "overhead_s": round(wall_s - slowest, 3)}
        if sites:
            last = max(sites, key=lambda s: sum(s.get(k, 0.0) for k in TIMING_KEYS))
            row["last_site_setup_s"] = round(last.get(SETUP_SECONDS, 0.0), 3)
            if STARTUP_SECONDS in last:
                row["last_site_startup_s"] = round(last[STARTUP_SECONDS], 3)
            row["handoff_s"] = round(wall_s - sum(last.get(k, 0.0) for k in TIMING_KEYS), 3)
        self.rounds.setdefault(server_round, {}).setdefault("timing", {})[phase] = row

    # ------------------------------------------------------------ checkpoint
    def on_aggregated(self, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        """Checkpoint the global arrays after each aggregated round (atomic write)."""
        self.run_info["last_round"] = server_round
        if self.out_dir is not None:
            save_checkpoint(self.out_dir, Checkpoint(self.federation_id, server_round, arrays, arrays_digest(arrays)))

    def restore(self) -> None:
        """Resume after a restart: reload what earlier runs of this federation recorded."""
        if self.out_dir is None or not (self.out_dir / "summary.json").exists():
            return
        old = json.loads((self.out_dir / "summary.json").read_text())
        if old.get("federation_id") != self.federation_id:
            return
        self.sites = old.get("sites", {})
        self.rounds = {int(k): v for k, v in old.get("rounds", {}).items()}
        self.run_info["resumed_from_run"] = old.get("run_id")
        if (self.out_dir / "metrics.csv").exists():
            with (self.out_dir / "metrics.csv").open() as fh:
                for row in csv.DictReader(fh):
                    r = int(row["round"])
                    self.rows[(r, row["site"])] = {k: (_num(v) if k not in ("site", "status") else v)
                                                   for k, v in row.items() if v != ""} | {"round": r}

    # --------------------------------------------------------------- evaluate
    def on_evaluate(self, server_round: int, evaluations: list[SiteEvaluation]) -> None:
        total = sum(e.metrics.get("num-examples", 0) for e in evaluations)
        agg: dict[str, float] = {}
        for e in evaluations:
            row = self._row(server_round, e.site)
            for k in _EVAL_KEYS:
                row["eval-loss" if k == "loss" else ("eval-examples" if k == "num-examples" else k)] = _num(
                    e.metrics.get(k))
            self._site(e.site)["metrics"] = {k: _num(e.metrics.get(k)) for k in _EVAL_KEYS}
            ablations = {k: _num(v) for k, v in e.metrics.items() if "-without-" in k or "-only-" in k}
            if ablations:  # missing-modality robustness, evaluated at the site on its test rows
                self._site(e.site)["modality_ablations"] = ablations
        for k in ("accuracy", "balanced-accuracy", "auc", "loss"):
            vals = [(e.metrics[k], e.metrics.get("num-examples", 0)) for e in evaluations
                    if _num(e.metrics.get(k)) is not None]
            if vals and total:
                agg[k] = sum(v * w for v, w in vals) / sum(w for _, w in vals)
        self.rounds.setdefault(server_round, {}).update({"weighted": agg, "sites_evaluated": len(evaluations)})
        self.flush()

    # ------------------------------------------------------------------ files
    def summary(self) -> dict[str, Any]:
        return {**self.run_info, "federation_id": self.federation_id, "run_id": self.run_id,
                "sites": self.sites, "rounds": {str(k): v for k, v in sorted(self.rounds.items())}}

    def flush(self) -> None:
        """Rewrite summary.json and metrics.csv (atomically) after every event."""
        if self.out_dir is None:
            return
        atomic_write_text(self.out_dir / "summary.json", json.dumps(self.summary(), indent=2, sort_keys=True))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for key in sorted(self.rows):
            w.writerow({k: ("" if v is None else v) for k, v in self.rows[key].items()})
        atomic_write_text(self.out_dir / "metrics.csv", buf.getvalue())
        self._sign_state()
