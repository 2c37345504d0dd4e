"""The model's own ``nn.Dropout`` masks under DP-SGD come from the round's secret seed, not the public seed.

``nn.Dropout`` draws from torch's global RNG in batch order. ``train_dp`` used to seed it with the run's public
seed, so the mask a record got depended on which records were sampled before it (the flaw
``client.train.dropout_generator`` removed for modality dropout). Now ``client.dp_random.model_randomness`` seeds it
from ``DpRandomness.model_seed`` (secret by default) and restores the global state afterwards.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from client.dp_random import dp_randomness, model_randomness
from client.train import TensorDictDataset, train_dp
from common.models import FusionModel
from common.models.config import FusionConfig, TabularEncoderConfig
from common.privacy.accountant import make_accountant, plan_steps

pytestmark = [pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off")]

N = 48


def _dataset() -> TensorDictDataset:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 5, generator=g)
    return TensorDictDataset({"tabular": x, "tabular_mask": torch.ones(N, 5), "modality_mask": torch.ones(N, 1),
                              "label": (x[:, 0] > 0).long()})


def _model(dropout: float) -> FusionModel:
    config = FusionConfig(modalities=("tabular",), hidden=8, dropout=dropout,
                          tabular=TabularEncoderConfig(in_features=5, hidden=16, out_dim=8, dropout=dropout))
    model = FusionModel(config)
    with torch.no_grad():  # the same start whatever torch's global RNG holds
        for i, p in enumerate(model.parameters()):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + i)) * 0.3)
    return model


def _train(rng, *, public_seed: int, dropout: float = 0.5, model: FusionModel | None = None) -> dict[str, torch.Tensor]:
    model = model if model is not None else _model(dropout)
    train_dp(model, _dataset(), plan=plan_steps(max_records=N, batch_size=12, epochs=1), lr=0.5, momentum=0.0,
             noise_multiplier=0.0, max_grad_norm=1.0, accountant=make_accountant("prv"), secure_mode=False,
             modality_dropout=0.0, device=torch.device("cpu"), seed=public_seed, rng=rng)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _rng(model_seed: int | None = None):
    rng = dp_randomness("run-seed", run_seed=7, site="s", server_round=1)
    return rng if model_seed is None else dataclasses.replace(rng, model_seed=model_seed)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_public_seed_no_longer_decides_the_dropout_masks() -> None:
    assert _equal(_train(_rng(), public_seed=0), _train(_rng(), public_seed=12345))


def test_the_round_model_seed_decides_them() -> None:
    trained = _train(_rng(11), public_seed=0)
    assert not _equal(trained, _train(_rng(12), public_seed=0))  # same batches and noise, other masks
    # negative control: without dropout the model seed changes nothing
    assert _equal(_train(_rng(11), public_seed=0, dropout=0.0), _train(_rng(12), public_seed=0, dropout=0.0))


def test_training_leaves_torchs_global_rng_as_it_found_it() -> None:
    model = _model(0.5)  # built first: building draws from the global RNG, training must not
    torch.manual_seed(2024)
    expected = torch.rand(4)
    torch.manual_seed(2024)
    _train(_rng(), public_seed=0, model=model)
    assert torch.equal(torch.rand(4), expected)  # the secret seed does not leak into what runs after training


def test_the_secret_source_draws_a_fresh_model_seed_each_round() -> None:
    seeds = {dp_randomness("secret", run_seed=0, site="s", server_round=1).model_seed for _ in range(8)}
    assert len(seeds) == 8
    same = {dp_randomness("run-seed", run_seed=0, site="s", server_round=1).model_seed for _ in range(3)}
    assert len(same) == 1 and same != {dp_randomness("run-seed", run_seed=0, site="s", server_round=2).model_seed}


def test_model_randomness_seeds_the_global_rng_inside() -> None:
    rng = _rng(99)
    with model_randomness(rng):
        inside = torch.rand(3)
    torch.manual_seed(99)
    assert torch.equal(inside, torch.rand(3))
