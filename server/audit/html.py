"""``fedfusion audit --html OUT``: one self-contained HTML file (plots inline as base64 PNG).

It holds the verdict, what each site releases and under which relation (δ, the public max-records
bound, secure_mode, unprivatised evaluation metrics), the per-site budget table, a plot of cumulative ε per round
per site against each budget, the mechanism parameters of every ledger row beside the
recomputed ε, and every finding.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from common.storage import atomic_write_text
from server.audit.model import AuditReport, RoundRow
from server.audit.render import mechanism_summary, site_rows

__all__ = ["epsilon_plot_png", "render_html", "write_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.4em;font-size:.86em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f2f2f2}
td.l,th.l{text-align:left}.FAIL{color:#b00020;font-weight:600}.WARN{color:#a06000}.INFO{color:#666}
.banner{padding:.7em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.pass{background:#e6f4ea;color:#0b6b2b}.fail{background:#fde7e9;color:#b00020}
li{margin:.3em 0}code{background:#f5f5f5;padding:0 .2em}
"""


def _e(v: object) -> str:
    return html.escape(str(v))


def _n(v: float | int | None, fmt: str = ".4f") -> str:
    if v is None:
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, fmt)


def epsilon_plot_png(report: AuditReport) -> bytes | None:
    """PNG: cumulative ε per round per site (reported solid, PLD dashed), budget lines dotted, declines x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sites = [(n, a) for n, a in sorted(report.sites.items()) if a.rows]
    if not sites:
        return None
    fig, ax = plt.subplots(figsize=(10, 4.6))
    for i, (name, a) in enumerate(sites):
        color = f"C{i % 10}"
        points = _per_round(a.rows)
        xs = list(range(1, len(points) + 1))
        ax.plot(xs, [p.reported_epsilon for p in points], marker="o", color=color, label=f"{name} (reported)")
        if any(p.pld_epsilon is not None for p in points):
            ax.plot(xs, [p.pld_epsilon for p in points], linestyle="--", color=color, alpha=0.7,
                    label=f"{name} (dp-accounting PLD)")
        declined = [(x, p.reported_epsilon) for x, p in zip(xs, points) if p.event in ("decline", "declined")]
        if declined:
            ax.scatter(*zip(*declined), marker="x", s=70, color=color, zorder=3, label=f"{name} declined")
    budgets: dict[float, list[int]] = {}
    for i, (name, a) in enumerate(sites):
        if a.epsilon_budget is not None and math.isfinite(a.epsilon_budget):
            budgets.setdefault(a.epsilon_budget, []).append(i)
    for value, idx in sorted(budgets.items()):  # one line per budget value; shared lines are grey
        color = f"C{idx[0] % 10}" if len(idx) == 1 else "0.35"
        ax.axhline(value, color=color, linestyle=":", linewidth=1.3)
        ax.annotate(f"budget {value:.4g}: " + ", ".join(sites[i][0] for i in idx), (0.01, value), color=color,
                    fontsize=8, xycoords=("axes fraction", "data"), va="bottom")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    tops = [v for _, a in sites for r in a.rows for v in (r.reported_epsilon, r.pld_epsilon) if v is not None]
    top = max([*tops, *budgets, 1.0])
    ax.set_ylim(0, top * 1.12 if math.isfinite(top) else None)
    ax.set(xlabel="round (in the order the site's ledger recorded them)", ylabel="cumulative ε",
           title="Cumulative ε per round per site (dotted: lifetime budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _per_round(rows: list[RoundRow]) -> list[RoundRow]:
    """One point per round: the last ε-stating row of each (federation, round), in ledger order."""
    last: dict[tuple[str, int], RoundRow] = {}
    for r in rows:
        if r.reported_epsilon is not None:
            last.pop((r.federation_id, r.round), None)
            last[(r.federation_id, r.round)] = r
    return sorted(last.values(), key=lambda r: r.seq)


def render_html(report: AuditReport) -> str:
    """The whole report as one HTML document (no external resources)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>fedfusion privacy audit</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Privacy audit</h1><p><code>{_e(report.target)}</code> ({_e(report.kind)})</p>",
             f"<p class='banner {'pass' if report.passed else 'fail'}'>Audit {'PASSED' if report.passed else 'FAILED'}"
             f": {report.count('FAIL')} failure(s), {report.count('WARN')} warning(s)</p>",
             "<h2>What is released, under which relation, and what the numbers mean</h2><ul>"
             + "".join(f"<li>{_e(s)}</li>" for s in report.statements) + "</ul>"]
    rows = site_rows(report)
    if rows:
        parts.append("<h2>Budgets</h2><table><tr>" + "".join(
            f"<th class='{'l' if k in ('site', 'secure_mode', 'signed up to') else ''}'>{_e(k)}</th>" for k in rows[0])
            + "</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(
                f"<td class='{'l ' if k in ('site', 'secure_mode', 'signed up to') else ''}"
                f"{r['verdict'] if k == 'verdict' else ''}'>{_e(v)}</td>" for k, v in r.items()) + "</tr>")
        parts.append("</table>")
    png = epsilon_plot_png(report)
    if png:
        parts.append("<h2>ε per round</h2><img alt='cumulative epsilon per round per site' "
                     f"src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>")
    parts.append("<h2>Mechanisms, row by row</h2>")
    for name, a in sorted(report.sites.items()):
        parts.append(f"<h3>{_e(name)}</h3><p>{_e(a.mode)} — {_e(mechanism_summary(a))}; from the {_e(a.source)} "
                     f"<code>{_e(a.ledger)}</code>; key <code>{_e(a.key_fingerprint or 'none')}</code></p>")
        parts.extend(f"<p class='WARN'>declined round {_e(d['round'])} ({_e(d['federation_id'])}): "
                     f"{_e(d['reason'])}</p>" for d in a.declined)
        parts.append(_mechanism_table(a.rows))
    if report.findings:
        parts.append("<h2>Findings</h2><table><tr><th class='l'>level</th><th class='l'>check</th><th>site</th>"
                     "<th>round</th><th>seq</th><th class='l'>finding</th></tr>")
        for f in report.findings:
            parts.append(f"<tr><td class='l {f.level}'>{f.level}</td><td class='l'>{_e(f.check)}</td>"
                         f"<td>{_e(f.site)}</td><td>{_n(f.round, 'd')}</td><td>{_n(f.seq, 'd')}</td>"
                         f"<td class='l'>{_e(f.message)}</td></tr>")
        parts.append("</table>")
    if report.server:
        parts.append("<h2>Server ledger</h2><ul>" + "".join(
            f"<li>{_e(k)}: <code>{_e(v)}</code></li>" for k, v in report.server.items()) + "</ul>")
    parts.append("<h2>Thresholds</h2><ul>" + "".join(
        f"<li>{_e(k)} = {_e(v)}</li>" for k, v in report.thresholds.items()) + "</ul></body></html>")
    return "\n".join(parts)


def _mechanism_table(rows: list[RoundRow]) -> str:
    head = ("seq", "round", "event", "σ", "q", "steps", "C", "δ", "accountant", "ε reported", "ε_rdp reported",
            "ε PLD", "ε RDP", "budget", "status")
    out = ["<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        cls = ("FAIL" if r.status in ("under-reported", "over-budget")
               else ("WARN" if r.status in ("conservative", "within-grid", "no-dp") else ""))
        cells = (r.seq, r.round, r.event, _n(r.noise_multiplier), _n(r.sample_rate), r.steps, _n(r.max_grad_norm, "g"),
                 _n(r.delta, "g"), r.accountant, _n(r.reported_epsilon), _n(r.reported_epsilon_rdp), _n(r.pld_epsilon),
                 _n(r.rdp_epsilon), _n(r.budget, "g"), r.status)
        out.append("<tr>" + "".join(f"<td class='{cls if i == len(cells) - 1 else ''}'>{_e(c)}</td>"
                                    for i, c in enumerate(cells)) + "</tr>")
    return "".join(out) + "</table>"


def write_html(report: AuditReport, path: Path) -> None:
    """Write :func:`render_html` atomically to ``path``."""
    atomic_write_text(Path(path), render_html(report))
