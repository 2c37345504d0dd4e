"""Privacy-utility table of the packaged hospitals scenario: balanced accuracy and accuracy, mean ± sd over seeds.

    .venv/bin/python benchmarks/utility.py [--seeds 5] [--rounds 8] [--epsilons 0.5,1,2,4,8] [--out DIR]

Each row is a whole federation (all four hospitals, ``num-server-rounds`` rounds, the run defaults of
pyproject.toml unless the row says otherwise) driven in one process by ``simulations.inprocess.run_federation``:
the same site round (``client.round.SiteRound``: terms, ledger, Opacus DP-SGD, PRV accountant) and the same
strategy classes (``server.optimizers.build_strategy``) as ``fedfusion simulate``, without Flower's transport
(README "Benchmarks"). Each run starts with empty ledgers; the ε of a row is what the sites' own accountants report
(PRV, δ < 1/n per site), never a nominal value.

Rows:

* ``fedavg, no DP`` / ``fedyogi, no DP``: the federated non-private references (the scenario copy's site files
  allow ``dp = false``, as ``fedfusion simulate --site-privacy dp=false`` does);
* ``fedavg, ε = e``: DP-SGD at target ε = e (the copy's site files set ``target-epsilon`` = ``epsilon-budget`` = e).

For every row it also reports the fused model's test metrics with one modality hidden at test time
(``only-tabular`` / ``only-text``: the evaluation ablations every site computes), at the sites that hold notes.
These are the *fused* model evaluated on one modality, not a model trained on that modality alone.

Outputs ``utility.json`` (every seed's per-site metrics), ``utility.md`` (the table) and ``privacy-utility.png``.
The seed changes the model's initialisation; DP noise and sampling use the sites' secret seeds (their files allow
nothing else), so the runs are not bit-reproducible, only statistically.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the project's packages (a site-packages "benchmarks" shadows ours)
    sys.path.insert(0, str(ROOT))

from common.config import app_defaults, write_with_site_privacy  # noqa: E402
from simulations.baselines import BASELINES  # noqa: E402
from simulations.inprocess import FederationResult, fresh_ledgers, run_federation, weighted  # noqa: E402

__all__ = ["Row", "ROW_FAMILIES", "register_rows", "rows", "METRICS", "run_row", "summarise", "main"]

SCENARIO = ROOT / "simulations" / "scenarios" / "hospitals.toml"
NOTES_SITES = ("cleveland", "hungary", "switzerland")  # the sites of the scenario holding clinical notes


@dataclass(frozen=True)
class Row:
    """One table row: a name, how a result is produced, the site-file changes (the scenario copy) and run settings.

    ``train`` takes a complete run config and returns per-site results: ``run_federation`` (a federation) or one
    of ``simulations.baselines.BASELINES`` (pooled, local-only).
    """

    name: str
    site_privacy: dict[str, Any]
    settings: dict[str, Any]
    epsilon: float  # the target ε (inf: no DP)
    train: Callable[[Mapping[str, Any]], FederationResult] = run_federation
    note: str = ""  # the row's own hyperparameters / caveat, printed under the table


NO_DP = {"dp": False}


def _references(epsilons: list[float]) -> list[Row]:
    """Non-private references: pooled, local-only (plain optimiser, rounds x local-epochs passes), federated."""
    del epsilons
    plain = "plain-optimizer / plain-learning-rate (pyproject), num-server-rounds x local-epochs passes"
    return [Row("pooled, no DP", NO_DP, NO_DP, math.inf, BASELINES["pooled"],
                f"one model on all sites' train rows; {plain}"),
            Row("local-only, no DP", NO_DP, NO_DP, math.inf, BASELINES["local-only"],
                f"each site alone, scored on its own test rows; {plain}"),
            Row("fedavg, no DP", NO_DP, NO_DP, math.inf, note="plain-optimizer / plain-learning-rate at each site"),
            Row("fedyogi, no DP", NO_DP, {**NO_DP, "strategy": "fedyogi"}, math.inf,
                note="server-* settings: Flower's / Reddi et al.'s published defaults")]


def _dp_grid(epsilons: list[float]) -> list[Row]:
    """DP-SGD at each target ε (the scenario copy's site files set target-epsilon = epsilon-budget = ε)."""
    return [Row(f"fedavg, ε = {e:g}", {"target-epsilon": e, "epsilon-budget": e},
                {"target-epsilon": e, "epsilon-budget": e}, e) for e in epsilons]


#: row families, in table order: name -> (ε grid) -> rows. Add a family with :func:`register_rows`.
ROW_FAMILIES: dict[str, Callable[[list[float]], list[Row]]] = {"references": _references, "dp": _dp_grid}


def register_rows(family: str) -> Callable[[Callable[[list[float]], list[Row]]], Callable[[list[float]], list[Row]]]:
    """Decorator: add a family of rows (e.g. each modality alone at every ε) to the table, after the others."""
    def add(make: Callable[[list[float]], list[Row]]) -> Callable[[list[float]], list[Row]]:
        if family in ROW_FAMILIES:
            raise ValueError(f"row family {family!r} is already registered")
        ROW_FAMILIES[family] = make
        return make
    return add


def rows(epsilons: list[float], families: list[str] | None = None) -> list[Row]:
    """Every row of the chosen ``families`` (default all, in registration order); row names are unique."""
    unknown = sorted(set(families or ()) - set(ROW_FAMILIES))
    if unknown:
        raise ValueError(f"unknown row families {unknown}: known are {list(ROW_FAMILIES)}")
    out = [r for name, make in ROW_FAMILIES.items() if not families or name in families for r in make(epsilons)]
    names = [r.name for r in out]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate row names in {names}")
    return out


#: summary metrics of one federation (name -> function of the result)
METRICS: dict[str, Callable[[FederationResult], float]] = {
    "balanced-accuracy": lambda r: weighted(r, "balanced-accuracy"),
    "accuracy": lambda r: weighted(r, "accuracy"),
    "auc": lambda r: weighted(r, "auc"),
    "notes-sites balanced-accuracy": lambda r: weighted(r, "balanced-accuracy", sites=NOTES_SITES),
    "notes-sites bacc only-tabular": lambda r: weighted(r, "bacc-only-tabular", sites=NOTES_SITES),
    "notes-sites bacc only-text": lambda r: weighted(r, "bacc-only-text", sites=NOTES_SITES),
    "notes-sites auc only-text": lambda r: weighted(r, "auc-only-text", sites=NOTES_SITES),
    "max site epsilon": lambda r: max(s.epsilon for s in r.sites.values()),
}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> run settings, each converted to its default's type."""
    defaults, out = app_defaults(), {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with KEY one of the run settings")
        d = defaults[key]
        out[key] = (value.lower() == "true") if isinstance(d, bool) else type(d)(value)
    return out


def run_row(row: Row, *, seed: int, rounds: int, work: Path, overrides: dict[str, Any],
            scenario: Path = SCENARIO) -> dict[str, Any]:
    """One result of ``row`` at ``seed`` (a federation, or a baseline): summary metrics and per-site metrics."""
    copy = write_with_site_privacy(scenario, work / f"{_slug(row.name)}.toml", row.site_privacy)
    state = work / "state"  # shared: feature caches stay, ledgers are removed before each run
    fresh_ledgers(state)
    config = {**app_defaults(), "scenario-file": str(copy), "site-state-root": str(state), "seed": seed,
              "num-server-rounds": rounds, **overrides, **row.settings}
    result = row.train(config)
    return {"summary": {k: f(result) for k, f in METRICS.items()},
            "sites": {n: {"epsilon": s.epsilon, "delta": s.delta, **s.metrics} for n, s in result.sites.items()}}


def summarise(values: list[float]) -> str:
    """``mean ± sd`` (sample sd) of the finite ``values``."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "–" if not values else ("∞" if all(math.isinf(x) for x in values) else "–")
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def write_table(results: dict[str, list[dict[str, Any]]], path: Path, *, seeds: int, rounds: int,
                overrides: dict[str, Any], rows_by_name: Mapping[str, Row]) -> None:
    cols = list(METRICS)
    changed = ", ".join(f"{k} = {v!r}" for k, v in overrides.items()) or "none"
    lines = [f"Hospitals scenario (920 patients, 4 sites), {rounds} rounds, mean ± sd over {seeds} seeds "
             f"(test-row-weighted over sites); settings changed from the defaults: {changed}.", "",
             "| row | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, runs in results.items():
        lines.append(f"| {name} ({len(runs)}) | " + " | ".join(summarise([r["summary"][c] for r in runs])
                                                         for c in cols) + " |")
    notes = {r.name: r.note for r in rows_by_name.values() if r.note and r.name in results}
    lines += ["", "(n) = seeds finished."] + [f"* {name}: {note}" for name, note in notes.items()]
    path.write_text("\n".join(lines) + "\n")


def write_plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Balanced accuracy against the sites' reported ε, with the non-private references as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    points = {k: v for k, v in results.items() if all(math.isfinite(r["summary"]["max site epsilon"]) for r in v)}
    for key, label in (("balanced-accuracy", "fused, all sites"),
                       ("notes-sites bacc only-text", "text only (notes sites)"),
                       ("notes-sites bacc only-tabular", "tabular only (notes sites)")):
        xs = [statistics.fmean(r["summary"]["max site epsilon"] for r in v) for v in points.values()]
        ys = [statistics.fmean(r["summary"][key] for r in v) for v in points.values()]
        sd = [statistics.stdev([r["summary"][key] for r in v]) if len(v) > 1 else 0.0 for v in points.values()]
        ax.errorbar(xs, ys, yerr=sd, marker="o", capsize=3, label=f"DP: {label}")
    for name, v in results.items():
        if name not in points:
            ax.axhline(statistics.fmean(r["summary"]["balanced-accuracy"] for r in v), ls="--", lw=1, label=name)
    if points:  # a grid of non-private rows only has no ε axis to scale
        ax.set_xscale("log")
    ax.set_xlabel("ε reported by the sites (PRV, δ < 1/n)")
    ax.set_ylabel("balanced accuracy (test)")
    ax.set_title("Privacy-utility, hospitals scenario")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=int(app_defaults()["num-server-rounds"]))
    p.add_argument("--epsilons", default="0.5,1,2,4,8")
    p.add_argument("--rows", default="", help="row names to run, separated by ; (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run setting for every row, e.g. fusion=late (repeatable; recorded in utility.json)")
    p.add_argument("--families", default="", help="row families to run, separated by , (default: all: "
                   + ", ".join(ROW_FAMILIES) + ")")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "utility")
    p.add_argument("--work", type=Path, default=None, help="folder for the sites' state (feature caches are kept; "
                   "ledgers are removed before each run); default a temporary folder")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # every site logs each round; the table is the output
    args.out.mkdir(parents=True, exist_ok=True)
    families = [f for f in args.families.split(",") if f] or None
    selected = [r for r in rows([float(e) for e in args.epsilons.split(",")], families)
                if not args.rows or r.name in args.rows.split(";")]
    overrides = parse_sets(args.set)
    results: dict[str, list[dict[str, Any]]] = {}
    started = time.monotonic()
    # seeds outermost: an interrupted grid has every row at the seeds it finished (json written after every run)
    with tempfile.TemporaryDirectory(prefix="fedfusion-utility-") as tmp:
        work = args.work or Path(tmp)  # --work keeps the sites' feature caches across invocations
        work.mkdir(parents=True, exist_ok=True)
        for seed in range(args.seeds):
            for row in selected:
                t = time.monotonic()
                results.setdefault(row.name, []).append(run_row(row, seed=seed, rounds=args.rounds, work=work,
                                                                overrides=overrides))
                (args.out / "utility.json").write_text(json.dumps(
                    {"seeds": args.seeds, "rounds": args.rounds, "settings": overrides, "complete": False,
                     "rows": results}, indent=1))
                s = results[row.name][-1]["summary"]
                print(f"{row.name:>18} seed {seed}: bacc {s['balanced-accuracy']:.3f} "
                      f"text-only {s['notes-sites bacc only-text']:.3f} eps {s['max site epsilon']:.2f} "
                      f"({time.monotonic() - t:.0f} s)", flush=True)
    elapsed = time.monotonic() - started
    (args.out / "utility.json").write_text(json.dumps({"seeds": args.seeds, "rounds": args.rounds,
                                                       "settings": overrides, "complete": True,
                                                       "seconds": elapsed, "rows": results}, indent=1))
    write_table(results, args.out / "utility.md", seeds=args.seeds, rounds=args.rounds, overrides=overrides,
                rows_by_name={r.name: r for r in selected})
    write_plot(results, args.out / "privacy-utility.png")
    print((args.out / "utility.md").read_text())
    print(f"{elapsed:.0f} s in all; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
