"""Issue 14's privacy-utility table, every row in one command: FLamby protocol, hospitals, each modality alone,
missing modality, the image branch.

    .venv/bin/python benchmarks/utility_all.py [--seeds 5] [--parts flamby,hospitals,alone,missing,image]
        [--work DIR] [--out DIR] [--tables-only [--merge DIR ...]]
    make utility ARGS="--seeds 5"

It runs the rows of the existing scripts with their own functions (nothing is re-implemented here):

* ``flamby``: ``benchmarks/flamby_heart.py``'s rows (FLamby's Fed-Heart-Disease protocol, logistic regression):
  pooled, local-only, FedAvg, FedYogi, DP FedAvg at each ε (δ = 1e-3), DP sites under FedYogi at ε 1 and 8 with
  FLamby's server settings and under the server optimiser chosen on a public proxy (``PROXY_SERVER_OPT``, from
  ``benchmarks/server_opt_proxy.py``) at ε 1 and 8; beside FLamby's published values;
* ``hospitals``: ``benchmarks/utility.py``'s rows on the packaged hospitals scenario (920 patients, 4 sites, tabular
  + notes fused, today's defaults): pooled, local-only, FedAvg and FedYogi without DP, DP FedAvg at each ε;
* ``alone``: a model trained on the tabular modality ALONE (``benchmarks/modality_design.py``'s ``only_modality``
  scenario) at each ε and without DP; the notes alone are the fused model with the tabular input hidden (a site's
  record is carried by its tabular row, so no notes-only federation exists);
* ``missing``: the same DP (ε = 4) and non-private federations trained with ``modality-dropout`` (the run setting),
  to compare the missing-modality curve (``benchmarks/missing_modality.py``; every hospitals row carries it) with
  and without it; FedMultimodal's published curve beside it;
* ``image``: the hospitals-multimodal scenario (images CONSTRUCTED: a real MNIST digit paired with each patient by
  label) at ε = 4: fused, and the image branch alone (the fused model with the other modalities hidden).

Seeds are outermost (an interrupted run has every row at the seeds it finished) and the results file
(``utility-all.json``: every seed's per-site / per-centre numbers) is rewritten after every row. At the end it
writes ``utility-all.md`` (every table) and ``privacy-utility.png`` (``benchmarks/utility.py``'s plot) beside it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:  # run as a script: a site-packages "benchmarks" package shadows ours
    sys.path.insert(0, str(ROOT))

from common.config import write_with_site_privacy  # noqa: E402

__all__ = ["Job", "PARTS", "jobs", "merge_results", "main"]


_spec = importlib.util.spec_from_file_location("fedfusion_bench_utility_tables", BENCH / "utility_tables.py")
tables = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = tables
_spec.loader.exec_module(tables)
utility = tables.sibling("utility")
flamby = tables.sibling("flamby_heart")
design = tables.sibling("modality_design")
missing = tables.sibling("missing_modality")

MULTIMODAL = ROOT / "simulations" / "scenarios" / "hospitals-multimodal.toml"
DROPOUT = 0.3  # training-time modality dropout of the ``missing`` rows (the value modality_design tried)


@dataclass(frozen=True)
class Job:
    """One row of one part: ``run(seed, work)`` returns a JSON-able result."""

    part: str
    name: str
    run: Callable[[int, Path], dict[str, Any]]


def _hospital_job(part: str, row, scenario: Callable[[Path], Path] | None = None, rounds: int = 8) -> Job:
    """A ``utility.Row`` as a job: its federation (or baseline), then the missing-modality curve of its model."""
    row = replace(row, train=missing.with_missing_curve(row.train))

    def run(seed: int, work: Path) -> dict[str, Any]:
        kwargs = {"scenario": scenario(work)} if scenario else {}
        # one state folder for every part: the sites' feature caches (note embeddings) are computed once
        return utility.run_row(row, seed=seed, rounds=rounds, work=work, overrides={}, **kwargs)
    return Job(part, row.name, run)


def _tabular_only(work: Path) -> Path:
    copy = write_with_site_privacy(utility.SCENARIO, work / "tabular-only.toml", {})
    return design.only_modality(copy, "tabular")


def _flamby_jobs(epsilons: list[float]) -> list[Job]:
    registry = flamby.ROWS(epsilons)
    names = ["pooled", "local-only", "fedavg", "fedyogi", *(f"dp fedavg, ε = {e:g}, δ = 1e-3" for e in epsilons),
             *(f"dp fedyogi, ε = {e:g}, δ = 1e-3" for e in (1.0, 8.0)),
             *(f"dp {flamby.PROXY_SERVER_OPT.name} (proxy η), ε = {e:g}, δ = 1e-3" for e in (1.0, 8.0))]
    centres: list = []

    def make(name: str) -> Job:
        runner, kwargs = registry[name]

        def run(seed: int, work: Path) -> dict[str, Any]:
            del work
            if not centres:
                centres.extend(flamby.load_centres())
            out = runner(centres, seed, **kwargs)
            out.pop("histories", None)  # every step's (σ, q, steps): in the accountant, not needed for the table
            return out
        return Job("flamby", name, run)
    return [make(n) for n in names]


def _hospital_rows(epsilons: list[float]) -> list[Job]:
    return [_hospital_job("hospitals", r) for r in utility.rows(epsilons)]


def _alone_rows(epsilons: list[float]) -> list[Job]:
    no_dp = utility.NO_DP
    rows = [utility.Row("tabular alone, no DP", no_dp, no_dp, math.inf)]
    rows += [utility.Row(f"tabular alone, ε = {e:g}", {"target-epsilon": e, "epsilon-budget": e},
                         {"target-epsilon": e, "epsilon-budget": e}, e) for e in epsilons]
    return [_hospital_job("alone", r, scenario=_tabular_only) for r in rows]


def _missing_rows(epsilons: list[float]) -> list[Job]:
    del epsilons
    md = {"modality-dropout": DROPOUT}
    rows = [utility.Row(f"fedavg, no DP, modality-dropout {DROPOUT:g}", utility.NO_DP, {**utility.NO_DP, **md},
                        math.inf),
            utility.Row(f"fedavg, ε = 4, modality-dropout {DROPOUT:g}", {"target-epsilon": 4.0, "epsilon-budget": 4.0},
                        {"target-epsilon": 4.0, "epsilon-budget": 4.0, **md}, 4.0)]
    return [_hospital_job("missing", r) for r in rows]


def _image_rows(epsilons: list[float]) -> list[Job]:
    del epsilons
    eps4 = {"target-epsilon": 4.0, "epsilon-budget": 4.0}
    rows = [utility.Row("multimodal, no DP", utility.NO_DP, utility.NO_DP, math.inf),
            utility.Row("multimodal, ε = 4", eps4, eps4, 4.0)]
    rows += [utility.Row(f"multimodal, ε = 4, {label}", eps4, {**eps4, **settings}, 4.0)
             for label, settings in IMAGE_LEVERS.items()]
    return [_hospital_job("image", r, scenario=lambda work: MULTIMODAL) for r in rows]


#: image-branch alternatives measured beside today's default (pixel-projection, chosen on public data): run settings
IMAGE_LEVERS: dict[str, dict[str, Any]] = {"image-encoder small-cnn": {"image-encoder": "small-cnn"}}

#: part name -> (ε grid) -> its jobs, in run order within a seed
PARTS: dict[str, Callable[[list[float]], list[Job]]] = {
    "flamby": _flamby_jobs, "hospitals": _hospital_rows, "alone": _alone_rows, "missing": _missing_rows,
    "image": _image_rows}


def jobs(parts: list[str], epsilons: list[float]) -> list[Job]:
    """Every job of ``parts``, in the order given (within a seed: put the rows you need most first)."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown parts {unknown}: known are {list(PARTS)}")
    return [j for name in dict.fromkeys(parts) for j in PARTS[name](epsilons)]


