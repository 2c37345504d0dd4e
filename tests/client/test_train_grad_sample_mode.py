"""``train_dp`` runs DP-SGD in the grad-sample mode the registry picks, and the mode changes nothing but speed.

With zero noise and the same seeded Poisson batches, a local epoch in ghost clipping (or our fused mode, for the default
model and tiny-BERT) and one in hooks mode must leave the same weights (their clipped sums are equal); the accountant
gets one entry per step either way.
"""

from __future__ import annotations

import pytest
import torch

from client.dp_random import dp_randomness
from client.train import TensorDictDataset, train_dp
from common.models import FusionModel
from common.models.config import FusionConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.grad_sample import grad_sample_mode
from common.privacy.accountant import make_accountant, plan_steps

pytestmark = [pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off")]


def _config(text_kind: str = "tiny-bert") -> FusionConfig:
    return FusionConfig(modalities=("tabular", "text"), fusion="attention", hidden=8, dropout=0.0,
                        tabular=TabularEncoderConfig(in_features=7, hidden=16, out_dim=8, dropout=0.0),
                        text=TextEncoderConfig(kind=text_kind, out_dim=8, max_length=12, tiny_hidden=8,
                                               tiny_layers=1, tiny_heads=2, tiny_intermediate=16, dropout=0.0))


def _dataset(n: int = 40, text_kind: str = "tiny-bert") -> TensorDictDataset:
    g = torch.Generator().manual_seed(1)
    attention = (torch.arange(12).expand(n, 12) < torch.randint(3, 13, (n, 1), generator=g)).long()
    text = ({"text": torch.randn(n, 384, generator=g)} if text_kind == "minilm-frozen" else
            {"text": torch.randint(1000, 30000, (n, 12), generator=g) * attention, "text_attention_mask": attention})
    return TensorDictDataset({
        "tabular": torch.randn(n, 7, generator=g), "tabular_mask": torch.ones(n, 7), **text,
        "modality_mask": torch.ones(n, 2), "label": torch.randint(0, 2, (n,), generator=g)})


def _train(mode: str | None, text_kind: str = "tiny-bert") -> tuple[dict[str, torch.Tensor], list, int]:
    torch.manual_seed(0)
    model = FusionModel(_config(text_kind))
    accountant = make_accountant("prv")
    res = train_dp(model, _dataset(text_kind=text_kind), plan=plan_steps(max_records=40, batch_size=8, epochs=1), lr=0.5, momentum=0.0, noise_multiplier=0.0,
                   max_grad_norm=0.05, accountant=accountant, secure_mode=False, modality_dropout=0.0,
                   device=torch.device("cpu"), seed=0, grad_sample_mode=mode,
                   rng=dp_randomness("run-seed", run_seed=7, site="s", server_round=1))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, accountant.history, res.steps


def test_ghost_and_hooks_leave_the_same_weights_and_the_same_accounting() -> None:
    hooks, hooks_history, hooks_steps = _train("hooks")
    ghost, ghost_history, ghost_steps = _train("ghost")
    assert hooks_steps == ghost_steps == 5  # 40 rows at rate 1/5: five Poisson batches
    assert hooks_history == ghost_history == [(0.0, 0.2, 5)]
    torch.manual_seed(0)
    initial = FusionModel(_config()).state_dict()
    assert any(not torch.equal(hooks[k], initial[k]) for k in hooks)  # it trained
    for k in hooks:
        torch.testing.assert_close(ghost[k], hooks[k], rtol=1e-4, atol=1e-6, msg=k)


def test_the_registered_mode_is_the_default() -> None:
    registered, _, _ = _train(None)
    explicit, _, _ = _train(grad_sample_mode(_config()))
    for k in registered:
        assert torch.equal(registered[k], explicit[k]), k


@pytest.mark.parametrize("text_kind", ["minilm-frozen", "tiny-bert"])
def test_fused_and_hooks_leave_the_same_weights_and_the_same_accounting(text_kind: str) -> None:
    """The default model's kind (minilm-frozen: all nn.Linear) and tiny-bert (Embedding, LayerNorm, Linear) through
    train_dp in our fused mode, against hooks."""
    assert grad_sample_mode(_config(text_kind)) == "fused"
    hooks, hooks_history, hooks_steps = _train("hooks", text_kind)
    fused, fused_history, fused_steps = _train("fused", text_kind)
    registered, _, _ = _train(None, text_kind)
    assert hooks_steps == fused_steps == 5
    assert hooks_history == fused_history == [(0.0, 0.2, 5)]
    torch.manual_seed(0)
    initial = FusionModel(_config(text_kind)).state_dict()
    assert any(not torch.equal(hooks[k], initial[k]) for k in hooks)  # it trained
    for k in hooks:
        torch.testing.assert_close(fused[k], hooks[k], rtol=1e-4, atol=1e-6, msg=k)
        assert torch.equal(registered[k], fused[k]), k
