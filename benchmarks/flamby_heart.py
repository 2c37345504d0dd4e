"""FLamby's Fed-Heart-Disease protocol with our DP-SGD, accountant and Flower's strategies, beside FLamby's values.

    .venv/bin/python benchmarks/flamby_heart.py [--seeds 5] [--epsilons 0.5,1,2,4,8] [--out DIR]

**The protocol** (FLamby, ``flamby/datasets/fed_heart_disease``, owkin/FLamby at edacf54): the UCI file that ships
in ``data/uci-heart-disease/heart.csv`` (the same 920 records as UCI's four ``processed.*.data``); drop slope, ca and
thal; drop every row with a missing value (740 left; Switzerland's cholesterol is 0, not missing, as in FLamby's
files); one-hot cp and restecg with the first level dropped (13 features); per centre a stratified 66/34 split,
``train_test_split(random_state=43)`` (train/test 199/104, 172/89, 30/16, 85/45); z-score per centre with the
centre's training mean and sd; logistic regression; metric: the mean of the four per-centre test accuracies.

**Rows and their hyperparameters** (FLamby's own for the non-private rows: ``common.py``,
``config_heart_disease.json``; model init and batch order from the seed, 5 seeds):

* ``pooled``: Adam, lr 1e-3, batch 4, 50 epochs on the union of the training rows (z-scored with the pooled
  training statistics, as FLamby; tested on each centre's own z-scored test rows, as FLamby);
* ``local-only``: the same, each centre alone, scored on its own test rows (FLamby's "Local i" rows score each
  local model on all four test sets; ours are listed as ``local i (all tests)`` for comparison);
* ``fedavg`` / ``fedyogi``: 15 rounds of 100 local SGD steps, batch 4, client lr 1e-3 / 3.162e-3; FedYogi server
  lr 1e-2, β 0.9 / 0.999, τ 1e-8 (Flower's ``FedAvg`` / ``FedYogi``, weighted by training rows);
* ``dp fedyogi, ε = e``: the same DP sites under Flower's FedYogi with FLamby's server settings (post-processing);
  ``dp <optimiser> (proxy η), ε = e``: under ``PROXY_SERVER_OPT``, chosen on public data (server_opt_proxy.py);
* ``dp fedavg, ε = e``: our DP-SGD (``client.train.train_dp``: Opacus, our Poisson loader, q = 1/ceil(n/B)) at
  every centre, σ calibrated by our PRV accountant (``calibrate_noise_multiplier``) for ALL the run's steps
  (rounds x local epochs x 1/q) to reach ε = e at δ, the accountant's history kept across rounds; the reported
  ε is the largest over centres (PRV, and RDP beside it). Hyperparameters: the project's DP defaults
  (``learning-rate`` 1.0, ``max-grad-norm`` 1.0, ``batch-size`` 32, ``local-epochs`` 1) and 15 rounds, NOT tuned on
  this data. δ = 1e-3 (FLamby's DP example) and, separately, our default δ = ``default_delta(n)`` < 1/n per centre.

**What differs from FLamby** (README "Benchmarks"): FLamby's DP example accounts each round as one epoch of
its sampler (its ε is under-stated); ours accounts every Poisson step of every round. Logistic regression is
``Linear(13, 1)`` read as two logits (0, z): softmax cross-entropy of (0, z) is FLamby's BCE of sigmoid(z), and
the prediction p >= 0.5 (FLamby: p > 0.5; equal only at p = 0.5 exactly). The per-centre z-score reads the centre's
training rows: FLamby's protocol, not our public preprocessing; it is NOT accounted in ε (the same holds for
FLamby's ε). Centres' training sizes are FLamby's published split sizes: public, used as ``max-records``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from client.dp_random import dp_randomness  # noqa: E402
from client.train import LABEL, MODALITY_MASK, TensorDictDataset, evaluate, train_dp, train_plain  # noqa: E402
from common.privacy.accountant import (calibrate_noise_multiplier, default_delta, epsilon_from_history,  # noqa: E402
                                       make_accountant, plan_steps)

__all__ = ["Centre", "load_centres", "LogisticRegression", "ROWS", "FLAMBY_PUBLISHED", "federate", "main"]

DATA = ROOT / "data" / "uci-heart-disease" / "heart.csv"
CENTRES = ("Cleveland", "Hungary", "Switzerland", "VA Long Beach")  # FLamby's centre order 0..3
CPU = torch.device("cpu")

#: FLamby's published values: mean over its 5 seeds (42-46) of the mean of the four per-centre test accuracies,
#: from owkin/FLamby@edacf54 flamby/results/results_benchmark_fed_heart_disease/heart_seed4*.csv and
#: flamby/dp_example/results_fed_heart_disease.csv (δ = 1e-3 rows); (mean, sd over seeds)
FLAMBY_PUBLISHED: dict[str, tuple[float, float]] = {
    "pooled": (0.735, 0.003), "fedavg": (0.685, 0.028), "fedyogi": (0.731, 0.013),
    "local 0 (all tests)": (0.722, 0.021), "local 1 (all tests)": (0.629, 0.017),
    "local 2 (all tests)": (0.567, 0.058), "local 3 (all tests)": (0.637, 0.039),
    "FLamby DP example, no DP": (0.712, 0.024), "FLamby DP example, ε = 1 (rounds as epochs)": (0.702, 0.044),
    "FLamby DP example, ε = 5 (rounds as epochs)": (0.700, 0.041),
    "FLamby DP example, ε = 10 (rounds as epochs)": (0.698, 0.043),
}


@dataclass(frozen=True)
class Centre:
    name: str
    train: TensorDictDataset  # z-scored with this centre's training statistics
    test: TensorDictDataset  # z-scored with this centre's training statistics
    train_pooled_norm: TensorDictDataset  # z-scored with the pooled training statistics (FLamby's pooled row)


def _frame(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    df = df.drop(columns=["id", "slope", "ca", "thal"]).dropna(axis=0)
    for col in ("fbs", "exang"):
        df[col] = df[col].map({True: 1.0, False: 0.0, "TRUE": 1.0, "FALSE": 0.0}).astype(float)
    df["sex"] = (df["sex"] == "Male").astype(float)
    # FLamby's numeric codes, so that get_dummies(drop_first) drops the same first level
    df["cp"] = df["cp"].map({"typical angina": 1, "atypical angina": 2, "non-anginal": 3, "asymptomatic": 4})
    df["restecg"] = df["restecg"].map({"normal": 0, "st-t abnormality": 1, "lv hypertrophy": 2})
    if df[["cp", "restecg"]].isna().any().any():
        raise ValueError(f"{path}: a cp or restecg value outside FLamby's levels")
    return df


def load_centres(path: Path = DATA) -> list[Centre]:
    """The four centres of FLamby's protocol (module docstring), in FLamby's order."""
    import pandas as pd

    df = _frame(path)
    cols = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak"]
    x = pd.get_dummies(df[cols], columns=["cp", "restecg"], drop_first=True).astype(np.float32)
    y = (df["num"] > 0).astype(np.int64).to_numpy()
    return make_centres(x.to_numpy(), y, {n: np.flatnonzero((df["dataset"] == n).to_numpy()) for n in CENTRES})


def make_centres(x: np.ndarray, y: np.ndarray, groups: dict[str, np.ndarray]) -> list[Centre]:
    """Centres from features ``x``, labels ``y`` and each centre's row indices, by FLamby's rules: per centre a
    66/34 split (``random_state=43``, stratified when each class has more than 2 rows), z-scored with the centre's
    training statistics (and, for the pooled row, with the pooled training statistics)."""
    from sklearn.model_selection import train_test_split

    parts = []
    for name, rows in groups.items():
        labels = y[rows]
        stratify = labels if len(np.unique(labels)) > 1 and all((labels == v).sum() > 2 for v in (0, 1)) else None
        tr, te = train_test_split(np.arange(len(rows)), test_size=1.0 - 0.66, train_size=0.66, random_state=43,
                                  shuffle=True, stratify=stratify)
        parts.append((name, rows[np.sort(tr)], rows[np.sort(te)]))
    values = torch.from_numpy(np.asarray(x, dtype=np.float32))
    pooled_train = torch.cat([values[tr] for _, tr, _ in parts])
    pooled_stats = (pooled_train.mean(0), pooled_train.std(0))
    out = []
    for name, tr, te in parts:
        stats = (values[tr].mean(0), values[tr].std(0))  # torch's sd: unbiased, as FLamby
        out.append(Centre(name, _dataset(values[tr], y[tr], stats), _dataset(values[te], y[te], stats),
                          _dataset(values[tr], y[tr], pooled_stats)))
    return out


def _dataset(x: torch.Tensor, y: np.ndarray, stats: tuple[torch.Tensor, torch.Tensor]) -> TensorDictDataset:
    mean, sd = stats
    return TensorDictDataset({"x": (x - mean) / (sd + 1e-9), LABEL: torch.from_numpy(y),
                              MODALITY_MASK: torch.ones((len(y), 1))})


class LogisticRegression(nn.Module):
    """FLamby's ``Baseline``: one linear unit z = w.x + b, returned as the two logits (0, z)."""

    def __init__(self, features: int = 13) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        z = self.linear(inputs["x"])
        return torch.cat([torch.zeros_like(z), z], dim=1)