def merge_results(files: list[Path], dest: Path) -> dict[str, Any]:
    """One results file from several runs' (each row's seeds in seed order; a (part, row, seed) kept once)."""
    rows: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    runs = []
    for f in files:
        saved = json.loads(f.read_text())
        runs.append({k: v for k, v in saved.items() if k != "rows"} | {"file": str(f)})
        for part, named in saved["rows"].items():
            for name, results in named.items():
                for r in results:
                    rows.setdefault(part, {}).setdefault(name, {}).setdefault(int(r["seed"]), r)
    merged = {"seeds": sorted({s for named in rows.values() for by in named.values() for s in by}),
              "seconds": max((r.get("seconds", 0.0) for r in runs), default=0.0), "merged-from": runs,
              "complete": all(r.get("complete") for r in runs),
              "rows": {p: {n: [by[s] for s in sorted(by)] for n, by in named.items()} for p, named in rows.items()}}
    dest.write_text(json.dumps(merged, indent=1, default=float))
    return merged


def _line(job: Job, result: dict[str, Any]) -> str:
    if job.part == "flamby":
        accs = result["accuracies"]
        eps = result.get("epsilon", math.inf)
        return f"mean acc {sum(accs) / len(accs):.3f} eps {eps:.2f}"
    s = result["summary"]
    return f"bacc {s['balanced-accuracy']:.3f} acc {s['accuracy']:.3f} eps {s['max site epsilon']:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--epsilons", default="0.5,1,2,4,8")
    p.add_argument("--parts", default="hospitals,alone,missing,image,flamby",
                   help="parts to run, comma-separated, in this order within each seed (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "utility-all")
    p.add_argument("--work", type=Path, default=None, help="folder for the sites' state (feature caches kept, "
                   "ledgers removed before each run); default a temporary folder")
    p.add_argument("--tables-only", action="store_true", help="only (re)write the tables and the plot from the "
                   "results file in --out (e.g. of an interrupted run: the seeds it finished)")
    p.add_argument("--merge", type=Path, nargs="*", default=[], metavar="DIR",
                   help="with --tables-only: first merge the results files of these --out folders (runs of other "
                   "parts or seeds side by side) into --out's utility-all.json; a (row, seed) kept once")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    # warnings repeated hundreds of times a run, none a finding here:
    warnings.filterwarnings("ignore", message="Secure RNG turned off")  # the benchmark never uses secure mode
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # Opacus' ghost clipping, frozen inputs
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # RDP's own bound; tables: PRV
    if args.tables_only:
        if args.merge:
            args.out.mkdir(parents=True, exist_ok=True)
            merge_results([d / "utility-all.json" for d in args.merge], args.out / "utility-all.json")
        saved = json.loads((args.out / "utility-all.json").read_text())
        print(tables.write_all(saved.pop("rows"), args.out, meta=saved))
        return 0
    todo = jobs([x for x in args.parts.split(",") if x], [float(e) for e in args.epsilons.split(",")])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    meta = {"seeds": seeds, "epsilons": args.epsilons, "parts": args.parts, "complete": False}
    started = time.monotonic()
    total, done = len(todo) * len(seeds), 0
    with tempfile.TemporaryDirectory(prefix="fedfusion-utility-all-") as tmp:
        work = args.work or Path(tmp)
        for seed in seeds:
            for job in todo:
                t = time.monotonic()
                result = job.run(seed, work)
                result["seed"], result["seconds"] = seed, time.monotonic() - t
                results.setdefault(job.part, {}).setdefault(job.name, []).append(result)
                done += 1
                meta["seconds"] = time.monotonic() - started
                (args.out / "utility-all.json").write_text(json.dumps({**meta, "rows": results}, indent=1,
                                                                      default=float))
                print(f"[{done}/{total} {meta['seconds'] / 60:5.1f} min] seed {seed} {job.part}: {job.name}: "
                      f"{_line(job, result)} ({result['seconds']:.0f} s)", flush=True)
    meta.update(complete=True, seconds=time.monotonic() - started)
    (args.out / "utility-all.json").write_text(json.dumps({**meta, "rows": results}, indent=1, default=float))
    text = tables.write_all(results, args.out, meta=meta)
    print(text)
    print(f"{meta['seconds']:.0f} s in all; {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
