"""Why a modality learns nothing under DP: signal against noise, per parameter group, in one DP-SGD step.

    .venv/bin/python benchmarks/modality_snr.py [--site cleveland] [--epsilon 4] [--state DIR] [--scenario FILE]

At one site of the packaged hospitals scenario, with the run defaults and the model at its initialisation, it
computes every training row's gradient (one backward pass per row), clips each to the run's C as Opacus does
(over ALL trainable parameters together), and splits the mean clipped gradient (the signal of one step at the
expected batch size B = q x max-records) by parameter group. Beside it, the norm of the Gaussian noise that
DP-SGD adds to that group in the same step: σ C sqrt(d_g) / B, with σ the noise multiplier the site's own
planner calibrates for ``--epsilon`` over the run's rounds (PRV). A group whose signal/noise ratio is far below
the others' learns nothing: noise is added per coordinate, so a group with many parameters (the text projection:
384 x hidden) drowns, whatever the data says.

``--set clipping=per-modality`` clips each tensor to its share of C as ``common/models/clipping.py`` does (the
noise is the same: σ C per coordinate). Also printed: each group's share of the squared per-sample gradient norm
(what the clipping budget is spent on).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: a site-packages "benchmarks" package shadows ours
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from client.round import SiteRound  # noqa: E402
from client.train import _split  # noqa: E402
from common.config import app_defaults, load_scenario, parse_run_config, write_with_site_privacy  # noqa: E402
from common.factory import build_model, initial_trainable_state  # noqa: E402
from common.models.clipping import tensor_budgets  # noqa: E402
from common.privacy.accountant import plan_steps  # noqa: E402

__all__ = ["group_of", "main"]

SCENARIO = ROOT / "simulations" / "scenarios" / "hospitals.toml"


def group_of(name: str) -> str:
    """Parameter group of a trainable tensor: its modality branch, or the shared head."""
    parts = name.split(".")
    return f"{parts[0]}.{parts[1]}" if parts[0] in ("encoders", "projections", "late_heads") else parts[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default="cleveland")
    p.add_argument("--scenario", type=Path, default=SCENARIO, help="e.g. simulations/scenarios/hospitals-multimodal"
                   ".toml (the image branch)")
    p.add_argument("--epsilon", type=float, default=4.0)
    p.add_argument("--state", type=Path, default=None, help="site state root (feature caches); default: a temp dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run setting, e.g. hidden-dim=16 or fusion=late (repeatable)")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="fedfusion-snr-"))
    scenario_file = write_with_site_privacy(args.scenario, tmp / "s.toml", {"target-epsilon": args.epsilon,
                                                                       "epsilon-budget": args.epsilon})
    cfg = {**app_defaults(), "scenario-file": str(scenario_file), "site-state-root": str(args.state or tmp / "st"),
           "target-epsilon": args.epsilon, "epsilon-budget": args.epsilon, "seed": args.seed}
    for item in args.set:
        key, _, value = item.partition("=")
        default = cfg[key]
        cfg[key] = type(default)(value) if not isinstance(default, bool) else value.lower() == "true"
    run = parse_run_config(cfg)
    scenario = load_scenario(scenario_file)
    index = [s.name for s in scenario.sites].index(args.site)
    job = SiteRound.from_flower(cfg, {"partition-id": index, "num-partitions": len(scenario.sites)},
                                {"server-round": 1, "federation-id": "snr"}, "snr")
    data = job.data()
    sp = job.privacy(data)
    steps = plan_steps(max_records=sp.max_records, batch_size=run.train.batch_size, epochs=run.train.local_epochs)
    plan = sp.plan(sample_rate=steps.sample_rate, steps=steps.steps,
                   planned_steps=steps.steps * run.federation.num_rounds)
    sigma, clip = plan.noise_multiplier, sp.settings.max_grad_norm
    expected_batch = steps.sample_rate * sp.max_records
    init = initial_trainable_state(build_model(run.model, scenario=scenario, seed=run.federation.seed))
    model = job.model(init, data).eval()  # eval: no dropout, the gradient of the model itself
    params = {n: q for n, q in model.named_parameters() if q.requires_grad}
    per_sample = {n: [] for n in params}
    loader = torch.utils.data.DataLoader(data.train, batch_size=1, collate_fn=_collate(data.train))
    for batch in loader:
        inputs, mask, y = _split(batch, torch.device("cpu"), 0.0, None)
        grads = torch.autograd.grad(nn.functional.cross_entropy(model(inputs, mask), y), list(params.values()),
                                    allow_unused=True)
        for n, g in zip(params, grads, strict=True):
            per_sample[n].append(torch.zeros_like(params[n]) if g is None else g.detach())
    stacked = {n: torch.stack(v) for n, v in per_sample.items()}
    total = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in stacked.values()))
    factors = {n: (clip / (total + 1e-6)).clamp(max=1.0) for n in stacked}  # flat: one factor over everything
    if run.train.clipping == "per-modality":  # each tensor to its share of C (common/models/clipping.py), as Opacus
        budgets = tensor_budgets(params.items(), clip)
        factors = {n: (c / (g.flatten(1).norm(dim=1) + 1e-6)).clamp(max=1.0)
                   for (n, g), c in zip(stacked.items(), budgets, strict=True)}
    groups: dict[str, dict[str, float]] = {}
    for n, g in stacked.items():
        factor = factors[n]
        clipped_sum = (g * factor.view(-1, *([1] * (g.dim() - 1)))).sum(0)
        rec = groups.setdefault(group_of(n), {"d": 0, "signal2": 0.0, "share": 0.0})  # share: of |g|^2, mean
        rec["d"] += params[n].numel()
        rec["signal2"] += float(clipped_sum.pow(2).sum())
        rec["share"] += float((g.flatten(1).pow(2).sum(1) / total.pow(2).clamp(min=1e-12)).mean())
    print(f"site {args.site}: n = {len(data.train)} training rows, max-records {sp.max_records}, "
          f"B = {expected_batch:g}, sigma = {sigma:.3f} (target epsilon {args.epsilon:g} over "
          f"{run.federation.num_rounds} rounds), C = {clip:g}, clipping {run.train.clipping}; "
          f"model at initialisation, seed {args.seed}")
    print(f"{'group':<22} {'params':>7} {'share of |g|^2':>15} {'signal |mean clipped g|':>24} "
          f"{'noise sigma C sqrt(d)/B':>24} {'signal/noise':>13}")
    for g, rec in sorted(groups.items()):
        # expected clipped sum of a Poisson batch, q x (sum over the n rows), divided by B = q x max-records
        signal = math.sqrt(rec["signal2"]) / sp.max_records
        noise = sigma * clip * math.sqrt(rec["d"]) / expected_batch
        print(f"{g:<22} {rec['d']:>7} {rec['share']:>15.3f} {signal:>24.4f} {noise:>24.4f} {signal / noise:>13.4f}")
    return 0


def _collate(dataset):
    from client.train import _collate_with_empty

    return _collate_with_empty(dataset)


if __name__ == "__main__":
    raise SystemExit(main())
