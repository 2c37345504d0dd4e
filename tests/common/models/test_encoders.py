"""Encoders alone: output shapes, what they ignore, B = 0, and errors for malformed inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.models import ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.image import build_image_encoder
from common.models.tabular import TabularEncoder
from common.models.text import MINILM_DIM, build_text_encoder, masked_mean_pool


def test_tabular_shape_and_input_width() -> None:
    encoder = TabularEncoder(TabularEncoderConfig(in_features=7, hidden=16, out_dim=5))
    assert encoder.net[0].in_features == 14  # values + missing indicators
    out = encoder({"tabular": torch.randn(4, 7), "tabular_mask": torch.ones(4, 7)})
    assert out.shape == (4, 5)


def test_tabular_ignores_the_value_of_a_missing_feature() -> None:
    encoder = TabularEncoder(TabularEncoderConfig(in_features=3, dropout=0.0))
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    a = encoder({"tabular": torch.tensor([[0.5, 0.0, -1.0]]), "tabular_mask": mask})
    b = encoder({"tabular": torch.tensor([[0.5, 123.0, -1.0]]), "tabular_mask": mask})
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tabular_sees_the_missing_indicator() -> None:
    # Same values, different mask: the mask is an input, so the output must change.
    encoder = TabularEncoder(TabularEncoderConfig(in_features=3, dropout=0.0))
    values = torch.zeros(1, 3)
    a = encoder({"tabular": values, "tabular_mask": torch.ones(1, 3)})
    b = encoder({"tabular": values, "tabular_mask": torch.tensor([[1.0, 0.0, 1.0]])})
    assert not torch.allclose(a, b)


def test_tabular_errors_say_why() -> None:
    encoder = TabularEncoder(TabularEncoderConfig(in_features=3))
    with pytest.raises(KeyError, match="no 'tabular_mask'"):
        encoder({"tabular": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"in_features=3"):
        encoder({"tabular": torch.zeros(2, 4), "tabular_mask": torch.ones(2, 4)})


def test_masked_mean_pool_exact() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = masked_mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))
    # A row without any token pools to 0 instead of dividing by 0.
    assert masked_mean_pool(hidden, torch.zeros(1, 3)).abs().sum() == 0


def test_frozen_text_encoder_is_identity_without_parameters() -> None:
    encoder = build_text_encoder(TextEncoderConfig(kind="minilm-frozen"))
    embeddings = torch.randn(3, MINILM_DIM)
    assert encoder({"text": embeddings}) is embeddings
    assert encoder.out_dim == MINILM_DIM
    assert list(encoder.parameters()) == []
    with pytest.raises(ValueError, match="minilm-frozen reads"):
        encoder({"text": torch.randint(0, 10, (3, 16))})


def tiny_bert(**overrides) -> nn.Module:
    config = TextEncoderConfig(
        kind="tiny-bert", out_dim=6, max_length=10, tiny_hidden=8, tiny_layers=1, tiny_heads=2,
        tiny_intermediate=16, dropout=0.0, **overrides,
    )
    return build_text_encoder(config).eval()


def test_tiny_bert_shape_and_padding_invariance() -> None:
    encoder = tiny_bert()
    ids = torch.randint(1000, 2000, (2, 10))
    mask = torch.tensor([[1] * 4 + [0] * 6, [1] * 10])
    out = encoder({"text": ids, "text_attention_mask": mask})
    assert out.shape == (2, 6)
    # Changing the tokens under padding changes nothing.
    other_ids = ids.clone()
    other_ids[0, 4:] = 7
    torch.testing.assert_close(encoder({"text": other_ids, "text_attention_mask": mask}), out)


def test_tiny_bert_errors_say_why() -> None:
    encoder = tiny_bert()
    ids = torch.randint(0, 100, (2, 10))
    with pytest.raises(KeyError, match="no 'text_attention_mask'"):
        encoder({"text": ids})
    with pytest.raises(ValueError, match="max_length=10"):
        encoder({"text": torch.zeros(2, 11, dtype=torch.long), "text_attention_mask": torch.ones(2, 11)})
    with pytest.raises(ValueError, match="integer token ids"):
        encoder({"text": ids.float(), "text_attention_mask": torch.ones(2, 10)})


def test_tiny_bert_empty_batch_reaches_every_trainable_parameter() -> None:
    # HF BERT cannot run B = 0; the encoder routes the empty batch through every layer instead, so
    # every parameter still receives a gradient (Opacus needs a grad_sample for each).
    encoder = tiny_bert().train()
    out = encoder({"text": torch.zeros(0, 10, dtype=torch.long), "text_attention_mask": torch.zeros(0, 10)})
    assert out.shape == (0, 6)
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


@pytest.mark.parametrize("size", [8, 28])
def test_small_cnn_shapes(size: int) -> None:
    encoder = build_image_encoder(ImageEncoderConfig(in_channels=3, out_dim=5))
    assert encoder({"image": torch.randn(2, 3, size, size)}).shape == (2, 5)
    assert encoder({"image": torch.zeros(0, 3, size, size)}).shape == (0, 5)


def test_image_encoders_use_group_norm_never_batch_norm() -> None:
    for kind in ("small-cnn", "resnet18-gn"):
        encoder = build_image_encoder(ImageEncoderConfig(kind=kind))
        kinds = {type(m) for m in encoder.modules()}
        assert nn.GroupNorm in kinds
        assert not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds), kind


def test_resnet18_gn_adapts_input_channels_and_has_no_inplace_ops() -> None:
    encoder = build_image_encoder(ImageEncoderConfig(kind="resnet18-gn", in_channels=1, out_dim=7))
    assert encoder.backbone.conv1.in_channels == 1
    assert not any(getattr(m, "inplace", False) for m in encoder.modules())
    assert encoder({"image": torch.randn(2, 1, 28, 28)}).shape == (2, 7)


def test_image_channel_mismatch_says_why() -> None:
    encoder = build_image_encoder(ImageEncoderConfig(in_channels=1))
    with pytest.raises(ValueError, match="in_channels = 1"):
        encoder({"image": torch.randn(2, 3, 8, 8)})
