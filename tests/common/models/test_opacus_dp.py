"""DP-SGD compatibility: Opacus validation, per-sample gradients against a slow reference, real DP-SGD steps."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.validators import ModuleValidator
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from common.models import FusionModel, ImageEncoderConfig, freeze_branches, trainable_state
from common.models.config import FusionConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),  # inputs of the first layers need no grad
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

FUSION_KINDS = ("concat", "attention", "late")
INPUT_ORDER = ("tabular", "tabular_mask", "text", "text_attention_mask", "image")


@pytest.mark.parametrize("fusion", FUSION_KINDS)
@pytest.mark.parametrize("text_kind", ["tiny-bert", "minilm-frozen"])
def test_module_validator_accepts_every_fusion(fusion: str, text_kind: str, make_config) -> None:
    model = FusionModel(make_config(fusion, text_kind=text_kind, dropout=0.1))
    assert ModuleValidator.validate(model, strict=True) == []


def test_module_validator_accepts_resnet18_gn() -> None:
    config = FusionConfig(modalities=("image",), image=ImageEncoderConfig(kind="resnet18-gn"))
    assert ModuleValidator.validate(FusionModel(config), strict=True) == []


def per_sample_reference(model: FusionModel, inputs: dict, present: torch.Tensor, labels: torch.Tensor) -> dict:
    """Slow reference: one forward/backward per sample; name -> (B, *param.shape)."""
    grads: dict[str, list[torch.Tensor]] = {name: [] for name, _ in model.named_parameters()}
    for i in range(present.shape[0]):
        model.zero_grad(set_to_none=False)
        one = {key: value[i : i + 1] for key, value in inputs.items()}
        F.cross_entropy(model(one, present[i : i + 1]), labels[i : i + 1], reduction="sum").backward()
        for name, parameter in model.named_parameters():
            grads[name].append(parameter.grad.detach().clone())
    return {name: torch.stack(values) for name, values in grads.items()}


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_opacus_grad_sample_matches_per_sample_reference(fusion: str, make_config, make_batch) -> None:
    torch.manual_seed(0)
    config = make_config(fusion)  # tiny-bert text + tabular + small-cnn, dropout 0
    model = FusionModel(config).double()
    reference_model = copy.deepcopy(model)
    present = torch.tensor(
        [[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]
    )
    inputs, _ = make_batch(config, 5, seed=3, present=present)
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    labels = torch.tensor([0, 1, 2, 1, 0])

    expected = per_sample_reference(reference_model, inputs, present, labels)

    wrapped = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(wrapped(inputs, present), labels, reduction="sum").backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad_sample is not None, name
        torch.testing.assert_close(parameter.grad_sample, expected[name], rtol=1e-7, atol=1e-9, msg=name)

    # A missing modality contributes exactly zero gradient to its own branch for that sample.
    text_params = trainable_state(model, branches=("text",)).keys()
    for name, parameter in model.named_parameters():
        if name in text_params:
            assert torch.all(parameter.grad_sample[[1, 3]] == 0), name


def batches_as_dicts(loader: DataLoader):
    """What the training loop does: tuple batches from a TensorDataset -> (inputs dict, mask, labels)."""
    for *tensors, present, labels in loader:
        yield dict(zip(INPUT_ORDER, tensors)), present, labels


def tuple_dataset(config: FusionConfig, make_batch, size: int) -> TensorDataset:
    inputs, present = make_batch(config, size, seed=5)
    labels = torch.arange(size) % config.num_classes
    return TensorDataset(*(inputs[key] for key in INPUT_ORDER), present, labels)


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_one_dp_sgd_step_with_poisson_sampling(fusion: str, make_config, make_batch) -> None:
    torch.manual_seed(0)
    config = make_config(fusion, dropout=0.1)
    model = FusionModel(config)
    before = trainable_state(model, branches=("tabular", "text", "image", "head"))
    engine = PrivacyEngine(accountant="prv")
    private_model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(tuple_dataset(config, make_batch, 16), batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    inputs, present, labels = next(batches_as_dicts(loader))
    optimizer.zero_grad()
    F.cross_entropy(private_model(inputs, present), labels).backward()
    for name, parameter in private_model.named_parameters():
        assert parameter.grad_sample.shape == (labels.shape[0], *parameter.shape), name
    optimizer.step()
    after = trainable_state(private_model, branches=("tabular", "text", "image", "head"))
    assert after.keys() == before.keys()
    assert all(not torch.equal(after[name], before[name]) for name in before)  # noise reaches every parameter
    assert engine.accountant.history == [(1.0, 0.25, 1)]


def test_dp_sgd_step_on_an_empty_poisson_batch(make_config, make_batch) -> None:
    # Poisson sampling can draw B = 0. The step must still run (noise only) so that it is accounted.
    torch.manual_seed(0)
    config = make_config("attention", dropout=0.1)
    model = FusionModel(config)
    engine = PrivacyEngine(accountant="prv")
    private_model, optimizer, _ = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(tuple_dataset(config, make_batch, 8), batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    inputs, present = make_batch(config, 0)
    logits = private_model(inputs, present)
    assert logits.shape == (0, 3)
    F.cross_entropy(logits, torch.zeros(0, dtype=torch.long), reduction="sum").backward()
    for name, parameter in private_model.named_parameters():
        assert parameter.grad_sample.shape == (0, *parameter.shape), name
    before = trainable_state(private_model, branches=("head",))
    optimizer.step()
    after = trainable_state(private_model, branches=("head",))
    assert all(not torch.equal(after[name], before[name]) for name in before)
    assert len(engine.accountant.history) == 1


def test_site_without_a_modality_trains_after_freezing_its_branch(make_config, make_batch) -> None:
    # The text encoder never runs at this site, so its parameters would get no grad_sample.
    torch.manual_seed(0)
    config = make_config("late")
    model = FusionModel(config)
    freeze_branches(model, ("text",))
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    engine = PrivacyEngine(accountant="prv")
    private_model, optimizer, _ = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1),
        data_loader=DataLoader(tuple_dataset(config, make_batch, 8), batch_size=4),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    inputs, present = make_batch(config, 4)
    del inputs["text"], inputs["text_attention_mask"]
    F.cross_entropy(private_model(inputs, present), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        unchanged = torch.equal(parameter, before[name])
        assert unchanged == name.startswith(("encoders.text.", "late_heads.text.")), name


def test_resnet18_gn_gets_per_sample_gradients() -> None:
    config = FusionConfig(modalities=("image",), image=ImageEncoderConfig(kind="resnet18-gn", out_dim=8), hidden=8)
    model = GradSampleModule(FusionModel(config))
    logits = model({"image": torch.randn(2, 1, 16, 16)}, torch.ones(2, 1))
    F.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad_sample.shape == (2, *p.shape) for p in model.parameters())
