"""``fedfusion audit``: can a privacy officer trust every site's ε from the records alone?

For a run folder, a server ledger, or a site's own ledger, the audit answers:

* **has anyone altered the records?** hash chains (:mod:`server.audit.integrity`), each site's
  ledger against the heads it signed and the server recorded, the server's ledger against the
  heads the server signed; for a run folder also each site's ledger against the server's
  (:mod:`server.audit.compare`);
* **how much did each site spend, under what mechanism?** ε recomputed from the logged
  mechanisms with Google's dp-accounting, which the training never used
  (:mod:`server.audit.recompute`), beside the reported value;
* **was any budget exceeded?** target, budget, spent, remaining, declined rounds.

:func:`audit_path` and :func:`audit_compare` return an :class:`~server.audit.model.AuditReport`;
it passes iff no finding is a FAIL. Nothing here writes to the audited files (ledgers are
opened read-only). Output: :mod:`server.audit.render` (terminal, JSON) and
:mod:`server.audit.html`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.privacy.entry import SERVER_EVENTS, SITE_EVENTS, LedgerEntry
from common.privacy.ledger import Ledger, LedgerIntegrityError
from common.privacy.signing import SERVER_HEAD_FILE, HeadRecord, fingerprint
from server.audit.compare import compare_site_server
from server.audit.integrity import chain_findings, same_key, server_anchor_findings, site_anchor_findings
from server.audit.model import FAIL, INFO, WARN, AuditReport, Finding, SiteAudit
from server.audit.recompute import recompute_site, thresholds
from server.audit.statements import statements

__all__ = ["LEDGER_FILE", "SITE_KEY_PUB", "audit_compare", "audit_path"]

LEDGER_FILE = "ledger.sqlite"  # in a run folder (server) and in a site's state folder
SITE_KEY_PUB = "site_key.pub"  # beside a site's ledger: the public half of the key it signs with
#: site ledgers under ``--sites DIR``: a simulation's ``<site>/ledger.sqlite``, a deployed site's
#: ``SITE/state/ledger.sqlite`` (DEPLOY.md; the folder need not be named after the site: rows name it)
SITE_LEDGER_GLOBS = (f"*/{LEDGER_FILE}", f"*/state/{LEDGER_FILE}")
#: a deployed site's state folder (``fedfusion site join`` makes both); its config refuses any noise seed but
#: "secret" since this date (README, "The noise is secret")
_DEPLOYED_MARKERS, _SECRET_SEEDS_SINCE = ("flwr-home", "approved-app.json"), "2026-11-28"


class _Files:
    """Opens ledgers read-only and turns unreadable ones into findings."""

    def __init__(self, report: AuditReport) -> None:
        self.report = report

    def open(self, path: Path) -> Ledger | None:
        try:
            return Ledger(path, read_only=True)
        except (LedgerIntegrityError, OSError, sqlite3.DatabaseError) as exc:
            self.report.add([Finding(FAIL, "file", f"{path}: cannot be audited as a ledger ({exc})", ledger=str(path))])
            return None

    def rows(self, ledger: Ledger) -> list[LedgerEntry]:
        try:
            return ledger.entries()
        except LedgerIntegrityError as exc:  # a row is not even a valid entry: nothing can be recomputed
            self.report.add([Finding(FAIL, "file", f"{exc}; accounting from this file is impossible",
                                     ledger=str(ledger.path))])
            return []

    def heads(self, ledger: Ledger) -> list[HeadRecord]:
        try:
            return ledger.heads()
        except LedgerIntegrityError as exc:
            self.report.add([Finding(FAIL, "file", str(exc), ledger=str(ledger.path))])
            return []


def _role(rows: Sequence[LedgerEntry]) -> str:
    events = {r.event for r in rows}
    if events and events <= set(SITE_EVENTS):
        return "site"
    if events and events <= set(SERVER_EVENTS):
        return "server"
    return "empty" if not events else "mixed"


def _read_key(text_or_path: str) -> str:
    p = Path(text_or_path)
    return p.read_text().strip() if p.is_file() else text_or_path


# --------------------------------------------------------------------------- entry points
def audit_path(path: Path, *, allow_unsigned: bool = False, sites_dir: Path | None = None,
               site_keys: Mapping[str, str] | None = None, server_key: str = "") -> AuditReport:
    """Audit a run folder, a server ledger file, or a site's ledger (file or state folder).

    Parameters
    ----------
    path : Path
        A run folder (``ledger.sqlite`` of the server, ``ledger-head.json``, ``sites/*/ledger.sqlite``),
        a ledger file, or a site's state folder.
    allow_unsigned : bool
        Accept ledgers with no signed head at all (written before signing) with a WARN.
    sites_dir : Path, optional
        Where the site ledgers are (``<dir>/<site>/ledger.sqlite``) when not in ``<run>/sites``.
    site_keys : mapping of str to str, optional
        Pinned public keys per site (OpenSSH line or a path to a ``.pub`` file).
    server_key : str
        Pinned public key of the server (line or path).
    """
    path = Path(path)
    file = path / LEDGER_FILE if path.is_dir() else path
    report = AuditReport(target=str(path), kind="site-ledger", thresholds=thresholds())
    files = _Files(report)
    keys = {k: _read_key(v) for k, v in (site_keys or {}).items()}
    ledger = files.open(file)
    if ledger is None:
        return _finish(report)
    rows = files.rows(ledger)
    role = _role(rows)
    if role == "site" or (role == "empty" and not (file.parent / SERVER_HEAD_FILE).exists()):
        report.add(chain_findings(ledger, str(file)))
        _site_file(report, files, ledger, rows, keys=keys, allow_unsigned=allow_unsigned)
        return _finish(report)
    if role == "mixed":
        report.add([Finding(FAIL, "file", f"{file}: holds both site and server events; neither kind of ledger",
                            ledger=str(file))])
    report.kind = "run" if path.is_dir() else "server-ledger"
    folder = file.parent
    site_dir = sites_dir or (folder / "sites" if report.kind == "run" else None)
    site_files = sorted({f for g in SITE_LEDGER_GLOBS for f in site_dir.glob(g)}) \
        if site_dir and site_dir.is_dir() else []
    _server_and_sites(report, files, ledger, rows, site_files, folder=folder, keys=keys,
                      server_key=_read_key(server_key) if server_key else "", allow_unsigned=allow_unsigned)
    return _finish(report)


def audit_compare(site_ledger: Path, server_ledger: Path, *, allow_unsigned: bool = False,
                  site_keys: Mapping[str, str] | None = None, server_key: str = "") -> AuditReport:
    """Audit one site's ledger against a server's: integrity of both, every disagreement, the site's ε."""
    report = AuditReport(target=f"{site_ledger} vs {server_ledger}", kind="compare", thresholds=thresholds())
    files = _Files(report)
    server_file = Path(server_ledger) / LEDGER_FILE if Path(server_ledger).is_dir() else Path(server_ledger)
    site_file = Path(site_ledger) / LEDGER_FILE if Path(site_ledger).is_dir() else Path(site_ledger)
    server = files.open(server_file)
    if server is None or files.open(site_file) is None:
        return _finish(report)
    _server_and_sites(report, files, server, files.rows(server), [site_file], folder=server_file.parent,
                      keys={k: _read_key(v) for k, v in (site_keys or {}).items()},
                      server_key=_read_key(server_key) if server_key else "", allow_unsigned=allow_unsigned,
                      only_site_files=True)
    return _finish(report)


# ----------------------------------------------------------------------------- the parts
def _site_file(report: AuditReport, files: _Files, ledger: Ledger, rows: list[LedgerEntry], *,
               keys: Mapping[str, str], allow_unsigned: bool) -> None:
    """A site's ledger on its own: chain, its own signed heads, recomputation, budget."""
    own = files.heads(ledger)
    for site in sorted({r.site for r in rows} | {h.site for h in own}):
        pub = ledger.path.parent / SITE_KEY_PUB
        pinned = keys.get(site) or (pub.read_text().strip() if pub.is_file() else "")
        mine = [r for r in rows if r.site == site]
        _audit_site(report, site, ledger=ledger, rows=mine, server_rows=None,
                    server_heads=[], own_heads=[h for h in own if h.site == site], pinned=pinned,
                    allow_unsigned=allow_unsigned, summary=_site_only_summary(report, ledger.path, site, mine))
        if pinned and not keys.get(site):
            report.add([Finding(INFO, "anchor", f"{site}: heads checked against {SITE_KEY_PUB} beside the ledger, "
                                                f"key {fingerprint(pinned)}; a party that can rewrite this folder "
                                                "can replace it: pin the key with --site-key", site=site)])


def _server_and_sites(report: AuditReport, files: _Files, server: Ledger, server_rows: list[LedgerEntry],
                      site_files: Sequence[Path], *, folder: Path, keys: Mapping[str, str], server_key: str,
                      allow_unsigned: bool, only_site_files: bool = False) -> None:
    label = str(server.path)
    report.add(chain_findings(server, label))
    anchor, info = server_anchor_findings(server, folder / SERVER_HEAD_FILE, pinned_key=server_key,
                                          allow_unsigned=allow_unsigned, label=label)
    report.add(anchor)
    server_heads = files.heads(server)
    report.server = {"ledger": label, "rows": len(server_rows), "signed_heads_recorded": len(server_heads),
                     **info, "runs": sorted({r.run_id for r in server_rows})}
    summary = _summary(folder / "summary.json")
    site_ledgers: dict[str, tuple[Ledger, list[LedgerEntry]]] = {}
    for f in site_files:
        led = files.open(f)
        if led is None:
            continue
        report.add(chain_findings(led, str(f)))
        srows = files.rows(led)
        if _role(srows) not in ("site", "empty"):
            report.add([Finding(FAIL, "file", f"{f}: not a site's ledger (its events are {_role(srows)})",
                                ledger=str(f))])
            continue
        for name in sorted({r.site for r in srows}) or [_folder_site_name(f)]:
            site_ledgers[name] = (led, [r for r in srows if r.site == name])
    names = set(site_ledgers) if only_site_files else set(site_ledgers) | {r.site for r in server_rows}
    for site in sorted(names):
        led, srows = site_ledgers.get(site, (None, []))
        pub = led.path.parent / SITE_KEY_PUB if led is not None else None
        _audit_site(report, site, ledger=led, rows=srows, server_rows=server_rows,
                    server_heads=[h for h in server_heads if h.site == site],
                    own_heads=[h for h in files.heads(led) if h.site == site] if led is not None else [],
                    pinned=keys.get(site, ""), allow_unsigned=allow_unsigned,
                    summary=summary.get("sites", {}).get(site, {}), key_file=pub)


def _folder_site_name(ledger: Path) -> str:
    """The site an empty ledger belongs to, by its folder (``<site>/ledger.sqlite``, ``SITE/state/ledger.sqlite``)."""
    return ledger.parent.parent.name if ledger.parent.name == "state" else ledger.parent.name


def _site_only_summary(report: AuditReport, ledger: Path, site: str, rows: Sequence[LedgerEntry]) -> dict[str, Any]:
    """What a site's ledger alone cannot say (its seed source), from where it can be known.

    A simulation's ``<run>/sites/<site>/ledger.sqlite``: the run's ``summary.json``. A deployed site's state
    folder: its config has refused every seed source but "secret" since 2026-11-28, so rows written since then
    had secret seeds. Otherwise nothing (the report says "not recorded").
    """
    folder = ledger.parent
    if folder.parent.name == "sites":
        seed = _summary(folder.parent.parent / "summary.json").get("sites", {}).get(site, {}).get("noise_seed")
        if seed:
            return {"noise_seed": seed}
    if any((folder / m).exists() for m in _DEPLOYED_MARKERS):
        if all(r.ts[:10] >= _SECRET_SEEDS_SINCE for r in rows):
            report.add([Finding(INFO, "noise", f"{site}: a deployed site's ledger ({folder}): its config refuses every "
                                               f"noise seed but fresh OS entropy (rows since {_SECRET_SEEDS_SINCE})",
                                site=site)])
            return {"noise_seed": "secret"}
        report.add([Finding(INFO, "noise", f"{site}: rows before {_SECRET_SEEDS_SINCE} in this deployed site's ledger "
                                           "may have derived their seeds from the run's seed", site=site)])
    return {}


def _summary(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _audit_site(report: AuditReport, site: str, *, ledger: Ledger | None, rows: list[LedgerEntry],
                server_rows: list[LedgerEntry] | None, server_heads: list[HeadRecord], own_heads: list[HeadRecord],
                pinned: str, allow_unsigned: bool, summary: Mapping[str, Any], key_file: Path | None = None) -> None:
    if ledger is not None:
        audit = SiteAudit(site=site, source="site ledger", ledger=str(ledger.path))
        found, state = site_anchor_findings(
            site, rows, server_heads=server_heads, own_heads=own_heads, pinned_key=pinned,
            allow_unsigned=allow_unsigned, label=str(ledger.path),
            server_runs={r.run_id for r in server_rows} if server_rows is not None else None)
        report.add(found)
        audit.key_fingerprint = fingerprint(state.key) if state.key else ""
        audit.anchored_seq, audit.anchored_round = state.seq, state.round
        audit.anchor_source, audit.unanchored_rows = state.source, state.unanchored
        if key_file is not None and key_file.is_file() and state.key and not same_key(key_file.read_text(), state.key):
            report.add([Finding(FAIL, "anchor", f"{site}: {key_file} is not the key its ledger heads are signed with "
                                                f"({fingerprint(key_file.read_text())} vs {fingerprint(state.key)})",
                                site=site, ledger=str(key_file))])
        if server_rows is not None:
            report.add(compare_site_server(site, rows, server_rows, site_label=str(ledger.path),
                                           server_label=report.server.get("ledger", "")))
        heads = sorted([*server_heads, *own_heads], key=lambda h: h.head_seq)
        budget_for = _budget_by_seq(heads, summary)
        acct_rows = rows
    else:
        audit = SiteAudit(site=site, source="server ledger", ledger=report.server.get("ledger", ""))
        report.add(_server_heads_only(site, server_heads, pinned, report.server.get("ledger", "")))
        if server_heads:
            audit.key_fingerprint = fingerprint(pinned or server_heads[0].public_key)
            audit.anchor_source = "server"
        heads = server_heads
        by_round = {h.round: h.epsilon_budget for h in heads if h.epsilon_budget is not None}
        acct_rows = [r for r in (server_rows or []) if r.site == site]
        fallback = _budget_by_seq(heads, summary)
        seq_round = {r.seq: r.round for r in acct_rows}

        def budget_for(seq: int) -> float | None:
            return by_round.get(seq_round.get(seq, -1)) or fallback(10**12)
    report.add(recompute_site(audit, acct_rows, budget_for=budget_for, ledger_label=audit.ledger))
    if ledger is None and audit.mode != "central":  # central rows live in the server's ledger by design
        report.add([Finding(INFO, "recompute", f"{site}: its own ledger is not at hand: ε recomputed from the rows "
                                                "this server recorded (this server's rounds only)", site=site)])
    if audit.epsilon_budget is None and audit.mode == "central" and audit.target_epsilon is not None:
        audit.epsilon_budget = audit.target_epsilon  # central DP: the cap Flower's wrapper enforces (max_epsilon)
        audit.remaining = audit.epsilon_budget - max(audit.spent_reported or 0.0, audit.spent_pld or 0.0)
        if audit.remaining < -1e-9:
            audit.ever_exceeded = True
            report.add([Finding(FAIL, "budget", f"{site}: BUDGET EXCEEDED: ε={audit.spent_reported} above the "
                                                f"central target {audit.target_epsilon:g}", site=site)])
    if audit.epsilon_budget is None and summary.get("epsilon_budget") is not None:
        audit.epsilon_budget = float(summary["epsilon_budget"])
        audit.remaining = audit.epsilon_budget - max(audit.spent_reported or 0.0, audit.spent_pld or 0.0)
    audit.secure_mode = _secure_mode(heads, summary)
    audit.noise_seed = str(summary.get("noise_seed", "not recorded"))
    audit.max_records = int(summary["max_records"]) if summary.get("max_records") else None
    if audit.noise_seed == "run-seed":
        report.add([Finding(WARN, "noise", f"{site}: DP sampling and noise were derived from the run's seed "
                                           "(noise-seed = run-seed): the ε does not hold against anyone who knows "
                                           "the run config", site=site)])
    if audit.epsilon_budget is None:
        report.add([Finding(WARN, "budget", f"{site}: no lifetime budget recorded: 'ever exceeded' cannot be judged",
                            site=site)])
    report.sites[site] = audit


def _server_heads_only(site: str, heads: Sequence[HeadRecord], pinned: str, label: str) -> list[Finding]:
    out = []
    key = pinned or (heads[0].public_key if heads else "")
    for h in heads:
        if not same_key(h.public_key, key) or not h.valid():
            out.append(Finding(FAIL, "anchor", f"{site}: the head it sent after round {h.round} does not verify under "
                                               f"its key {fingerprint(key)}: forged or altered", site=site,
                               round=h.round, ledger=label))
    return out


def _budget_by_seq(heads: Sequence[HeadRecord], summary: Mapping[str, Any]) -> Callable[[int], float | None]:
    """seq -> the budget stated with the first head at or after it (the last stated, the summary's)."""
    stated = [(h.head_seq, h.epsilon_budget) for h in heads if h.epsilon_budget is not None]
    last = stated[-1][1] if stated else (float(summary["epsilon_budget"]) if summary.get("epsilon_budget") else None)

    def budget_for(seq: int) -> float | None:
        return next((b for s, b in stated if s >= seq), last)

    return budget_for


def _secure_mode(heads: Sequence[HeadRecord], summary: Mapping[str, Any]) -> str:
    stated = {h.round: h.secure_mode for h in heads if h.secure_mode is not None}
    values = set(stated.values())
    if values == {True}:
        return "on"
    if values == {False}:
        return "off"
    if values:
        return "mixed (on in rounds " + ", ".join(str(r) for r, v in sorted(stated.items()) if v) + ")"
    if "secure_mode" in summary:
        return ("on" if summary["secure_mode"] else "off") + " (summary.json)"
    return "not recorded"


def _finish(report: AuditReport) -> AuditReport:
    report.statements = statements(report)
    order = {FAIL: 0, WARN: 1, INFO: 2}
    report.findings.sort(key=lambda f: (order[f.level], f.site, f.round if f.round is not None else -1))
    return report
