"""The tables of ``benchmarks/utility_all.py`` from its results (``utility-all.json``'s ``rows``), and the plot.

Every number is a mean ± sd over seeds of a per-seed value; a per-seed value of the hospitals scenarios is a
test-row-weighted mean over the named sites (each site's own test rows, as ``simulations.inprocess.weighted``).
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

__all__ = ["FEDMULTIMODAL", "sibling", "site_mean", "mean_sd", "write_all"]



def sibling(name: str):
    """A script of this folder as a module, loaded once (the folder is not a package, and a site-packages
    ``benchmarks`` package would shadow it)."""
    key = f"fedfusion_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


NOTES_SITES = ("cleveland", "hungary", "switzerland")  # hospitals: the sites holding clinical notes
IMAGE_SITES = ("cleveland", "hungary", "va_long_beach")  # hospitals-multimodal: the sites holding images
#: FedMultimodal (Feng et al., KDD 2023), UCF101 audio + video, 200 clients, Dirichlet α = 1.0: top-1 accuracy at
#: 0 / 30 / 50 % missing modality (the brief's values; the paper's figure gives no other points)
FEDMULTIMODAL = {0.0: 69.87, 0.3: 66.64, 0.5: 58.21}


def site_mean(run: dict[str, Any], key: str, sites: Iterable[str] | None = None) -> float:
    """Test-row-weighted mean of per-site ``key`` over ``sites`` (default all) reporting a finite value."""
    pairs = [(m.get(key, math.nan), m.get("num-examples", 0.0)) for name, m in run["sites"].items()
             if sites is None or name in sites]
    pairs = [(v, w) for v, w in pairs if isinstance(v, (int, float)) and math.isfinite(v) and w > 0]
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs) if pairs else math.nan


def mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean ± sd`` (sample sd) of the finite values; ``–`` when none."""
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def _eps(runs: list[dict[str, Any]]) -> str:
    e = [r["summary"]["max site epsilon"] for r in runs]
    return "∞ (no DP)" if all(math.isinf(x) or math.isnan(x) for x in e) else f"{max(e):.2f}"


def _col(runs, key, sites=None) -> str:
    return mean_sd([site_mean(r, key, sites) for r in runs])


Cell = Callable[[list[dict[str, Any]]], str]  # a table cell from a row's runs (one per seed)


def _metric(key: str, sites: Iterable[str] | None = None) -> Cell:
    """The cell of ``key``: mean ± sd over seeds of its test-row-weighted mean over ``sites`` (default all)."""
    return lambda runs: _col(runs, key, sites)


#: the hospitals table's columns after ``row (seeds)``: title -> cell
HOSPITALS_COLUMNS: dict[str, Cell] = {
    "bacc, 4 sites": _metric("balanced-accuracy"),
    "acc, 4 sites": _metric("accuracy"),
    "AUC, 4 sites": _metric("auc"),
    "notes sites: bacc": _metric("balanced-accuracy", NOTES_SITES),
    "notes sites: acc": _metric("accuracy", NOTES_SITES),
    "notes alone (tabular hidden): AUC": _metric("auc-only-text", NOTES_SITES),
    "notes alone: bacc": _metric("bacc-only-text", NOTES_SITES),
    "ε reported (max)": _eps,
}
#: the image table's columns after ``row (seeds)``: title -> cell
IMAGE_COLUMNS: dict[str, Cell] = {
    "fused: acc (image sites)": _metric("accuracy", IMAGE_SITES),
    "fused: bacc": _metric("balanced-accuracy", IMAGE_SITES),
    "image alone: acc": _metric("acc-only-image", IMAGE_SITES),
    "image alone: bacc": _metric("bacc-only-image", IMAGE_SITES),
    "image alone: AUC": _metric("auc-only-image", IMAGE_SITES),
    "notes alone: AUC (notes sites)": _metric("auc-only-text", NOTES_SITES),
    "ε reported (max)": _eps,
}


