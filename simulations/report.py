"""The run report a person looks at: a per-site table and a plot of accuracy and ε per round."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path
from typing import Any

__all__ = ["site_table", "modality_table", "print_report", "plot_rounds", "plot_privacy_utility"]


def _f(v: Any, fmt: str = ".3f") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return format(v, fmt)


def site_table(summary: dict[str, Any]) -> list[dict[str, str]]:
    """One row per site: final metrics and ε spent against budget."""
    rows = []
    for name, s in sorted(summary.get("sites", {}).items()):
        m = s.get("metrics") or {}
        budget = s.get("epsilon_budget")
        rows.append({
            "site": name,
            "test n": _f(m.get("num-examples"), ".0f"),
            "accuracy": _f(m.get("accuracy")),
            "balanced acc.": _f(m.get("balanced-accuracy")),
            "AUC": _f(m.get("auc")),
            "ε (PRV)": _f(s.get("epsilon"), ".2f"),
            "ε (RDP)": _f(s.get("epsilon_rdp"), ".2f"),
            "budget": _f(budget, ".2f"),
            "δ": _f(s.get("delta"), ".0e"),
            "σ": _f(s.get("noise_multiplier"), ".3f"),
            "trained/declined": f"{s.get('rounds_trained', 0)}/{s.get('rounds_declined', 0)}",
        })
    return rows


def modality_table(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Per site: balanced accuracy / AUC of the fused model, with each modality removed, and each alone."""
    mods = summary.get("modalities", [])
    rows = []
    for name, s in sorted(summary.get("sites", {}).items()):
        ab = s.get("modality_ablations")
        if not ab:
            continue
        m = s.get("metrics") or {}
        row = {"site": name, "fused": f"{_f(m.get('balanced-accuracy'), '.2f')} / {_f(m.get('auc'), '.2f')}"}
        for mod in mods:
            for tag in (f"without-{mod}", f"only-{mod}"):
                if f"bacc-{tag}" in ab:
                    row[tag] = f"{_f(ab.get(f'bacc-{tag}'), '.2f')} / {_f(ab.get(f'auc-{tag}'), '.2f')}"
                else:
                    row[tag] = "-"
        rows.append(row)
    return rows


def time_line(summary: dict[str, Any]) -> str | None:
    """Median training round: wall time, slowest site's compute, and the overhead's split (server/recorder.py)."""
    rows = [r["timing"]["train"] for k, r in summary.get("rounds", {}).items()
            if int(k) >= 1 and "train" in r.get("timing", {})]
    if not rows:
        return None
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if all(k in r for r in rows)}
    parts = [f"process start-up {med['last_site_startup_s']:.1f} s"] if "last_site_startup_s" in med else []
    parts += [f"data/model setup {med['last_site_setup_s']:.1f} s"] if "last_site_setup_s" in med else []
    parts += [f"Flower hand-offs and server {med['handoff_s']:.1f} s"] if "handoff_s" in med else []
    return (f"time per training round (median of {len(rows)}): {med['wall_s']:.1f} s, of which the slowest site's "
            f"training + evaluation {med['slowest_site_compute_s']:.1f} s and overhead {med['overhead_s']:.1f} s"
            + (f" (last site: {', '.join(parts)})" if parts else ""))


_NOISE_SEED_NOTES = {  # client/dp_random.py
    "secret": "[dim]DP batch sampling, noise and dropout masks: secret seeds (fresh OS entropy each round, never "
              "stored or sent): {sites}[/dim]",
    "run-seed": "[yellow]DP batch sampling, noise and dropout masks derived from the run's seed "
                "(noise-seed = run-seed): reproducible, but whoever knows this run's config can recompute the noise, "
                "and the ε does not hold against them: {sites}[/yellow]",
}


def noise_seed_lines(summary: dict[str, Any]) -> list[str]:
    """One line per noise-seed source the sites reported (sites that trained with DP only)."""
    by: dict[str, list[str]] = {}
    for name, s in sorted(summary.get("sites", {}).items()):
        if s.get("noise_seed") in _NOISE_SEED_NOTES:
            by.setdefault(s["noise_seed"], []).append(name)
    return [_NOISE_SEED_NOTES[k].format(sites=", ".join(v)) for k, v in sorted(by.items())]


