"""``train_dp(clipping="per-modality")`` clips each tensor to its branch's share of C, adds σ C noise, accounts σ.

One DP-SGD step at sampling rate 1 (every row in the batch) with zero noise is compared with a slow reference:
per-sample gradients by autograd, one row at a time, each tensor clipped to ``tensor_budgets``, summed and divided
by the expected batch size. The same step with flat clipping leaves different weights (the head no longer spends the
text branch's budget), and the accountant's history is the flat run's: same σ, same q, same steps.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.dp_random import dp_randomness
from client.train import TensorDictDataset, train_dp
from common.models import FusionModel
from common.models.clipping import tensor_budgets
from common.models.config import FusionConfig, TabularEncoderConfig, TextEncoderConfig
from common.privacy.accountant import make_accountant, plan_steps

pytestmark = [pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off")]

N, CLIP, LR = 12, 0.3, 0.5


def _model() -> FusionModel:
    torch.manual_seed(0)
    return FusionModel(FusionConfig(
        modalities=("tabular", "text"), fusion="attention", hidden=8, dropout=0.0,
        tabular=TabularEncoderConfig(in_features=5, hidden=8, out_dim=6, dropout=0.0),
        text=TextEncoderConfig(kind="minilm-frozen", public_projection=16)))


def _data() -> TensorDictDataset:
    g = torch.Generator().manual_seed(3)
    text = torch.nn.functional.normalize(torch.randn(N, 384, generator=g), dim=1)
    return TensorDictDataset({"tabular": torch.randn(N, 5, generator=g) * 3, "tabular_mask": torch.ones(N, 5),
                              "text": text, "modality_mask": torch.ones(N, 2),
                              "label": torch.randint(0, 2, (N,), generator=g)})


def _train(clipping: str, noise: float = 0.0) -> tuple[dict[str, torch.Tensor], list]:
    model, accountant = _model(), make_accountant("prv")
    train_dp(model, _data(), plan=plan_steps(max_records=N, batch_size=N, epochs=1), lr=LR, momentum=0.0,
             noise_multiplier=noise, max_grad_norm=CLIP, accountant=accountant, secure_mode=False,
             modality_dropout=0.0, device=torch.device("cpu"), seed=0, clipping=clipping,
             rng=dp_randomness("run-seed", run_seed=7, site="s", server_round=1))
    return {n: p.detach().clone() for n, p in model.named_parameters()}, accountant.history


def _reference() -> dict[str, torch.Tensor]:
    model, data = _model(), _data()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    budgets = tensor_budgets(named, CLIP)
    summed = [torch.zeros_like(p) for _, p in named]
    for i in range(N):
        row = data[i]
        inputs = {k: row[k][None] for k in ("tabular", "tabular_mask", "text")}
        loss = nn.functional.cross_entropy(model(inputs, row["modality_mask"][None]), row["label"][None])
        grads = torch.autograd.grad(loss, [p for _, p in named])
        for acc, g, c in zip(summed, grads, budgets, strict=True):
            acc += g * min(1.0, c / (float(g.norm()) + 1e-6))
    with torch.no_grad():
        return {n: p - LR * s / N for (n, p), s in zip(named, summed, strict=True)}


def test_one_step_matches_the_per_tensor_clipped_reference() -> None:
    trained, _ = _train("per-modality")
    expected = _reference()
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_per_modality_differs_from_flat_but_is_accounted_the_same() -> None:
    flat, flat_history = _train("flat", noise=1.3)
    per, per_history = _train("per-modality", noise=1.3)
    assert flat_history == per_history == [(1.3, 1.0, 1)]  # σ, q, steps: ε cannot differ
    assert any(not torch.equal(flat[n], per[n]) for n in flat)


def test_the_noise_is_sigma_times_the_whole_c() -> None:
    # σ = 200: the clipped signal (norm <= C in all) is negligible beside noise of std 200 C per coordinate
    model, accountant = _model(), make_accountant("prv")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_dp(model, _data(), plan=plan_steps(max_records=N, batch_size=N, epochs=1), lr=1.0, momentum=0.0,
             noise_multiplier=200.0, max_grad_norm=CLIP, accountant=accountant, secure_mode=False,
             modality_dropout=0.0, device=torch.device("cpu"), seed=0, clipping="per-modality",
             rng=dp_randomness("run-seed", run_seed=7, site="s", server_round=1))
    noise = torch.cat([(before[n] - p.detach()).flatten() * N for n, p in model.named_parameters()])
    assert noise.numel() > 500
    assert float(noise.std()) == pytest.approx(200.0 * CLIP, rel=0.1)  # σ ||(C_t)|| = σ C everywhere


def test_a_mode_without_per_layer_clipping_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="needs grad_sample_mode='hooks'"):
        train_dp(_model(), _data(), plan=plan_steps(max_records=N, batch_size=N, epochs=1), lr=LR, momentum=0.0,
                 noise_multiplier=1.0, max_grad_norm=CLIP, accountant=make_accountant("prv"), secure_mode=False,
                 modality_dropout=0.0, device=torch.device("cpu"), seed=0, clipping="per-modality",
                 grad_sample_mode="ghost", rng=dp_randomness("run-seed", run_seed=7, site="s", server_round=1))
