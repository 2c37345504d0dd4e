"""The grad-sample mode registry: every encoder kind has a mode, and every mode computes DP-SGD's clipped sum right.

For each encoder kind, a model holding it is wrapped by ``PrivacyEngine.make_private`` in each mode Opacus offers
for our models (hooks, functorch, ghost), with noise 0; its gradient after the DP optimizer's clipping step must
equal a slow reference: one backward pass per sample, each gradient clipped to C (chosen so that some samples
are clipped and some are not), summed and divided by the batch size. Where the mode keeps per-sample gradients
(hooks, functorch), those must equal the reference's too. float64 throughout, so the tolerance is tight.
"""

from __future__ import annotations

import copy
from typing import get_args

import pytest
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader

from common.models import FusionModel
from common.models.config import FusionConfig, ImageEncoderConfig, ImageKind, TabularEncoderConfig, TextEncoderConfig
from common.models.config import TextKind
from common.models.dp_optimizers import PrivacyEngine as TrainingEngine
from common.models.fused_dp import FUSED
from common.models.grad_sample import GRAD_SAMPLE_MODES, PRECEDENCE, encoder_kinds, grad_sample_mode, prepare_opacus
from tests.common.models.conftest import Rows

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

MODES = ("hooks", "functorch", "ghost")
BATCH = 5  # samples per test batch (ResNet-18: 3, and 8x8 images: its per-sample reference is the slow part)


def config_for(kind: str) -> FusionConfig:
    """A model whose most demanding encoder is ``kind`` (real layer types, small widths where they are settable)."""
    tabular = TabularEncoderConfig(in_features=7, hidden=16, out_dim=8, dropout=0.0)
    if kind == "tabular":
        return FusionConfig(modalities=("tabular",), fusion="attention", hidden=8, dropout=0.0, tabular=tabular)
    if kind in get_args(TextKind):
        text = TextEncoderConfig(kind=kind, out_dim=8, max_length=12, tiny_hidden=8, tiny_layers=1, tiny_heads=2,
                                 tiny_intermediate=16, dropout=0.0)
        return FusionConfig(modalities=("tabular", "text"), fusion="attention", hidden=8, dropout=0.0,
                            tabular=tabular, text=text)
    image = ImageEncoderConfig(kind=kind, out_dim=8, cnn_channels=(4, 8), norm_groups=2 if kind == "small-cnn" else 8,
                               dropout=0.0)
    return FusionConfig(modalities=("tabular", "image"), fusion="attention", hidden=8, dropout=0.0,
                        tabular=tabular, image=image)


def batch_for(config: FusionConfig, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    resnet = config.image is not None and config.image.kind == "resnet18-gn"
    n, side = (3, 8) if resnet else (BATCH, 12)
    x: dict[str, torch.Tensor] = {"tabular": torch.randn(n, 7, generator=g, dtype=torch.float64),
                                  "tabular_mask": (torch.rand(n, 7, generator=g) > 0.3).double()}
    if config.text is not None:
        attention = (torch.arange(12).expand(n, 12) < torch.randint(3, 13, (n, 1), generator=g)).long()
        if config.text.kind == "minilm-frozen":
            x["text"] = torch.randn(n, 384, generator=g, dtype=torch.float64)
        elif config.text.kind == "tiny-bert":
            x["text"] = torch.randint(1000, 30000, (n, 12), generator=g) * attention
            x["text_attention_mask"] = attention
        else:
            x["text"] = torch.randn(n, 12, 384, generator=g, dtype=torch.float64)
            x["text_attention_mask"] = attention
    if config.image is not None:
        x["image"] = torch.randn(n, 1, side, side, generator=g, dtype=torch.float64)
    present = torch.ones(n, len(config.modalities), dtype=torch.float64)
    present[1, -1] = 0.0  # one sample misses its last modality
    return x, present, torch.tensor([0, 1, 1, 0, 1][:n])


def per_sample_gradients(model: nn.Module, x, present, y) -> dict[str, torch.Tensor]:
    """Slow reference: one forward/backward per sample; name -> (B, *shape)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out: dict[str, list[torch.Tensor]] = {n: [] for n in params}
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model({k: v[i:i + 1] for k, v in x.items()}, present[i:i + 1]), y[i:i + 1]).backward()
        for n, p in params.items():
            out[n].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    return {n: torch.stack(v) for n, v in out.items()}


def dp_gradient(model: nn.Module, mode: str, x, present, y, *, clip: float):
    """The gradient Opacus' DP optimizer hands to SGD in ``mode`` (noise 0), and per-sample gradients if kept."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    made = PrivacyEngine(accountant="prv").make_private(
        module=model, optimizer=opt, data_loader=DataLoader(Rows(len(y)), batch_size=len(y)), noise_multiplier=0.0,
        max_grad_norm=clip, poisson_sampling=False, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
    dp_model, dp_opt, criterion = (made[0], made[1], made[2]) if mode == "ghost" else (made[0], made[1],
                                                                                        nn.CrossEntropyLoss())
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model(x, present), y).backward()
    names = {id(p): n.removeprefix("_module.") for n, p in dp_model.named_parameters()}
    samples = {names[id(p)]: p.grad_sample.detach().clone() for p in dp_opt.params
               if getattr(p, "grad_sample", None) is not None}
    assert dp_opt.pre_step(), "the DP optimizer skipped the step"
    grads = {names[id(p)]: p.grad.detach().clone() for p in dp_opt.params}
    return grads, samples