def _table(columns: dict[str, Cell], rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A markdown table: a line per row, ``name (seeds)`` then each column's cell."""
    out = ["| row (seeds) | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, runs in rows.items():
        out.append(f"| {name} ({len(runs)}) | " + " | ".join(cell(runs) for cell in columns.values()) + " |")
    return out


def _fused_vs_alone(hosp: dict[str, list], alone: dict[str, list]) -> list[str]:
    out = ["| ε | fused: bacc 4 sites | tabular alone: bacc 4 sites | fused: bacc notes sites | tabular alone: bacc "
           "notes sites | notes alone: AUC (notes sites) | fused: AUC notes sites | tabular alone: AUC notes sites |",
           "|---" * 8 + "|"]
    for fused_name, alone_name in (("fedavg, no DP", "tabular alone, no DP"),
                                   *((n, n.replace("fedavg", "tabular alone")) for n in hosp if "ε =" in n)):
        f, a = hosp.get(fused_name), alone.get(alone_name)
        if not f or not a:
            continue
        label = fused_name.split(", ", 1)[1]
        out.append(f"| {label} | {_col(f, 'balanced-accuracy')} | {_col(a, 'balanced-accuracy')} | "
                   f"{_col(f, 'balanced-accuracy', NOTES_SITES)} | {_col(a, 'balanced-accuracy', NOTES_SITES)} | "
                   f"{_col(f, 'auc-only-text', NOTES_SITES)} | {_col(f, 'auc', NOTES_SITES)} | "
                   f"{_col(a, 'auc', NOTES_SITES)} |")
    return out


def _curve_rows(rows: dict[str, list], modality: str, sites: tuple[str, ...], metric: str = "acc") -> list[str]:
    FRACTIONS = sibling("missing_modality").FRACTIONS  # noqa: N806

    out = ["| row (seeds) | " + " | ".join(f"{p:.0%} missing" for p in FRACTIONS) + " | relative drop at 50 % |",
           "|---" * (len(FRACTIONS) + 2) + "|"]
    for name, runs in rows.items():
        keys = [f"{metric}-missing-{modality}@{p:g}" for p in FRACTIONS]
        if not any(k in m for r in runs for m in r["sites"].values() for k in keys):
            continue
        per_seed = [[site_mean(r, k, sites) for k in keys] for r in runs]
        drops = [100 * (s[0] - s[-1]) / s[0] for s in per_seed if s[0] > 0]
        out.append(f"| {name} ({len(runs)}) | " + " | ".join(mean_sd([s[i] for s in per_seed])
                                                           for i in range(len(keys)))
                   + f" | {mean_sd(drops, 1)} % |")
    return out


def _fedmultimodal_row() -> str:
    FRACTIONS = sibling("missing_modality").FRACTIONS  # noqa: N806

    cells = [f"{FEDMULTIMODAL[p] / 100:.3f}" if p in FEDMULTIMODAL else "" for p in FRACTIONS]
    drop = 100 * (FEDMULTIMODAL[0.0] - FEDMULTIMODAL[0.5]) / FEDMULTIMODAL[0.0]
    return "| FedMultimodal, UCF101 audio + video, 200 clients, α = 1.0 (published) | " + " | ".join(cells) \
        + f" | {drop:.1f} % |"


def _per_seed(rows: dict[str, list], key: str = "balanced-accuracy") -> list[str]:
    return [f"{name}: " + ", ".join(f"{site_mean(r, key):.3f}" for r in runs) for name, runs in rows.items()]


def write_all(results: dict[str, dict[str, list[dict[str, Any]]]], out: Path, *, meta: dict[str, Any]) -> str:
    """Write ``utility-all.md`` (every table of the parts present) and ``privacy-utility.png``; return the text."""
    seeds = len(meta.get("seeds", []))
    text = [f"# Issue 14: every row (benchmarks/utility_all.py), {seeds} seeds, {meta.get('seconds', 0):.0f} s", ""]
    if "flamby" in results:
        flamby = sibling("flamby_heart")
        text += ["## FLamby Fed-Heart-Disease protocol", "",
                 flamby.write_table(results["flamby"], out / "flamby.md", seeds=seeds,
                                    seconds=sum(r["seconds"] for v in results["flamby"].values() for r in v))]
    hosp, alone, miss = (results.get(k, {}) for k in ("hospitals", "alone", "missing"))
    if hosp or alone or miss:
        text += ["## Hospitals (920 patients, 4 sites, 8 rounds; test-row-weighted over the sites)", "",
                 *_table(HOSPITALS_COLUMNS, {**hosp, **alone, **miss}), ""]
    if hosp and alone:
        text += ["## Fused vs each modality alone at the same ε (hospitals)", "", *_fused_vs_alone(hosp, alone), ""]
    if hosp or miss:
        curves = {**hosp, **miss}
        text += ["## Missing modality: notes lost by a fraction of the test rows (notes sites; accuracy)", "",
                 *_curve_rows(curves, "text", NOTES_SITES), _fedmultimodal_row(), "",
                 "Balanced accuracy, same runs:", "", *_curve_rows(curves, "text", NOTES_SITES, "bacc"), ""]
    if "image" in results:
        text += ["## hospitals-multimodal: the image branch (images CONSTRUCTED: MNIST paired by label)", "",
                 *_table(IMAGE_COLUMNS, results["image"]), "",
                 "Image lost by a fraction of the test rows (image sites; accuracy):", "",
                 *_curve_rows(results["image"], "image", IMAGE_SITES), ""]
    text += ["## Balanced accuracy per seed (4 sites)", "", "```",
             *_per_seed({k: v for part in ("hospitals", "alone", "missing", "image") for k, v in
                         results.get(part, {}).items()}), "```", ""]
    body = "\n".join(text)
    (out / "utility-all.md").write_text(body)
    if hosp:
        sibling("utility").write_plot(hosp, out / "privacy-utility.png")
    return body
