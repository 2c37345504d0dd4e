"""FusionModel: shapes, missing-modality behaviour of each fusion kind, and input checks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from common.models import FusionModel
from common.models.fusion import masked_softmax

FUSION_KINDS = ("concat", "attention", "late")
ALL = ("tabular", "text", "image")


def garbage_in(inputs: dict, modality: str, seed: int) -> dict:
    """``inputs`` with every value of ``modality`` replaced by random values of the same kind."""
    generator = torch.Generator().manual_seed(seed)
    changed = dict(inputs)
    for key in {"tabular": ["tabular", "tabular_mask"], "text": ["text"], "image": ["image"]}[modality]:
        value = inputs[key]
        if value.is_floating_point():
            changed[key] = 50 * torch.randn(value.shape, generator=generator)
        else:
            changed[key] = torch.randint(1000, 30000, value.shape, generator=generator)
    return changed


@pytest.mark.parametrize("fusion", FUSION_KINDS)
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_output_shape(fusion: str, batch: int, make_config, make_batch) -> None:
    config = make_config(fusion)
    inputs, present = make_batch(config, batch)
    assert FusionModel(config)(inputs, present).shape == (batch, 3)


@pytest.mark.parametrize("fusion", FUSION_KINDS)
@pytest.mark.parametrize("modality", ALL)
def test_output_ignores_the_values_of_a_masked_modality(fusion: str, modality: str, make_config, make_batch) -> None:
    config = make_config(fusion)
    model = FusionModel(config).eval()
    inputs, present = make_batch(config, 6, seed=1)
    present[:, ALL.index(modality)] = 0
    expected = model(inputs, present)
    torch.testing.assert_close(model(garbage_in(inputs, modality, seed=2), present), expected, rtol=0, atol=0)
    # Leaving the modality out of ``inputs`` altogether is the same as masking it for every sample.
    without = {k: v for k, v in inputs.items() if not k.startswith(modality)}
    torch.testing.assert_close(model(without, present), expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(
    rows=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=6),
    seed=st.integers(0, 99),
)
def test_each_sample_depends_only_on_its_present_modalities(rows, seed, make_config, make_batch) -> None:
    # Property: for any presence pattern, replacing all missing values by garbage changes no output.
    config = make_config("attention", text_kind="minilm-frozen")
    model = FusionModel(config).eval()
    present = torch.tensor(rows, dtype=torch.float32)
    inputs, _ = make_batch(config, len(rows), seed=seed)
    garbled = dict(inputs)
    generator = torch.Generator().manual_seed(seed + 1)
    for column, modality in enumerate(ALL):
        keys = {"tabular": ["tabular", "tabular_mask"], "text": ["text"], "image": ["image"]}[modality]
        missing = present[:, column] == 0
        for key in keys:
            noise = 50 * torch.randn(inputs[key].shape, generator=generator)
            garbled[key] = torch.where(missing.view(-1, *[1] * (noise.dim() - 1)), noise, inputs[key])
    torch.testing.assert_close(model(garbled, present), model(inputs, present), rtol=0, atol=0)


def test_attention_weights_are_zero_for_missing_modalities_and_sum_to_one(make_config, make_batch) -> None:
    config = make_config("attention")
    model = FusionModel(config)
    assert model.last_attention_weights is None
    present = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    inputs, _ = make_batch(config, 4)
    model(inputs, present)
    weights = model.last_attention_weights
    assert weights.shape == (4, 3) and not weights.requires_grad
    assert torch.all(weights[present == 0] == 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert weights[2, 2] == 1.0  # the only present modality takes all the weight


def test_attention_weights_exist_only_for_attention_fusion(make_config, make_batch) -> None:
    model = FusionModel(make_config("concat"))
    model(*make_batch(model.config, 2))
    assert model.last_attention_weights is None


def test_late_fusion_is_the_mean_of_present_modality_logits_plus_bias(make_config, make_batch) -> None:
    config = make_config("late")
    model = FusionModel(config).eval()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    inputs, _ = make_batch(config, 3)
    present = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    per_modality = {m: model.late_heads[m](model.encoders[m](inputs)) for m in ALL}
    bias = model.head.bias
    expected = torch.stack(
        [
            (per_modality["tabular"][0] + per_modality["image"][0]) / 2 + bias,  # log-weights start at 0: plain mean
            per_modality["text"][1] + bias,
            bias,  # no modality: just the head bias
        ]
    )
    torch.testing.assert_close(model(inputs, present), expected)


def test_late_fusion_log_weights_shift_the_mix(make_config, make_batch) -> None:
    config = make_config("late", modalities=("tabular", "image"))
    model = FusionModel(config).eval()
    with torch.no_grad():
        model.head.log_weights.copy_(torch.log(torch.tensor([3.0, 1.0])))
    inputs, _ = make_batch(config, 2)
    tabular = model.late_heads["tabular"](model.encoders["tabular"](inputs))
    image = model.late_heads["image"](model.encoders["image"](inputs))
    torch.testing.assert_close(model(inputs, torch.ones(2, 2)), 0.75 * tabular + 0.25 * image)


def test_concat_with_no_modality_gives_a_constant(make_config, make_batch) -> None:
    config = make_config("concat")
    model = FusionModel(config).eval()
    inputs, _ = make_batch(config, 3, seed=4)
    logits = model(inputs, torch.zeros(3, 3))
    torch.testing.assert_close(logits, logits[:1].expand(3, -1))


@settings(max_examples=50, deadline=None)
@given(
    scores=st.lists(st.floats(-30, 30), min_size=4, max_size=4),
    present=st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_masked_softmax_properties(scores, present) -> None:
    s = torch.tensor([scores], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([present], dtype=torch.float64)
    weights = masked_softmax(s, p)
    assert torch.all(weights[p == 0] == 0)
    assert torch.isclose(weights.sum(), torch.tensor(float(any(present)), dtype=torch.float64))
    if any(present):
        expected = torch.softmax(s[p > 0], dim=0)
        torch.testing.assert_close(weights[p > 0], expected)
    (weights * torch.arange(4.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(s.grad).all()  # never NaN, even with nothing present


def test_input_errors_say_why(make_config, make_batch) -> None:
    config = make_config("concat")
    model = FusionModel(config)
    inputs, present = make_batch(config, 2)
    with pytest.raises(ValueError, match=r"expected \(B, 3\)"):
        model(inputs, present[:, :2])
    with pytest.raises(KeyError, match=r"\['images'\].*misspelt"):
        model({**inputs, "images": inputs["image"]}, present)
    with pytest.raises(ValueError, match=r"inputs\['image'\] has 1 samples but modality_mask has 2 rows"):
        model({**inputs, "image": inputs["image"][:1]}, present)


def test_float64_model_accepts_float32_inputs(make_config, make_batch) -> None:
    config = make_config("attention")
    model = FusionModel(config).double()
    assert model(*make_batch(config, 2)).dtype == torch.float64
