"""The audit report for people (a rich terminal table) and for machines (``--json``)."""

from __future__ import annotations

import json
import math
from typing import Any

from server.audit.model import FAIL, INFO, WARN, AuditReport, SiteAudit

__all__ = ["mechanism_summary", "print_report", "report_json", "site_rows"]

_STYLE = {FAIL: "bold red", WARN: "yellow", INFO: "dim"}


def _f(v: float | None, fmt: str = ".3f") -> str:
    if v is None:
        return "n/a"
    return "∞" if math.isinf(v) else format(v, fmt)


def mechanism_summary(a: SiteAudit) -> str:
    """σ, q, steps per round and C of the site's composed rounds, compactly (distinct values only)."""
    composed = [r for r in a.rows if r.event in ("reserve", "trained")]

    def distinct(values: list[Any], fmt: str) -> str:
        vals = sorted({v for v in values if v is not None})
        return "/".join(format(v, fmt) for v in vals) if vals else "n/a"

    if not composed:
        return "none composed"
    return (f"σ={distinct([r.noise_multiplier for r in composed], '.4g')} "
            f"q={distinct([r.sample_rate for r in composed], '.4g')} "
            f"steps={distinct([r.steps for r in composed], 'd')} "
            f"C={distinct([r.max_grad_norm for r in composed], 'g')}")


def site_rows(report: AuditReport) -> list[dict[str, str]]:
    """One row per site, as printed (terminal and HTML share it)."""
    out = []
    for name, a in sorted(report.sites.items()):
        by = {"server": "by a head the server recorded", "site": "by the site's own head"}.get(a.anchor_source, "")
        anchor = (f"seq {a.anchored_seq}" + (f" (r{a.anchored_round})" if a.anchored_round is not None else "")
                  + f" {by}" if a.anchor_source != "none" else "none")
        if a.unanchored_rows:
            anchor += f", {a.unanchored_rows} after"
        out.append({
            "site": name,
            "ε reported": _f(a.spent_reported) + (" (NO DP)" if a.released_without_dp else (
                f" ({'/'.join(a.accountants).upper()})" if a.accountants else "")),
            "ε PLD": _f(a.spent_pld),
            "ε RDP": _f(a.spent_rdp),
            "target": _f(a.target_epsilon, "g"),
            "budget": _f(a.epsilon_budget, ".4g"),
            "remaining": _f(a.remaining),
            "trained/declined": f"{a.rounds_trained}/{a.rounds_declined}",
            "exceeded": "YES" if a.ever_exceeded else "no",
            "δ": ", ".join(f"{d:.0e}" for d in a.deltas) or "n/a",
            "max-records": str(a.max_records) if a.max_records else "n/a",
            "secure_mode": a.secure_mode,
            "signed up to": anchor,
            "verdict": report.site_verdict(name),
        })
    return out


def print_report(report: AuditReport, *, console: Any = None) -> None:
    """Print the audit to the terminal: sites, mechanisms, findings, what the numbers mean, the verdict."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    table = Table(title=f"fedfusion audit — {report.target} ({report.kind})", title_justify="left")
    rows = site_rows(report)
    wide = ("secure_mode", "signed up to")  # printed per site below the table
    for col in (rows[0] if rows else {"site": ""}):
        if col not in wide:
            table.add_column(col, justify="left" if col == "site" else "right", no_wrap=col == "site")
    for r in rows:
        style = {"FAIL": "red", "WARN": "yellow"}.get(r["verdict"], "")
        table.add_row(*(v for k, v in r.items() if k not in wide), style=style)
    console.print(table)
    for r, (name, a) in zip(rows, sorted(report.sites.items())):
        keyinfo = f"; {name}'s key {a.key_fingerprint}" if a.key_fingerprint else ""
        console.print(f"  {name}: {a.mode}, {mechanism_summary(a)}; secure_mode {a.secure_mode}; from the "
                      f"{a.source}, signed up to {r['signed up to']}{keyinfo}", style="dim", highlight=False)
        for d in a.declined:
            console.print(f"    declined round {d['round']} ({d['federation_id']}): {d['reason']}", style="yellow")
    if report.server:
        s = report.server
        console.print(f"  server ledger {s.get('ledger')}: {s.get('rows')} rows, "
                      f"{s.get('signed_heads_recorded')} signed "
                      f"site heads recorded, signed by {s.get('key_fingerprint') or 'nobody'} up to seq "
                      f"{s.get('anchored_seq')}", style="dim")
    if report.findings:
        console.print()
    for f in report.findings:
        console.print(f"{f.level:4} [{f.check}] {f.message}", style=_STYLE[f.level], markup=False, highlight=False)
    console.print()
    for line in report.statements:
        console.print(f"• {line}", style="dim", markup=False, highlight=False)
    verdict = "PASSED" if report.passed else "FAILED"
    console.print(f"\naudit {verdict}: {report.count(FAIL)} failure(s), {report.count(WARN)} warning(s)",
                  style="bold green" if report.passed else "bold red")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def report_json(report: AuditReport) -> str:
    """The report as strict JSON (schema ``fedfusion-audit/1``; non-finite numbers become null)."""
    return json.dumps(_finite(report.to_dict()), indent=2, ensure_ascii=False, allow_nan=False)
