"""Site-level (central) DP: why it needs tens of sites. Same ε, 20 sites vs 4, side by side.

    .venv/bin/python benchmarks/central_sites.py [--rounds 5] [--seeds 0 1 2] [--sigma 1.0]

The noise Flower's fixed-clipping wrapper adds to the AVERAGE of m clipped updates has std σ·C/m per
coordinate, while ε depends on σ and the number of rounds only. So at the same ε, 4 sites get 5x the noise of
20. This script runs the wrapper's own clipping and noise functions (``flwr.supercore.differential_privacy``:
``compute_clip_model_update``, ``compute_stdv``, ``add_gaussian_noise_inplace``) in one process — no Flower
runtime — with equal weights, on:

* ``virtual20``: the 20 VIRTUAL sites of ``simulations/scenarios/hospitals-virtual20.toml``;
* ``virtual4``: the same pooled patients cut into 4 VIRTUAL sites (same data distribution, fewer sites);
* ``hospitals4``: the 4 real hospitals, tabular only.

Each row: the example-weighted test accuracy over all sites after the last round, per seed, for σ = 0 (clipping
only) and the chosen σ; "diverged" when the noised model produced NaN. Tabular only, late fusion, plain SGD
(5 local epochs, batch 8, lr 0.3), C = 1. ε is printed once (Flower's RdpAccountant).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client.site_data import load_site  # noqa: E402
from client.train import evaluate, train_plain  # noqa: E402
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site  # noqa: E402
from common.factory import build_model, initial_trainable_state  # noqa: E402
from common.models.params import load_trainable, trainable_state  # noqa: E402
from common.privacy.central import epsilon_after_releases  # noqa: E402

__all__ = ["run_federation", "main"]

CPU = torch.device("cpu")


def _scenarios(tmp: Path) -> dict[str, Path]:
    schema = f'[scenario]\nschema = "{ROOT / "data" / "schemas" / "heart.toml"}"\ndata-dir = "{ROOT / "data"}"\n'
    source = 'source = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
    virtual4 = schema + "".join(
        f'[[sites]]\nname = "v{i}"\n{source}modalities = ["tabular"]\npartition = '
        f'{{ kind = "quantity", alpha = 100.0, num-sites = 4, seed = 0, min-size = 20, part = {i} }}\n' for i in range(4))
    hospitals4 = schema + "".join(f'[[sites]]\nname = "{h}"\n{source}select = {{ hospital = "{h}" }}\n'
                                  'modalities = ["tabular"]\n' for h in ("cleveland", "hungary", "switzerland",
                                                                         "va_long_beach"))
    (tmp / "virtual4.toml").write_text(virtual4)
    (tmp / "hospitals4.toml").write_text(hospitals4)
    return {"virtual20": ROOT / "simulations" / "scenarios" / "hospitals-virtual20.toml",
            "virtual4": tmp / "virtual4.toml", "hospitals4": tmp / "hospitals4.toml"}


def run_federation(scenario_file: Path, *, sigma: float, clip: float, rounds: int, seed: int, tmp: Path) -> float:
    """Weighted test accuracy after ``rounds`` rounds of clipped, equally weighted, noised FedAvg (NaN: diverged)."""
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update, compute_stdv

    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario_file), "out-dir": str(tmp / "out"),
                                             "fusion": "late", "hidden-dim": 16})
    scenario = load_scenario(scenario_file)
    sites = [load_site(resolve_site({"partition-id": i}, run), model_modalities=scenario.modalities,
                       text_encoder=run.model.text_encoder) for i in range(len(scenario.sites))]
    glob = initial_trainable_state(build_model(run.model, scenario=scenario, seed=0))
    keys, m = list(glob), len(sites)
    np.random.seed(seed)
    for rnd in range(1, rounds + 1):
        current = [glob[k].numpy().copy() for k in keys]
        total = [np.zeros_like(a) for a in current]
        for data in sites:
            model = build_model(run.model, scenario=scenario, seed=0)
            load_trainable(model, glob)
            train_plain(model, data.train, epochs=5, batch_size=8, lr=0.3, momentum=0.0, modality_dropout=0.0,
                        device=CPU, seed=seed * 1000 + rnd)
            state = trainable_state(model, branches=(*scenario.modalities, "head"))
            arrays = [state[k].detach().numpy().copy() for k in keys]
            compute_clip_model_update(arrays, current, clip)
            total = [t + a / m for t, a in zip(total, arrays, strict=True)]
        if sigma > 0:
            add_gaussian_noise_inplace(total, compute_stdv(sigma, clip, m))
        if not all(np.isfinite(a).all() for a in total):
            return float("nan")
        glob = {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, total, strict=True)}
    model = build_model(run.model, scenario=scenario, seed=0)
    load_trainable(model, glob)
    try:
        results = [evaluate(model, d.test, device=CPU) for d in sites]
    except ValueError:  # NaN predictions (sklearn refuses them): the noised model diverged
        return float("nan")
    return sum(r.accuracy * r.num_examples for r in results) / sum(r.num_examples for r in results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--delta", type=float, default=1e-3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    eps = epsilon_after_releases(noise_multiplier=args.sigma, releases=args.rounds, num_sites=20, sampled=20,
                                 delta=args.delta)
    print(f"σ={args.sigma}, C=1, {args.rounds} rounds: site-level ε={eps:.3f} at δ={args.delta:g} for every row "
          "(no amplification)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, path in _scenarios(tmp).items():
            for sigma in (0.0, args.sigma):
                accs = [run_federation(path, sigma=sigma, clip=1.0, rounds=args.rounds, seed=s, tmp=tmp)
                        for s in args.seeds]
                shown = ", ".join("diverged" if np.isnan(a) else f"{a:.3f}" for a in accs)
                print(f"{name:11s} σ={sigma:<4g} accuracy per seed: {shown}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
