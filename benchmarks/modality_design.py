"""Which model design lets every modality learn under DP: candidates x seeds on the packaged hospitals scenario.

    .venv/bin/python benchmarks/modality_design.py [--candidates base,pm16] [--seeds 3] [--rounds 8] [--epsilon 4]

Each run is one whole federation in one process (``simulations.inprocess.run_federation``: the real site round,
ledger, Opacus DP-SGD and PRV accountant, the real strategy), at the sites' target ε, starting from empty ledgers.
Printed per run and as a table (mean ± sd over seeds): the fused model's test balanced accuracy (test-row-weighted
over all four sites), and at the three sites holding notes the fused model evaluated on one modality only
(``only-text`` / ``only-tabular``: bacc and AUC). A candidate is a set of run settings (:data:`CANDIDATES`).

The candidates were chosen from the architecture and the per-branch signal/noise of ``benchmarks/modality_snr.py``
(no site data beyond what that measurement reads); the runs below evaluate them on the sites' test rows, which is
tuning on private data: README "Model" says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: a site-packages "benchmarks" package shadows ours
    sys.path.insert(0, str(ROOT))

from common.config import app_defaults, write_with_site_privacy  # noqa: E402
from simulations.inprocess import run_federation, weighted  # noqa: E402

__all__ = ["CANDIDATES", "METRICS", "main", "run_candidate"]

SCENARIO = ROOT / "simulations" / "scenarios" / "hospitals.toml"
NOTES_SITES = ("cleveland", "hungary", "switzerland")

#: candidate name -> run settings changed from the defaults
CANDIDATES: dict[str, dict[str, Any]] = {
    "base": {},
    "per-modality": {"clipping": "per-modality"},
    "proj16": {"text-projection": 16},
    "pm-proj16": {"clipping": "per-modality", "text-projection": 16},
    "pm-proj16-h16": {"clipping": "per-modality", "text-projection": 16, "hidden-dim": 16},
    "late-pm-proj16": {"clipping": "per-modality", "text-projection": 16, "fusion": "late"},
    "pm-proj16-md30": {"clipping": "per-modality", "text-projection": 16, "modality-dropout": 0.3},
    "base-md30": {"modality-dropout": 0.3},
    # one modality alone: a model that reads (and trains on) only that modality, at every site holding it
    "text-alone": {"only": "text"},
    "text-alone-proj16": {"only": "text", "text-projection": 16},
    "tabular-alone": {"only": "tabular"},
}

METRICS = {
    "bacc": lambda r: weighted(r, "balanced-accuracy"),
    "notes bacc": lambda r: weighted(r, "balanced-accuracy", sites=NOTES_SITES),
    "notes bacc only-tabular": lambda r: weighted(r, "bacc-only-tabular", sites=NOTES_SITES),
    "notes bacc only-text": lambda r: weighted(r, "bacc-only-text", sites=NOTES_SITES),
    "notes auc only-text": lambda r: weighted(r, "auc-only-text", sites=NOTES_SITES),
    "notes auc": lambda r: weighted(r, "auc", sites=NOTES_SITES),
}


def _fresh_state(state: Path) -> None:
    """A new site for each run: drop ledgers, signed heads and replay caches; keep keys and feature caches."""
    for site in state.glob("*"):
        for name in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "ledger.sqlite-journal",
                     "signed-head.json"):
            (site / name).unlink(missing_ok=True)
        shutil.rmtree(site / "replay", ignore_errors=True)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are written alike in TOML and JSON


def only_modality(scenario: Path, modality: str) -> Path:
    """Rewrite the scenario copy ``scenario`` in place: every site keeps only ``modality``; sites without it leave.

    The model built from it reads that modality alone (``FusionModel`` over one encoder), trained at the same ε.
    """
    import tomllib

    raw = tomllib.loads(scenario.read_text())
    lines = [f"# {scenario.name}: ONLY the {modality} modality (benchmarks/modality_design.py)", "", "[scenario]",
             *(f"{k} = {_toml(v)}" for k, v in raw["scenario"].items()), ""]
    for site in raw["sites"]:
        if modality in site["modalities"]:
            lines += ["[[sites]]", *(f"{k} = {_toml([modality] if k == 'modalities' else v)}"
                                     for k, v in site.items()), ""]
    scenario.write_text("\n".join(lines))
    return scenario


def run_candidate(settings: dict[str, Any], *, seed: int, rounds: int, epsilon: float, work: Path) -> dict[str, Any]:
    """One federation: summary metrics, per-site metrics and ε."""
    settings = dict(settings)
    only = settings.pop("only", None)
    scenario = write_with_site_privacy(SCENARIO, work / "s.toml", {"target-epsilon": epsilon,
                                                                    "epsilon-budget": epsilon})
    if only:
        scenario = only_modality(scenario, only)
    state = work / "state"
    _fresh_state(state)
    config = {**app_defaults(), "scenario-file": str(scenario), "site-state-root": str(state), "seed": seed,
              "num-server-rounds": rounds, "target-epsilon": epsilon, "epsilon-budget": epsilon, **settings}
    result = run_federation(config, run_id=f"design-{seed}")
    return {"summary": {k: f(result) for k, f in METRICS.items()},
            "epsilon": max(s.epsilon for s in result.sites.values()),
            "sites": {n: {"epsilon": s.epsilon, **s.metrics} for n, s in result.sites.items()}}


def _mean_sd(values: list[float]) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "–"
    return f"{statistics.fmean(v):.3f} ± {statistics.stdev(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--candidates", default=",".join(CANDIDATES))  # names of CANDIDATES, comma-separated
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--epsilon", type=float, default=4.0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "modality_design.json")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="fedfusion-design-") as tmp:
        # seeds outermost: an interrupted grid still compares every candidate
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for name in args.candidates.split(","):
                t = time.monotonic()
                r = run_candidate(CANDIDATES[name], seed=seed, rounds=args.rounds, epsilon=args.epsilon,
                                  work=Path(tmp))
                r["seconds"], r["seed"] = time.monotonic() - t, seed
                results.setdefault(name, []).append(r)
                s = r["summary"]
                print(f"{name:>16} seed {seed}: " + " ".join(f"{k} {v:.3f}" for k, v in s.items())
                      + f" eps {r['epsilon']:.2f} ({r['seconds']:.0f} s)", flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps({"rounds": args.rounds, "epsilon": args.epsilon,
                                                "candidates": {c: CANDIDATES[c] for c in results},
                                                "results": results}, indent=1))
    print("| candidate | seeds | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 2) + "|")
    for name, runs in results.items():
        print(f"| {name} | {len(runs)} | " + " | ".join(_mean_sd([r["summary"][k] for r in runs]) for k in METRICS)
              + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
