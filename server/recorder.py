"""What the server keeps of a run: its ledger, per-site metrics, the summary.

* ``ledger.sqlite``: one row per site per round (trained, declined or failed) with the
  mechanism and the cumulative ε the site reported; append-only and hash-chained
  (``common/privacy/ledger.py``, the same format as a site's own ledger).
* ``metrics.csv``: one row per site per round (status, evaluation metrics, ε). No training loss: a site keeps it
  in its own log (it is computed from the training rows outside the DP mechanism).
* ``summary.json``: the latest privacy state and metrics of every site.

Every file is written atomically; the ledger rows are appended as the replies arrive.

Signed heads: each site signs its own ledger's head after every round and sends it in its
PRIVACY record; the server keeps each one in the ``heads`` table of ``ledger.sqlite``
(append-only, hash-chained; recorded as received, a bad signature is logged and kept as
evidence). After every event the server signs the heads of both of its tables with its own
key (``server_key`` in the run folder) into ``ledger-head.json``. ``fedfusion audit`` checks
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
from server.strategy import SiteEvaluation, SiteReply

__all__ = ["RunRecorder"]

log = logging.getLogger(__name__)

_EVAL_KEYS = ("accuracy", "balanced-accuracy", "auc", "loss", "num-examples")
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


def _reason(p: dict[str, Any], error: str) -> str:
    """What the server's row says about why: the site's statement or decline reason, or its failure code."""
    reason = str(p.get("reason", "")) or error
    return f"[{p['code']}] {reason}" if p.get("code") and p.get("status") == "failed" else reason


class RunRecorder:
    """Implements :class:`server.strategy.RoundRecorder`; writes under ``out_dir``."""

    def __init__(self, *, out_dir: Path | None, federation_id: str, run_id: str, run_info: dict[str, Any]) -> None:
        self.out_dir, self.federation_id, self.run_id = out_dir, federation_id, run_id
        self.ledger = Ledger(out_dir / "ledger.sqlite") if out_dir else None
        self.key = load_or_create_key(out_dir / SERVER_KEY_FILE, comment="fedfusion-server") if out_dir else None
        self.run_info = run_info
        self.rows: dict[tuple[int, str], dict[str, Any]] = {}
        self.sites: dict[str, dict[str, Any]] = {}
        self.rounds: dict[int, dict[str, Any]] = {}

    def _row(self, rnd: int, site: str) -> dict[str, Any]:
        return self.rows.setdefault((rnd, site), {"round": rnd, "site": site})

    def _site(self, site: str) -> dict[str, Any]:
        return self.sites.setdefault(site, {"rounds_trained": 0, "rounds_declined": 0, "rounds_failed": 0})

    # ------------------------------------------------------------------ train
    def _already_recorded(self, site: str, server_round: int) -> bool:
        """After a restart a site may replay a round the server already logged: log each round once."""
        if self.ledger is None:
            return False
        return any(e.round == server_round and e.federation_id == self.federation_id and e.event == "trained"
                   for e in self.ledger.entries(site=site))

    def on_train(self, server_round: int, replies: list[SiteReply]) -> None:
        for r in replies:
            p = r.privacy
            event = {"trained": "trained", "replayed": "trained", "declined": "declined"}.get(r.status, "failed")
            if r.status == "replayed" and self._already_recorded(r.site, server_round):
                continue  # the same spend, reported again: neither counted nor logged twice
            s = self._site(r.site)
            s[f"rounds_{event}"] += 1
            if p:
                s.update({
                    "epsilon": _num(p.get("epsilon")), "epsilon_rdp": _num(p.get("epsilon-rdp")),
                    "target_epsilon": _num(p.get("target-epsilon")), "epsilon_budget": _num(p.get("epsilon-budget")),
                    "delta": _num(p.get("delta")), "noise_multiplier": _num(p.get("noise-multiplier")),
                    "sample_rate": _num(p.get("sample-rate")), "steps": int(p.get("total-steps", 0)),
                    "max_grad_norm": _num(p.get("max-grad-norm")), "accountant": p.get("accountant", ""),
                    "lifetime_rounds_trained": int(p.get("rounds-trained", 0)),
                    "secure_mode": bool(p.get("secure-mode", False)), "dataset_id": p.get("dataset-id", ""),
                    "noise_seed": str(p.get("noise-seed", "not recorded")), "mode": str(p.get("mode", "sample")),
                    "max_records": _num(p.get("max-records")),
                })
                if p.get("mode") == "none":
                    s["released_without_dp"] = True
                if r.status == "declined":
                    s["last_decline_reason"] = p.get("reason", "")
            if r.status == "failed":
                s["last_error"] = r.error
            row = self._row(server_round, r.site)
            row.update({"status": r.status, "mode": p.get("mode", ""),
                        "epsilon": _num(p.get("epsilon")), "epsilon-rdp": _num(p.get("epsilon-rdp")),
                        "noise-multiplier": _num(p.get("noise-multiplier")),
                        "sample-rate": _num(p.get("sample-rate")), "steps": p.get("steps", 0)})
            if self.ledger is not None:
                self.ledger.append(LedgerEntry(
                    site=r.site, round=server_round, event=event, federation_id=self.federation_id,
                    run_id=self.run_id, dataset_id=str(p.get("dataset-id", "")),
                    noise_multiplier=_num(p.get("noise-multiplier")), sample_rate=_num(p.get("sample-rate")),
                    steps=int(p.get("steps", 0)) if event == "trained" else 0,
                    max_grad_norm=_num(p.get("max-grad-norm")), delta=_num(p.get("delta")),
                    accountant=str(p.get("accountant", "")), epsilon=_eps(p.get("epsilon")),
                    epsilon_rdp=_eps(p.get("epsilon-rdp")), target_epsilon=_num(p.get("target-epsilon")),
                    reason=_reason(p, r.error),
                ))
                self._record_head(server_round, r.site, p)
        self.flush()

    def _record_head(self, server_round: int, site: str, p: dict[str, Any]) -> None:
        """Keep the signed ledger head a site sent (if any) in the ledger file's ``heads`` table."""
        if self.ledger is None or not p.get("ledger-head-signature"):
            return
        try:
            record = HeadRecord(
                kind="site-ledger", site=site, round=server_round, run_id=self.run_id,
                head_seq=int(p["ledger-head-seq"]), head_hash=str(p.get("ledger-head-hash", "")),
                public_key=str(p.get("site-public-key", "")), signature=str(p["ledger-head-signature"]),
                secure_mode=bool(p["secure-mode"]) if "secure-mode" in p else None,
                epsilon_budget=_num(p.get("epsilon-budget")))
        except (KeyError, TypeError, ValueError) as err:
            log.warning("round %d: site %s sent a malformed signed ledger head (%s); not recorded",
                        server_round, site, err)
            return
        if not verify_head(record.public_key, record.signature, kind=record.kind, site=site,
                           seq=record.head_seq, head_hash=record.head_hash):
            log.warning("round %d: the signed ledger head site %s sent does not verify; recorded as evidence",
                        server_round, site)
        self.ledger.append_head(record)

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
