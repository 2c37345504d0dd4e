"""Shared builders for the model tests: small configs, random batches in the documented input format, and placeholder
rows for ``make_private``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor
from torch.utils.data import Dataset

from common.models import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig
from common.models.text import MINILM_DIM

torch.set_num_threads(1)  # 2 shared cores on the dev machine

NUM_FEATURES = 7
TEXT_LENGTH = 12
IMAGE_SIZE = 12

Batch = tuple[dict[str, Tensor], Tensor]


def small_config(
    fusion: str = "concat",
    *,
    modalities: tuple[str, ...] = ("tabular", "text", "image"),
    text_kind: str = "tiny-bert",
    dropout: float = 0.0,
) -> FusionConfig:
    """A fast FusionConfig (tiny widths); dropout 0 by default so outputs are deterministic."""
    sub_configs = {
        "tabular": TabularEncoderConfig(in_features=NUM_FEATURES, hidden=16, out_dim=8, dropout=dropout),
        "text": TextEncoderConfig(
            kind=text_kind, out_dim=8, max_length=TEXT_LENGTH, tiny_hidden=8, tiny_layers=1, tiny_heads=2,
            tiny_intermediate=16, dropout=dropout,
        ),
        "image": ImageEncoderConfig(out_dim=8, cnn_channels=(4, 8), norm_groups=2, dropout=dropout),
    }
    return FusionConfig(
        modalities=modalities,
        fusion=fusion,
        hidden=8,
        num_classes=3,
        dropout=dropout,
        **{m: sub_configs[m] for m in modalities},
    )


class Rows(Dataset):
    """``n`` placeholder rows for ``make_private``'s data loader: it takes the sample rate from the loader's length
    and batch size; the tests never iterate it (they feed their own batches)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        return torch.zeros(1)


def random_batch(config: FusionConfig, batch: int, *, seed: int = 0, present: Tensor | None = None) -> Batch:
    """Random inputs for every modality of ``config`` and a modality mask (random unless ``present``)."""
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, Tensor] = {}
    if config.tabular is not None:
        inputs["tabular"] = torch.randn(batch, NUM_FEATURES, generator=generator)
        inputs["tabular_mask"] = (torch.rand(batch, NUM_FEATURES, generator=generator) > 0.3).float()
    if config.text is not None:
        if config.text.kind == "minilm-frozen":
            inputs["text"] = torch.nn.functional.normalize(torch.randn(batch, MINILM_DIM, generator=generator), dim=-1)
        else:
            lengths = torch.randint(2, TEXT_LENGTH + 1, (batch, 1), generator=generator)
            attention = (torch.arange(TEXT_LENGTH).expand(batch, TEXT_LENGTH) < lengths).long()
            if config.text.kind == "tiny-bert":
                inputs["text"] = torch.randint(1000, 30000, (batch, TEXT_LENGTH), generator=generator) * attention
            else:
                inputs["text"] = torch.randn(batch, TEXT_LENGTH, MINILM_DIM, generator=generator)
            inputs["text_attention_mask"] = attention
    if config.image is not None:
        inputs["image"] = torch.randn(batch, config.image.in_channels, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if present is None:
        present = (torch.rand(batch, len(config.modalities), generator=generator) > 0.3).float()
    return inputs, present


@pytest.fixture(scope="session")
def make_config() -> Callable[..., FusionConfig]:
    return small_config


@pytest.fixture(scope="session")
def make_batch() -> Callable[..., Batch]:
    return random_batch


def make_private_sgd(engine, model: torch.nn.Module, mode: str, *, clip: float, noise: float, rows: int = 8,
                     batch: int = 8, generator: torch.Generator | None = None):
    """``engine.make_private`` of SGD (momentum 0.9) over ``model``'s trainable tensors, fixed batches of ``batch``
    rows, cross-entropy; returns ``(module, optimizer, criterion)`` (ghost and fused modes return a criterion)."""
    from torch.utils.data import DataLoader

    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5, momentum=0.9)
    made = engine.make_private(
        module=model, optimizer=opt, data_loader=DataLoader(Rows(rows), batch_size=batch), noise_multiplier=noise,
        max_grad_norm=clip, poisson_sampling=False, grad_sample_mode=mode, criterion=torch.nn.CrossEntropyLoss(),
        noise_generator=generator)
    assert len(made) == 4  # module, optimizer, criterion, loader
    return made[0], made[1], made[2]
