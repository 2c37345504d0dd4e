"""What an audit finds and reports: findings, per-round accounting rows, per-site summaries.

Plain dataclasses with a stable ``to_dict`` (the ``--json`` schema, ``AUDIT_SCHEMA`` version):
keys are never renamed or removed within a version; new keys may be added.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AUDIT_SCHEMA",
    "FAIL",
    "INFO",
    "LEVELS",
    "WARN",
    "AuditReport",
    "Finding",
    "RoundRow",
    "SiteAudit",
]

AUDIT_SCHEMA = "fedfusion-audit/1"
FAIL, WARN, INFO = "FAIL", "WARN", "INFO"
LEVELS: tuple[str, ...] = (FAIL, WARN, INFO)


@dataclass(frozen=True)
class Finding:
    """One thing the audit found. ``FAIL`` makes the audit (and the command) fail."""

    level: str  # FAIL | WARN | INFO
    check: str  # file | chain | anchor | recompute | budget | noise | compare
    message: str  # what, where and why, in words
    site: str = ""  # the site it concerns ("" = the whole file / the server)
    round: int | None = None  # the server round it concerns, when one is known
    seq: int | None = None  # the ledger row (seq) it concerns, when one is known
    ledger: str = ""  # the file it was found in

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RoundRow:
    """One ledger row that states an ε, with the audit's independent recomputation beside it."""

    seq: int  # row in its ledger
    round: int  # server round
    federation_id: str
    run_id: str
    event: str  # reserve | confirm | decline (site) or trained | declined (server)
    mode: str  # mechanism family (audit_recompute.MECHANISMS key)
    noise_multiplier: float | None  # σ
    sample_rate: float | None  # q
    steps: int  # steps of this round (0 for a decline)
    max_grad_norm: float | None  # C (does not enter ε)
    delta: float | None  # δ of the ε values
    accountant: str  # what produced the reported ε (prv | rdp)
    reported_epsilon: float | None  # what the row states (cumulative)
    reported_epsilon_rdp: float | None  # the row's RDP companion figure
    pld_epsilon: float | None  # dp-accounting PLD over the history up to this row
    rdp_epsilon: float | None  # dp-accounting RDP over the same history
    budget: float | None  # lifetime budget in force (from the signed heads)
    status: str  # ok | within-grid | under-reported | conservative | over-budget | no-dp | unchecked

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SiteAudit:
    """Everything the audit established about one site."""

    site: str
    source: str  # "site ledger" (source of truth) or "server ledger" (what the site reported)
    ledger: str = ""  # path of the ledger the accounting came from
    mode: str = ""  # mechanism family of its rows
    relation: str = ""  # neighbouring relation / sampling assumption, in words
    deltas: list[float] = field(default_factory=list)  # δ values its rows state
    accountants: list[str] = field(default_factory=list)  # accountants of its reported ε
    secure_mode: str = "not recorded"  # on | off | mixed (...) | not recorded
    noise_seed: str = "not recorded"  # secret | run-seed (client/dp_random.py) | not recorded (runs before 2026-11-28)
    max_records: int | None = None  # the site's declared PUBLIC bound on its training records (summary.json)
    released_without_dp: bool = False  # a release without DP (mode=none) is in its history: ε = ∞
    target_epsilon: float | None = None
    epsilon_budget: float | None = None
    spent_reported: float | None = None  # the last reported cumulative ε
    spent_pld: float | None = None  # recomputed, dp-accounting PLD
    spent_rdp: float | None = None  # recomputed, dp-accounting RDP
    remaining: float | None = None  # budget - max(reported, PLD)
    rounds_trained: int = 0
    rounds_declined: int = 0
    declined: list[dict[str, Any]] = field(default_factory=list)  # {federation_id, round, reason}
    ever_exceeded: bool = False
    history_complete: bool = True  # False: only this server's rows were seen (earlier runs invisible)
    key_fingerprint: str = ""  # the site's signing key (SHA256:...)
    anchored_seq: int = 0  # rows up to this seq are vouched for by a valid signed head
    anchored_round: int | None = None  # the round after which that head was signed
    anchor_source: str = "none"  # server | site | none
    unanchored_rows: int = 0  # rows after the last valid signed head
    rows: list[RoundRow] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["rows"] = [r.to_dict() for r in self.rows]
        return d


@dataclass
class AuditReport:
    """The result of ``fedfusion audit``: passed iff no finding is a FAIL."""

    target: str  # what was audited (path, or "SITE vs SERVER")
    kind: str  # run | site-ledger | server-ledger | compare
    sites: dict[str, SiteAudit] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)  # what the numbers mean; printed in every output
    server: dict[str, Any] = field(default_factory=dict)  # server ledger: path, rows, key, anchored seq
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not any(f.level == FAIL for f in self.findings)

    def add(self, findings: list[Finding]) -> None:
        self.findings.extend(findings)

    def count(self, level: str) -> int:
        return sum(f.level == level for f in self.findings)

    def site_verdict(self, site: str) -> str:
        levels = {f.level for f in self.findings if f.site == site}
        return "FAIL" if FAIL in levels else ("WARN" if WARN in levels else "PASS")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": AUDIT_SCHEMA,
            "target": self.target,
            "kind": self.kind,
            "passed": self.passed,
            "counts": {lvl.lower(): self.count(lvl) for lvl in LEVELS},
            "thresholds": dict(self.thresholds),
            "statements": list(self.statements),
            "server": dict(self.server),
            "sites": {name: s.to_dict() | {"verdict": self.site_verdict(name)}
                      for name, s in sorted(self.sites.items())},
            "findings": [f.to_dict() for f in self.findings],
        }