def print_report(summary: dict[str, Any], out_dir: Path | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    rows = site_table(summary)
    table = Table(title=f"fedfusion — {summary.get('scenario', '?')} — {summary.get('num_rounds', '?')} rounds "
                        f"({summary.get('duration_s', '?')} s)")
    for col in (rows[0] if rows else {"site": ""}):
        table.add_column(col, justify="left" if col == "site" else "right")
    for r in rows:
        table.add_row(*r.values())
    console.print(table)
    mrows = modality_table(summary)
    if mrows:
        mt = Table(title="missing-modality robustness: balanced accuracy / AUC on each site's test set "
                         "(final model; modality hidden by its mask; trained with modality dropout "
                         f"{summary.get('modality_dropout', 0.0):g})")
        for col in mrows[0]:
            mt.add_column(col, justify="left" if col == "site" else "right")
        for r in mrows:
            mt.add_row(*r.values())
        console.print(mt)
    last = summary.get("rounds", {})
    if last:
        k = max(last, key=int)
        w = last[k].get("weighted", {})
        console.print(f"weighted over sites, round {k}: accuracy {_f(w.get('accuracy'))}, balanced accuracy "
                      f"{_f(w.get('balanced-accuracy'))}, AUC {_f(w.get('auc'))}")
    if (timing := time_line(summary)) is not None:
        console.print(timing, style="dim")
    central = summary.get("central_dp")
    if central:  # privacy-mode "central": one site-level ε for the federation (server/central.py)
        console.print(f"site-level (central) DP: ε = {_f(central.get('epsilon'))} at δ = {_f(central.get('delta'), 'g')} "
                      f"after {central.get('releases')} releases (Flower RdpAccountant; dp_accounting PLD "
                      f"{_f(central.get('epsilon_pld'))}); σ = {_f(central.get('noise_multiplier'))}, "
                      f"C = {_f(central.get('clipping_norm'), 'g')}, {central.get('sampled_sites')} of "
                      f"{central.get('num_sites')} sites per round, no sampling amplification claimed")
    console.print(summary.get("accountant_note", ""), style="dim")
    for line in noise_seed_lines(summary):
        console.print(line)
    console.print(summary.get("data_note", ""), style="dim")
    declined = {n: s.get("last_decline_reason") for n, s in summary.get("sites", {}).items()
                if s.get("rounds_declined")}
    for n, why in declined.items():
        console.print(f"[yellow]{n} declined to train: {why}[/yellow]")
    for n, s in sorted(summary.get("sites", {}).items()):
        if s.get("rounds_failed"):
            console.print(f"[red]{n} failed in {s['rounds_failed']} round(s): {s.get('last_error', '')}[/red]")
        if s.get("rounds_no_reply"):  # sampled, never answered (server/strategy.py): it may have spent the round
            console.print(f"[red]{n} sent no reply in {s['rounds_no_reply']} round(s) it was sampled for[/red]")
    if out_dir is not None:  # only what is there: a deployed run's site ledgers live at the sites
        names = [n for n in ("summary.json", "metrics.csv", "ledger.sqlite", "ledger-head.json", "model.safetensors",
                             "checkpoint.safetensors", "rounds.png", "privacy-utility.png", "server_key.pub",
                             "server_key")
                 if (out_dir / n).exists()]
        names = [n + " (private, 0600)" if n == "server_key" else n for n in names]
        if (out_dir / "sites").is_dir():
            names.append("sites/<site>/ledger.sqlite")
        console.print(f"outputs in {out_dir}: {', '.join(names)}")


def plot_rounds(metrics_csv: Path, png: Path, *, budgets: dict[str, float] | None = None) -> None:
    """Accuracy and cumulative ε per round per site, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    with metrics_csv.open() as fh:
        for row in csv.DictReader(fh):
            s = series.setdefault(row["site"], {"accuracy": [], "balanced-accuracy": [], "epsilon": []})
            for k in s:
                if row.get(k):
                    s[k].append((int(row["round"]), float(row[k])))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (site, s) in enumerate(sorted(series.items())):
        color = f"C{i}"
        if s["balanced-accuracy"]:
            ax1.plot(*zip(*s["balanced-accuracy"]), marker="o", color=color, label=site)
        if s["epsilon"]:
            ax2.plot(*zip(*s["epsilon"]), marker="o", color=color, label=site)
        if budgets and site in budgets and budgets[site]:
            ax2.axhline(budgets[site], color=color, linestyle="--", linewidth=0.8)
    ax1.set(title="balanced accuracy on each site's test set", xlabel="round", ylim=(0, 1))
    ax2.set(title="cumulative ε per site (PRV; dashed: lifetime budget)", xlabel="round", ylabel="ε")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _series(metrics_csv: Path, keys: tuple[str, ...]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    series: dict[str, dict[str, list[tuple[int, float]]]] = {}
    with metrics_csv.open() as fh:
        for row in csv.DictReader(fh):
            s = series.setdefault(row["site"], {k: [] for k in keys})
            for k in keys:
                if row.get(k):
                    s[k].append((int(row["round"]), float(row[k])))
    return series


def plot_privacy_utility(metrics_csv: Path, png: Path) -> bool:
    """Balanced accuracy against cumulative ε, one line per site through the rounds (a run's privacy-utility curve).

    Only rounds that report both are drawn (a release without DP has ε = inf: no point). Returns whether a PNG was
    written (False: no round had both).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = _series(metrics_csv, ("balanced-accuracy", "epsilon"))
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for i, (site, s) in enumerate(sorted(series.items())):
        eps = dict(s["epsilon"])
        points = sorted((eps[r], v) for r, v in s["balanced-accuracy"] if r in eps and math.isfinite(eps[r]))
        if points:
            ax.plot(*zip(*points), marker="o", color=f"C{i}", label=site)
            drawn = True
    if drawn:
        ax.set(title="privacy-utility: balanced accuracy vs cumulative ε (PRV), by round", xlabel="ε spent",
               ylabel="balanced accuracy (test)", ylim=(0, 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110)
    plt.close(fig)
    return drawn
