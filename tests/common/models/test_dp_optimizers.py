"""Our PrivacyEngine hands out Opacus' DP optimizers minus a deepcopy per step: the same updates, bit for bit."""

from __future__ import annotations

import pytest
import torch
from opacus import PrivacyEngine as OpacusEngine
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping, DPPerLayerOptimizer
from torch import nn
from torch.utils.data import DataLoader

from common.models import FusionModel
from common.models.dp_optimizers import OPTIMIZERS, CloningFastGradientClipping, PrivacyEngine
from common.models.grad_sample import prepare_opacus
from tests.common.models.conftest import Rows, random_batch, small_config


def _train(engine_class: type, config, batches, *, mode: str, noise_seed: int = 7):
    """Four DP-SGD steps (SGD with momentum, noise 1.0 from a seeded generator); the parameters and the history."""
    torch.manual_seed(0)
    model = FusionModel(config).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    engine = engine_class(accountant="prv")
    made = engine.make_private(
        module=model, optimizer=opt, data_loader=DataLoader(Rows(8), batch_size=8), noise_multiplier=1.0,
        max_grad_norm=0.5, poisson_sampling=False, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss(),
        noise_generator=torch.Generator().manual_seed(noise_seed))
    dp_model, dp_opt = made[0], made[1]
    criterion = made[2] if mode == "ghost" else nn.CrossEntropyLoss()
    for (x, present), y in batches:
        dp_opt.zero_grad(set_to_none=True)
        criterion(dp_model(x, present), y).backward()
        dp_opt.step()
    dp_model._close()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, list(engine.accountant.history), dp_opt


@pytest.mark.parametrize("text_kind", ["minilm-frozen", "tiny-bert"])
def test_ghost_updates_equal_opacus_own_bit_for_bit(text_kind: str) -> None:
    prepare_opacus()  # as client/train.py does (empty batches in nn.Embedding)
    config = small_config("attention", modalities=("tabular", "text"), text_kind=text_kind)
    batches = []
    for seed, size in enumerate((8, 5, 0, 8)):  # an empty Poisson batch too: noise only
        x, present = random_batch(config, size, seed=seed)
        batches.append(((x, present), torch.randint(0, config.num_classes, (size,),
                                                    generator=torch.Generator().manual_seed(seed))))

    theirs, their_history, their_opt = _train(OpacusEngine, config, batches, mode="ghost")
    ours, our_history, our_opt = _train(PrivacyEngine, config, batches, mode="ghost")

    assert type(their_opt) is DPOptimizerFastGradientClipping
    assert type(our_opt) is CloningFastGradientClipping
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name  # bit for bit, noise included
    assert our_history == their_history == [(1.0, 1.0, 4)]
    # and the update is a real one: noise from the seeded generator moved every trainable tensor
    torch.manual_seed(0)
    start = {n: p.detach() for n, p in FusionModel(config).named_parameters() if p.requires_grad}
    assert all(not torch.equal(ours[n], start[n]) for n in start)


def test_another_noise_seed_gives_other_bits() -> None:
    """The comparison above can fail: the noise generator is what Opacus draws from, in both classes."""
    config = small_config("attention", modalities=("tabular", "text"), text_kind="minilm-frozen")
    x, present = random_batch(config, 8, seed=0)
    batches = [((x, present), torch.zeros(8, dtype=torch.long))]
    ours, _, _ = _train(PrivacyEngine, config, batches, mode="ghost", noise_seed=7)
    other, _, _ = _train(PrivacyEngine, config, batches, mode="ghost", noise_seed=8)
    assert any(not torch.equal(ours[n], other[n]) for n in ours)


@pytest.mark.parametrize("mode, clipping, expected", [
    ("ghost", "flat", CloningFastGradientClipping),
    ("hooks", "flat", DPOptimizer),
    ("hooks", "per_layer", DPPerLayerOptimizer),
])
def test_only_the_ghost_optimizer_is_replaced(mode: str, clipping: str, expected: type) -> None:
    config = small_config("attention", modalities=("tabular",))
    model = FusionModel(config).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    n_tensors = sum(1 for p in model.parameters() if p.requires_grad)
    made = PrivacyEngine(accountant="prv").make_private(
        module=model, optimizer=opt, data_loader=DataLoader(Rows(8), batch_size=4), noise_multiplier=1.0,
        max_grad_norm=1.0 if clipping == "flat" else [1.0] * n_tensors, clipping=clipping, poisson_sampling=True,
        grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
    assert type(made[1]) is expected
    assert set(OPTIMIZERS) == {DPOptimizerFastGradientClipping}
    assert issubclass(CloningFastGradientClipping, DPOptimizerFastGradientClipping)