def _model(seed: int) -> LogisticRegression:
    torch.manual_seed(seed)
    return LogisticRegression()


def _accuracies(model: nn.Module, centres: list[Centre]) -> list[float]:
    return [evaluate(model, c.test, device=CPU).accuracy for c in centres]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    model.load_state_dict(state)
    return model


LocalTrain = Callable[[int, LogisticRegression, int], None]  # (centre index, model to train in place, round)


def federate(strategy, centres: list[Centre], *, rounds: int, seed: int, local: LocalTrain) -> LogisticRegression:
    """``rounds`` rounds of a Flower strategy in-process: its ``configure_train`` and ``aggregate_train`` on reply
    Messages weighted by each centre's training rows (``num-examples``), as FLamby weights them."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from simulations.inprocess import _ensure_task_identity, _Grid

    _ensure_task_identity()
    arrays = ArrayRecord(_state(_model(seed)))
    grid = _Grid(list(range(1, len(centres) + 1)))
    for rnd in range(1, rounds + 1):
        replies = []
        for msg in strategy.configure_train(rnd, arrays, ConfigRecord({}), grid):
            i = msg.metadata.dst_node_id - 1
            model = _load(LogisticRegression(), msg.content["arrays"].to_torch_state_dict())
            local(i, model, rnd)
            reply = Message(content=RecordDict({"arrays": ArrayRecord(_state(model)),
                                                "metrics": MetricRecord({"num-examples": len(centres[i].train)})}),
                            reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = i + 1  # as Flower's transport sets it  # noqa: SLF001
            replies.append(reply)
        new, _ = strategy.aggregate_train(rnd, replies)
        arrays = new if new is not None else arrays
    return _load(LogisticRegression(), arrays.to_torch_state_dict())


def _plain_local(centres: list[Centre], *, lr: float, seed: int) -> LocalTrain:
    def local(i: int, model: LogisticRegression, rnd: int) -> None:
        train_plain(model, centres[i].train, epochs=1, batch_size=4, optimizer="sgd", lr=lr, momentum=0.0,
                    modality_dropout=0.0, device=CPU, seed=seed * 1000 + rnd * 10 + i, max_steps=100)
    return local


def _fedavg(centres: list[Centre], seed: int, **_: object) -> dict[str, object]:
    from flwr.serverapp.strategy import FedAvg

    model = federate(FedAvg(fraction_evaluate=0.0), centres, rounds=15, seed=seed,
                     local=_plain_local(centres, lr=1e-3, seed=seed))
    return {"accuracies": _accuracies(model, centres)}


def _fedyogi(centres: list[Centre], seed: int, **_: object) -> dict[str, object]:
    from flwr.serverapp.strategy import FedYogi

    strategy = FedYogi(fraction_evaluate=0.0, eta=1e-2, eta_l=3.162e-3, beta_1=0.9, beta_2=0.999, tau=1e-8)
    model = federate(strategy, centres, rounds=15, seed=seed, local=_plain_local(centres, lr=3.162e-3, seed=seed))
    return {"accuracies": _accuracies(model, centres)}


def _centralised(dataset: TensorDictDataset, seed: int) -> LogisticRegression:
    model = _model(seed)
    train_plain(model, dataset, epochs=50, batch_size=4, optimizer="adam", lr=1e-3, momentum=0.0,
                modality_dropout=0.0, device=CPU, seed=seed)
    return model


def _pooled(centres: list[Centre], seed: int, **_: object) -> dict[str, object]:
    from simulations.baselines import concat_datasets

    model = _centralised(concat_datasets([c.train_pooled_norm for c in centres]), seed)
    return {"accuracies": _accuracies(model, centres)}


def _local(centres: list[Centre], seed: int, **_: object) -> dict[str, object]:
    models = [_centralised(c.train, seed) for c in centres]
    own = [evaluate(m, c.test, device=CPU).accuracy for m, c in zip(models, centres)]
    every = {f"local {i} (all tests)": statistics.fmean(_accuracies(m, centres)) for i, m in enumerate(models)}
    return {"accuracies": own, "extra": every}


@dataclass(frozen=True)
class DpSettings:
    rounds: int = 15
    batch_size: int = 32
    local_epochs: int = 1
    lr: float = 1.0
    max_grad_norm: float = 1.0


_SIGMA: dict[tuple, float] = {}  # (ε, δ, q, steps) -> σ: deterministic, computed once per process


@dataclass(frozen=True)
class ServerOpt:
    """A Flower server strategy by name (``fedavg``, ``fedyogi``, ``fedadam``) and its server settings; calling it
    builds a fresh strategy. The sites' lr is their own (``eta_l`` is unused: our sites read no config)."""

    name: str = "fedavg"
    eta: float = 1e-2
    tau: float = 1e-8
    beta_1: float = 0.9
    beta_2: float = 0.999

    def __call__(self):
        from flwr.serverapp import strategy as s

        adaptive = {"eta": self.eta, "eta_l": 1.0, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau}
        registry = {"fedavg": lambda: s.FedAvg(fraction_evaluate=0.0),
                    "fedyogi": lambda: s.FedYogi(fraction_evaluate=0.0, **adaptive),
                    "fedadam": lambda: s.FedAdam(fraction_evaluate=0.0, **adaptive)}
        if self.name not in registry:
            raise ValueError(f"unknown server optimiser {self.name!r}: known are {sorted(registry)}")
        return registry[self.name]()