def _cases() -> list:
    """Every (kind, mode); ResNet-18's modes other than its registered one run with the slow tests (seconds each)."""
    return [pytest.param(kind, mode, marks=[pytest.mark.slow] if kind == "resnet18-gn" and mode != GRAD_SAMPLE_MODES[kind]
                         else []) for kind in PRECEDENCE for mode in MODES]


@pytest.mark.parametrize("kind, mode", _cases())
def test_every_mode_clips_and_sums_like_the_per_sample_reference(kind: str, mode: str) -> None:
    config = config_for(kind)
    torch.manual_seed(0)
    model = FusionModel(config).double().train()
    x, present, y = batch_for(config)
    n = len(y)
    reference = per_sample_gradients(copy.deepcopy(model), x, present, y)
    norms = torch.cat([g.reshape(n, -1) for g in reference.values()], dim=1).norm(dim=1)  # per sample
    clip = float(norms.median())  # some samples are clipped, some are not
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)  # Opacus' flat clipping coefficient
    assert (factor < 1).any() and (factor == 1).any()
    expected = {k: torch.einsum("i,i...->...", factor, g) / n for k, g in reference.items()}

    grads, samples = dp_gradient(model, mode, x, present, y, clip=clip)

    assert grads.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-7, atol=1e-10, msg=f"{kind}/{mode}: {name}")
    if mode != "ghost":  # hooks and functorch keep the per-sample gradients themselves
        assert samples.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(samples[name], reference[name], rtol=1e-7, atol=1e-10, msg=f"{kind}: {name}")


@pytest.mark.parametrize("kind", PRECEDENCE)
def test_the_registered_mode_runs_an_empty_poisson_batch(kind: str) -> None:
    """Poisson sampling can draw B = 0: the step must still run (noise only), in the mode the registry picks."""
    config = config_for(kind)
    mode = grad_sample_mode(config)
    prepare_opacus()  # as client/train.py does before make_private
    torch.manual_seed(0)
    model = FusionModel(config).double().train()
    x, present, _ = batch_for(config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = TrainingEngine(accountant="prv")  # the engine client/train.py uses: Opacus' modes and ours (fused)
    made = engine.make_private(module=model, optimizer=opt, data_loader=DataLoader(Rows(8), batch_size=4),
                               noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=True,
                               grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
    dp_model, dp_opt = made[0], made[1]
    criterion = made[2] if len(made) == 4 else nn.CrossEntropyLoss()
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model({k: v[:0] for k, v in x.items()}, present[:0]), torch.zeros(0, dtype=torch.long)).backward()
    dp_opt.step()
    assert len(engine.accountant.history) == 1
    assert any(not torch.equal(p, before[n.removeprefix("_module.")]) for n, p in dp_model.named_parameters())


def test_every_encoder_kind_has_a_mode_and_a_place_in_the_precedence() -> None:
    kinds = {"tabular", *get_args(TextKind), *get_args(ImageKind)}
    assert set(GRAD_SAMPLE_MODES) == kinds == set(PRECEDENCE)
    assert len(PRECEDENCE) == len(set(PRECEDENCE))
    assert set(GRAD_SAMPLE_MODES.values()) <= {*MODES, FUSED}  # fused: tests/common/models/test_fused_dp.py


def test_a_model_takes_the_mode_of_its_most_demanding_encoder() -> None:
    both = FusionConfig(modalities=("tabular", "text", "image"), tabular=TabularEncoderConfig(in_features=7),
                        text=TextEncoderConfig(kind="tiny-bert"), image=ImageEncoderConfig(kind="resnet18-gn"))
    assert encoder_kinds(both) == ("tabular", "tiny-bert", "resnet18-gn")
    assert grad_sample_mode(both) == GRAD_SAMPLE_MODES["resnet18-gn"]
    default = FusionConfig(modalities=("tabular", "text"), tabular=TabularEncoderConfig(in_features=7),
                           text=TextEncoderConfig(kind="minilm-frozen"))
    assert grad_sample_mode(default) == GRAD_SAMPLE_MODES["minilm-frozen"]
