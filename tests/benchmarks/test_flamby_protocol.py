"""FLamby's Fed-Heart-Disease protocol (benchmarks/flamby_heart.py): the split FLamby publishes, its features and
normalisation, and a DP row whose ε the independent accountant (dp-accounting) confirms."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from common.privacy.reference import epsilon_pld

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fh():
    spec = importlib.util.spec_from_file_location("fedfusion_flamby_heart", REPO / "benchmarks" / "flamby_heart.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def centres(fh):
    return fh.load_centres()


def test_the_split_is_flambys_740_rows_13_features(centres):
    # FLamby's README: train/test 199/104, 172/89, 30/16, 85/45 (740 rows after dropping any missing value)
    assert [(c.name, len(c.train), len(c.test)) for c in centres] == [
        ("Cleveland", 199, 104), ("Hungary", 172, 89), ("Switzerland", 30, 16), ("VA Long Beach", 85, 45)]
    assert all(c.train.tensors["x"].shape[1] == 13 for c in centres)
    # positives per split, pinned from this loader (a regression value, not a FLamby publication): Switzerland
    # keeps one patient without disease once rows with a missing value are dropped, so FLamby's rule (stratify only
    # when each class has more than 2 rows) leaves its split unstratified
    assert [int(c.train.tensors["label"].sum()) for c in centres] == [91, 65, 30, 66]
    assert [int(c.test.tensors["label"].sum()) for c in centres] == [48, 33, 15, 35]


def test_each_centre_is_z_scored_with_its_own_training_rows(centres):
    for c in centres:
        x = c.train.tensors["x"]
        varying = x.std(0) > 0  # Switzerland's cholesterol is 0 for every patient: it stays 0
        assert torch.allclose(x.mean(0), torch.zeros(13), atol=1e-5)
        assert torch.allclose(x.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-4)


def test_logistic_regression_reads_as_flambys_sigmoid(fh):
    model = fh.LogisticRegression()
    x = torch.randn((5, 13))
    logits = model({"x": x}, torch.ones((5, 1)))
    assert torch.allclose(torch.softmax(logits, dim=1)[:, 1], torch.sigmoid(model.linear(x)[:, 0]))


@pytest.mark.slow
def test_a_dp_row_spends_what_dp_accounting_computes(fh, centres):
    dp = fh.DpSettings(rounds=2)
    out = fh._dp_fedavg(centres[2:], 0, epsilon=2.0, delta=1e-3, dp=dp)  # noqa: SLF001  (two centres: lean)
    # every Poisson step of every round is accounted: k = ceil(n / 32) steps per round at q = 1/k (30 and 85 rows)
    assert [sum(h[2] for h in hist) for hist in out["histories"]] == [2, 6]
    for hist in out["histories"]:
        assert epsilon_pld(hist, delta=1e-3) == pytest.approx(2.0, abs=0.03)
    assert 1.9 < out["epsilon"] <= 2.0
    assert len(out["accuracies"]) == 2
