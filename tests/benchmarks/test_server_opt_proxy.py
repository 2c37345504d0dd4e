"""The public proxy that chooses the DP sites' server optimiser (benchmarks/server_opt_proxy.py): FLamby's sizes on
German Credit, a heterogeneous split, flamby_heart's DP machinery with an accounted ε, and the choice rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.benchmarks.scripts import load_script


@pytest.fixture(scope="module")
def proxy():
    return load_script("server_opt_proxy")


@pytest.fixture(scope="module")
def centres(proxy):
    return proxy.load_proxy_centres()


def test_the_proxy_has_flambys_sizes_and_feature_count(centres):
    assert [(len(c.train), len(c.test)) for c in centres] == [(199, 104), (172, 89), (30, 16), (85, 45)]
    assert all(c.train.tensors["x"].shape[1] == 13 for c in centres)
    for c in centres:  # z-scored with the centre's own training rows
        assert torch.allclose(c.train.tensors["x"].mean(0), torch.zeros(13), atol=1e-5)


def test_the_split_is_heterogeneous_by_credit_amount(proxy, centres):
    # positives (bad credit risks) per training split, pinned from this loader (a regression value): the two small
    # centres (largest loans) carry the highest default rates, like FLamby's two small centres
    assert [int(c.train.tensors["label"].sum()) for c in centres] == [54, 42, 14, 39]
    rate = [float(c.train.tensors["label"].float().mean()) for c in centres]
    assert min(rate[2:]) > max(rate[:2]) + 0.15
    groups = proxy.split_by_feature(np.arange(10.0)[::-1], {"a": 4, "b": 2, "c": 2}, seed=0)
    # sorted ascending: values 0..9 are rows 9..0; blocks of 5 / 3 / 2 rows (proportional), subsampled to 4 / 2 / 2
    assert set(groups["a"]) <= {9, 8, 7, 6, 5} and len(groups["a"]) == 4
    assert set(groups["b"]) <= {4, 3, 2} and len(groups["b"]) == 2
    assert sorted(groups["c"]) == [0, 1]
    with pytest.raises(ValueError, match="9 records needed.*only 8 given"):
        proxy.split_by_feature(np.arange(8.0), {"a": 5, "b": 4}, seed=0)


def test_a_grid_setting_runs_flambys_dp_sites_and_spends_at_most_its_epsilon(proxy, centres):
    dp = proxy.fh.DpSettings(rounds=2)
    out = proxy.run_setting(centres, proxy.GRID["fedyogi η=0.1 τ=0.001"], epsilon=1.0, seed=0, dp=dp)
    assert len(out["accuracies"]) == 4 and all(0.0 <= a <= 1.0 for a in out["accuracies"])
    # σ is calibrated for the run's steps (2 rounds x ceil(n/32) Poisson steps), so ε lands just under the target
    assert [sum(h[2] for h in hist) for hist in out["histories"]] == [14, 12, 2, 6]
    assert 0.9 < out["epsilon"] <= 1.0
    assert out["deltas"] == [1e-3] * 4


def test_the_grid_is_the_issues_and_builds_flowers_strategies(proxy):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedYogi

    assert len(proxy.GRID) == 1 + 8 + 2
    kinds = [type(opt()) for opt in proxy.GRID.values()]
    assert kinds.count(FedAvg) == 1 and kinds.count(FedYogi) == 8 and kinds.count(FedAdam) == 2
    yogi = proxy.GRID["fedyogi η=0.3 τ=1e-08"]()
    assert (yogi.eta, yogi.tau, yogi.beta_1, yogi.beta_2) == (0.3, 1e-8, 0.9, 0.999)
    with pytest.raises(ValueError, match="unknown server optimiser 'fedsgd'"):
        proxy.ServerOpt("fedsgd")()


def test_the_choice_is_the_best_rounded_mean_then_the_smaller_sd(proxy):
    means = {"a": [0.70, 0.72], "b": [0.7102, 0.7102], "c": [0.69, 0.73], "d": [0.60, 0.61]}
    # a, b and c all have mean 0.710 to 3 decimals; b has sd 0
    assert proxy.choose(means) == "b"
    assert proxy.choose({"a": [0.70, 0.72], "d": [0.711, 0.711]}) == "d"