_flower_fedavg = ServerOpt("fedavg")
_flower_fedyogi = ServerOpt("fedyogi", eta=1e-2, tau=1e-8)  # FLamby's FedYogi server settings, not re-tuned for DP
#: the DP sites' server optimiser chosen on a public proxy (benchmarks/server_opt_proxy.py: German Credit, best mean
#: at ε = 1 over 5 seeds, 0.709 ± 0.020), never on FLamby's rows
PROXY_SERVER_OPT = ServerOpt("fedadam", eta=0.03, tau=1e-8)


def _dp_fedavg(centres: list[Centre], seed: int, *, epsilon: float, delta: float | None,
               dp: DpSettings = DpSettings(), strategy: Callable[[], object] = _flower_fedavg) -> dict[str, object]:
    """A Flower strategy (default FedAvg) over DP-SGD sites; ``delta`` None = each centre's default δ < 1/n.
    The server step is post-processing of the sites' DP releases: it changes no ε."""

    plans = [plan_steps(max_records=len(c.train), batch_size=dp.batch_size, epochs=dp.local_epochs) for c in centres]
    deltas = [delta if delta is not None else default_delta(len(c.train)) for c in centres]
    sigmas = []
    for plan, d in zip(plans, deltas):
        key = (epsilon, d, plan.sample_rate, plan.steps * dp.rounds)
        if key not in _SIGMA:
            _SIGMA[key] = calibrate_noise_multiplier(target_epsilon=epsilon, delta=d, sample_rate=plan.sample_rate,
                                                     steps=plan.steps * dp.rounds, accountant="prv")
        sigmas.append(_SIGMA[key])
    accountants = [make_accountant("prv") for _ in centres]

    def local(i: int, model: LogisticRegression, rnd: int) -> None:
        rng = dp_randomness("run-seed", run_seed=seed, site=centres[i].name, server_round=rnd)
        train_dp(model, centres[i].train, plan=plans[i], lr=dp.lr, momentum=0.0, noise_multiplier=sigmas[i],
                 max_grad_norm=dp.max_grad_norm, accountant=accountants[i], secure_mode=False, modality_dropout=0.0,
                 device=CPU, seed=seed * 1000 + rnd, rng=rng, grad_sample_mode="hooks")

    model = federate(strategy(), centres, rounds=dp.rounds, seed=seed, local=local)
    eps = [epsilon_from_history(a.history, delta=d, accountant="prv") for a, d in zip(accountants, deltas)]
    eps_rdp = [epsilon_from_history(a.history, delta=d, accountant="rdp") for a, d in zip(accountants, deltas)]
    return {"accuracies": _accuracies(model, centres), "epsilon": max(eps), "epsilon-rdp": max(eps_rdp),
            "deltas": deltas, "sigmas": sigmas, "histories": [[list(h) for h in a.history] for a in accountants]}


