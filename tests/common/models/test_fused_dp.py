"""The fused grad-sample mode (``common/models/fused_dp.py``) computes what Opacus' ghost clipping computes.

* Noise 0, float64: its clipped sum equals a slow per-sample reference and Opacus' ghost clipping, on a batch where
  some samples are clipped and some are not, for every encoder kind and fusion it is registered for; its per-sample
  norms equal the reference's.
* Noise on, float32, the same seeded noise generator: four whole optimizer steps (SGD with momentum, an empty Poisson
  batch among them) leave the weights Opacus' own ghost clipping leaves, to float tolerance (not bit for bit: the
  clipped sums are summed in another order; the noise draws themselves are the same), and the same accountant
  history.
* Models it cannot clip are refused when wrapped, saying why.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from opacus import PrivacyEngine as OpacusEngine
from torch import nn

from common.models import FusionModel
from common.models.dp_optimizers import CloningFastGradientClipping, PrivacyEngine
from common.models.fused_dp import FUSED, FusedLinearGradSampleModule, unsupported_parameters
from common.models.grad_sample import FUSION_SUPPORT, GRAD_SAMPLE_MODES, grad_sample_mode
from common.models.params import freeze_branches
from tests.common.models.conftest import make_private_sgd, random_batch, small_config
from tests.common.models.test_grad_sample_modes import batch_for, config_for, dp_gradient, per_sample_gradients

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

FUSED_KINDS = sorted(kind for kind, mode in GRAD_SAMPLE_MODES.items() if mode == FUSED)


def _fused_gradient(model: nn.Module, x, present, y, *, clip: float) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    dp_model, dp_opt, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model, FUSED, clip=clip, noise=0.0,
                                                rows=len(y), batch=len(y))
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model(x, present), y).backward()
    assert dp_opt.pre_step(), "the DP optimizer skipped the step"
    names = {id(p): n.removeprefix("_module.") for n, p in dp_model.named_parameters()}
    return {names[id(p)]: p.grad.detach().clone() for p in dp_opt.params}, dp_model.per_sample_gradient_norms


@pytest.mark.parametrize("fusion", sorted(FUSION_SUPPORT[FUSED][0]))
@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_fused_clips_and_sums_like_the_reference_and_like_ghost(kind: str, fusion: str) -> None:
    config = config_for(kind)
    config = dataclasses.replace(config, fusion=fusion)
    torch.manual_seed(0)
    model = FusionModel(config).double().train()
    x, present, y = batch_for(config)
    n = len(y)
    reference = per_sample_gradients(copy.deepcopy(model), x, present, y)
    norms = torch.cat([g.reshape(n, -1) for g in reference.values()], dim=1).norm(dim=1)
    clip = float(norms.median())  # some samples are clipped, some are not
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert (factor < 1).any() and (factor == 1).any()
    expected = {k: torch.einsum("i,i...->...", factor, g) / n for k, g in reference.items()}

    fused, fused_norms = _fused_gradient(copy.deepcopy(model), x, present, y, clip=clip)
    ghost, _ = dp_gradient(copy.deepcopy(model), "ghost", x, present, y, clip=clip)

    torch.testing.assert_close(fused_norms, norms, rtol=1e-9, atol=1e-12)
    assert fused.keys() == expected.keys() == ghost.keys()
    for name in expected:
        torch.testing.assert_close(fused[name], expected[name], rtol=1e-7, atol=1e-10, msg=f"{kind}/{fusion}: {name}")
        torch.testing.assert_close(fused[name], ghost[name], rtol=1e-7, atol=1e-10, msg=f"{kind}/{fusion}: {name}")


def _steps(engine_class: type, mode: str, batches, *, noise: float, noise_seed: int = 7):
    torch.manual_seed(0)
    model = FusionModel(small_config("attention", modalities=("tabular", "text"), text_kind="minilm-frozen")).train()
    engine = engine_class(accountant="prv")
    dp_model, dp_opt, criterion = make_private_sgd(engine, model, mode, clip=0.5, noise=noise,
                                                generator=torch.Generator().manual_seed(noise_seed))
    for (x, present), y in batches:
        dp_opt.zero_grad(set_to_none=True)
        criterion(dp_model(x, present), y).backward()
        dp_opt.step()
    dp_model._close()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, list(engine.accountant.history), dp_opt


def _batches(sizes=(8, 5, 0, 8)):
    config = small_config("attention", modalities=("tabular", "text"), text_kind="minilm-frozen")
    out = []
    for seed, size in enumerate(sizes):  # an empty Poisson batch too: noise only
        g = torch.Generator().manual_seed(seed)
        out.append((random_batch(config, size, seed=seed), torch.randint(0, config.num_classes, (size,), generator=g)))
    return out


def test_fused_steps_with_noise_equal_opacus_ghost_steps() -> None:
    batches = _batches()

    theirs, their_history, _ = _steps(OpacusEngine, "ghost", batches, noise=1.0)
    ours, our_history, our_opt = _steps(PrivacyEngine, FUSED, batches, noise=1.0)
    quiet, _, _ = _steps(PrivacyEngine, FUSED, batches, noise=0.0)

    assert type(our_opt) is CloningFastGradientClipping
    assert our_history == their_history == [(1.0, 1.0, 4)]  # one entry per step, the empty batch's included
    assert ours.keys() == theirs.keys()
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    # the comparison can fail: the noise is what moved the weights, and it is drawn from the seeded generator
    assert max(float((ours[n] - quiet[n]).abs().max()) for n in ours) > 0.1


def test_an_empty_batch_is_a_noise_only_step() -> None:
    torch.manual_seed(0)
    model = FusionModel(small_config("attention", modalities=("tabular", "text"), text_kind="minilm-frozen")).train()
    dp_model, dp_opt, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model, FUSED, clip=1.0, noise=1.0,
                                                generator=torch.Generator().manual_seed(3))
    x, present = random_batch(model.config, 0)
    dp_opt.zero_grad(set_to_none=True)
    loss = criterion(dp_model(x, present), torch.zeros(0, dtype=torch.long))
    loss.backward()
    clipped = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.count_nonzero(g) == 0 for g in clipped.values())  # no sample, no gradient
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert dp_opt.pre_step()
    generator = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():  # exactly the noise Opacus draws, tensor by tensor, over E[B] = 8
        if p.requires_grad:
            noise = torch.normal(mean=0, std=1.0, size=p.shape, generator=generator)
            assert torch.equal(p.grad, noise / 8), name
    dp_opt.original_optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_layers_other_than_linear_are_refused_with_their_names() -> None:
    late = FusionModel(small_config("late", modalities=("tabular",)))
    cnn = FusionModel(small_config("attention", modalities=("tabular", "image")))
    assert unsupported_parameters(late) == ["head.log_weights", "head.bias"]
    with pytest.raises(NotImplementedError, match=r"only for nn.Linear.*head.log_weights.*grad_sample_mode='ghost'"):
        FusedLinearGradSampleModule(late, max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match=r"encoders.image.features.0.weight"):
        make_private_sgd(PrivacyEngine(accountant="prv"), cnn, FUSED, clip=1.0, noise=1.0)


def test_per_layer_clipping_and_tied_layers_are_refused() -> None:
    model = FusionModel(small_config("attention", modalities=("tabular",)))
    with pytest.raises(ValueError, match="clips flat"):
        FusedLinearGradSampleModule(model, max_grad_norm=[1.0, 1.0])

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(self.layer(x))

    twice = FusedLinearGradSampleModule(Twice().train(), max_grad_norm=1.0)
    with pytest.raises(NotImplementedError, match="ran twice in one forward pass"):
        twice(torch.randn(4, 3))
    tied = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    tied[1].weight = tied[0].weight
    with pytest.raises(NotImplementedError, match="share a trainable tensor"):
        FusedLinearGradSampleModule(tied, max_grad_norm=1.0)


def test_a_backward_without_a_training_forward_is_refused() -> None:
    """In eval mode nothing is captured: the step would silently be noise only."""
    torch.manual_seed(0)
    model = FusionModel(small_config("attention", modalities=("tabular",))).train()
    dp_model, _, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model, FUSED, clip=1.0, noise=1.0)
    x, present = random_batch(model.config, 4)
    dp_model.eval()
    with pytest.raises(ValueError, match="call model.train"):
        criterion(dp_model(x, present), torch.zeros(4, dtype=torch.long)).backward()


def test_a_second_backward_without_a_step_is_refused_under_poisson_sampling() -> None:
    torch.manual_seed(0)
    model = FusionModel(small_config("attention", modalities=("tabular",))).train()
    dp_model, _, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model, FUSED, clip=1.0, noise=1.0)
    dp_model.forbid_grad_accumulation()  # as client/train.py does
    (x, present), y = random_batch(model.config, 4), torch.zeros(4, dtype=torch.long)
    criterion(dp_model(x, present), y).backward()
    with pytest.raises(ValueError, match="without an optimizer step"):
        criterion(dp_model(x, present), y).backward()


@pytest.mark.parametrize("fusion", ["concat", "attention", "late"])
@pytest.mark.parametrize("kind", FUSED_KINDS)
def test_the_registered_mode_wraps_every_fusion(kind: str, fusion: str) -> None:
    """A fused kind in a head the fused mode cannot clip (late fusion) falls back, and every pair can be wrapped."""
    config = config_for(kind)
    config = dataclasses.replace(config, fusion=fusion)
    mode = grad_sample_mode(config)
    fusions, otherwise = FUSION_SUPPORT[FUSED]
    assert mode == (FUSED if fusion in fusions else otherwise)
    make_private_sgd(PrivacyEngine(accountant="prv"), FusionModel(config).train(), mode, clip=1.0, noise=1.0)


def test_fused_equals_ghost_with_dropout_and_a_frozen_branch() -> None:
    """nn.Dropout draws the same masks (one forward pass in both modes); a frozen branch gets no gradient at all."""
    config = small_config("attention", modalities=("tabular", "text"), text_kind="minilm-frozen", dropout=0.3)
    (x, present), y = random_batch(config, 8, seed=4), torch.randint(0, config.num_classes, (8,))
    grads = {}
    for engine, mode in ((OpacusEngine, "ghost"), (PrivacyEngine, FUSED)):
        torch.manual_seed(0)
        model = FusionModel(config).train()
        freeze_branches(model, ("text",))
        dp_model, dp_opt, criterion = make_private_sgd(engine(accountant="prv"), model, mode, clip=0.05, noise=0.0)
        torch.manual_seed(1)  # the dropout masks
        dp_opt.zero_grad(set_to_none=True)
        criterion(dp_model(x, present), y).backward()
        assert dp_opt.pre_step()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[FUSED].keys() == grads["ghost"].keys()
    assert not any(n.startswith(("encoders.text", "projections.text")) for n in grads[FUSED])
    for name in grads["ghost"]:
        torch.testing.assert_close(grads[FUSED][name], grads["ghost"][name], rtol=1e-5, atol=1e-7, msg=name)
