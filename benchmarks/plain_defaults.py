"""How ``plain-optimizer`` and ``plain-learning-rate`` (training WITHOUT DP) were chosen: on public proxy data only.

    .venv/bin/python benchmarks/plain_defaults.py [--seeds 3] [--rounds 8] [--out DIR]

Tuning a hyperparameter on the sites' private data costs privacy too (Papernot & Steinke 2022), so the defaults are
chosen on the packaged **breast-cancer** scenario (Wisconsin Diagnostic Breast Cancer, public; three constructed
clinics, `data/breast-cancer/README.md`), never on the hospitals: FedAvg without DP, the run defaults otherwise, a
small grid of optimiser x learning rate, mean test balanced accuracy over seeds (test-row-weighted over clinics).
The proxy has one modality (tabular): it checks that the non-private step neither diverges nor stalls on this model
family; it says nothing about the text branch.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

def _utility():
    """``benchmarks/utility.py`` by path (a site-packages ``benchmarks`` package shadows this folder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fedfusion_utility", ROOT / "benchmarks" / "utility.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


_U = _utility()
NO_DP, Row, run_row, summarise = _U.NO_DP, _U.Row, _U.run_row, _U.summarise

__all__ = ["GRID", "PROXY", "main"]

PROXY = ROOT / "simulations" / "scenarios" / "breast-cancer.toml"
#: (optimizer, learning rate) candidates: SGD around the DP path's 1.0, Adam around its usual 1e-3
GRID = [("sgd", 1.0), ("sgd", 0.1), ("sgd", 0.01), ("adam", 0.01), ("adam", 0.001), ("adam", 0.0001)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "plain-defaults.json")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="fedfusion-plain-") as tmp:
        for opt, lr in GRID:
            settings = {**NO_DP, "plain-optimizer": opt, "plain-learning-rate": lr}
            row = Row(f"{opt} {lr:g}", NO_DP, settings, float("inf"))
            for seed in range(args.seeds):
                r = run_row(row, seed=seed, rounds=args.rounds, work=Path(tmp), overrides={}, scenario=PROXY)
                results.setdefault(row.name, []).append(r["summary"]["balanced-accuracy"])
            print(f"{row.name:>12}: balanced accuracy {summarise(results[row.name])}", flush=True)
    best = max(results, key=lambda k: statistics.fmean(results[k]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"proxy": str(PROXY.relative_to(ROOT)), "seeds": args.seeds, "rounds": args.rounds,
                                    "balanced-accuracy": results, "best": best}, indent=1))
    print(f"best on the proxy: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