Runner = Callable[..., dict[str, object]]


def ROWS(epsilons: list[float]) -> dict[str, tuple[Runner, dict[str, object]]]:  # noqa: N802 (a registry)
    """Row name -> (runner, its keyword arguments), in table order."""
    rows: dict[str, tuple[Runner, dict[str, object]]] = {
        "pooled": (_pooled, {}), "local-only": (_local, {}), "fedavg": (_fedavg, {}), "fedyogi": (_fedyogi, {})}
    for delta, tag in ((1e-3, "δ = 1e-3"), (None, "δ = default < 1/n")):
        for e in epsilons:
            rows[f"dp fedavg, ε = {e:g}, {tag}"] = (_dp_fedavg, {"epsilon": e, "delta": delta})
    for label, opt in (("dp fedyogi", _flower_fedyogi), (f"dp {PROXY_SERVER_OPT.name} (proxy η)", PROXY_SERVER_OPT)):
        for e in epsilons:
            rows[f"{label}, ε = {e:g}, δ = 1e-3"] = (_dp_fedavg, {"epsilon": e, "delta": 1e-3, "strategy": opt})
    return rows


def _summary(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_table(results: dict[str, list[dict[str, object]]], path: Path, *, seeds: int, seconds: float) -> str:
    lines = [f"FLamby Fed-Heart-Disease protocol, ours: mean ± sd over {seeds} seeds of the mean of the four "
             f"per-centre test accuracies ({seconds:.0f} s in all).", "",
             "| row | mean accuracy | per centre (Cle, Hun, Swi, VA) | ε PRV (RDP), max over centres | FLamby |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        means = [statistics.fmean(r["accuracies"]) for r in runs]
        per = ", ".join(f"{statistics.fmean(r['accuracies'][i] for r in runs):.2f}" for i in range(len(CENTRES)))
        eps = (f"{max(r['epsilon'] for r in runs):.3f} ({max(r['epsilon-rdp'] for r in runs):.2f})"
               if "epsilon" in runs[0] else "∞ (no DP)")
        pub = FLAMBY_PUBLISHED.get(name)
        lines.append(f"| {name} | {_summary(means)} | {per} | {eps} | "
                     f"{f'{pub[0]:.3f} ± {pub[1]:.3f}' if pub else ''} |")
        for key in sorted(runs[0].get("extra", {})):
            vals = [r["extra"][key] for r in runs]
            pub = FLAMBY_PUBLISHED[key]
            lines.append(f"| {key} | {_summary(vals)} | | ∞ (no DP) | {pub[0]:.3f} ± {pub[1]:.3f} |")
    for key, (m, sd) in FLAMBY_PUBLISHED.items():
        if key.startswith("FLamby DP"):
            lines.append(f"| {key} | | | | {m:.3f} ± {sd:.3f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epsilons", default="0.5,1,2,4,8")
    p.add_argument("--rows", default="", help="row names to run, separated by ; (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "flamby-heart")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # a 13-weight model: threads only add overhead
    args.out.mkdir(parents=True, exist_ok=True)
    centres = load_centres()
    registry = ROWS([float(e) for e in args.epsilons.split(",")])
    chosen = [n for n in registry if not args.rows or n in args.rows.split(";")]
    results: dict[str, list[dict[str, object]]] = {}
    started = time.monotonic()
    for name in chosen:
        run, kwargs = registry[name]
        t = time.monotonic()
        results[name] = [run(centres, seed, **kwargs) for seed in range(args.seeds)]
        means = [statistics.fmean(r["accuracies"]) for r in results[name]]
        print(f"{name:>34}: {_summary(means)} ({time.monotonic() - t:.0f} s)", flush=True)
        (args.out / "flamby-heart.json").write_text(json.dumps({"seeds": args.seeds, "rows": results}, indent=1,
                                                               default=float))
    text = write_table(results, args.out / "flamby-heart.md", seeds=args.seeds, seconds=time.monotonic() - started)
    print(text)
    return 0 if all(math.isfinite(statistics.fmean(r["accuracies"])) for v in results.values() for r in v) else 1


if __name__ == "__main__":
    raise SystemExit(main())
