"""Builders: run settings + scenario -> the global fusion model.

The server and every site build the same model from the same settings, so this is the one
place that maps :class:`common.config.ModelSettings` onto :class:`common.models.config.FusionConfig`.
"""

from __future__ import annotations

import torch

from common.config import ModelSettings, Scenario
from common.data.sources import get_source
from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig

__all__ = ["text_config", "fusion_config", "build_model", "initial_trainable_state"]


def text_config(kind: str) -> TextEncoderConfig:
    return TextEncoderConfig(kind=kind)


def fusion_config(model: ModelSettings, *, scenario: Scenario) -> FusionConfig:
    sources = {s.source for s in scenario.sites}
    widths = {len(get_source(src).tabular_features) for src in sources}
    if len(widths) != 1:
        raise ValueError(f"scenario {scenario.name!r}: sites' sources {sorted(sources)} disagree on the tabular "
                         "schema; map them onto one federation schema first")
    mods = scenario.modalities
    return FusionConfig(
        modalities=mods, fusion=model.fusion, hidden=model.hidden_dim,
        tabular=TabularEncoderConfig(in_features=widths.pop()) if "tabular" in mods else None,
        text=text_config(model.text_encoder) if "text" in mods else None,
        image=ImageEncoderConfig(kind=model.image_encoder) if "image" in mods else None,
    )


def build_model(model: ModelSettings, *, scenario: Scenario, seed: int) -> torch.nn.Module:
    """The global model, initialised identically (seeded) on the server and at every site."""
    from common.models.model import FusionModel

    torch.manual_seed(seed)
    return FusionModel(fusion_config(model, scenario=scenario))


def initial_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable tensor of every branch (what the server sends in round 1)."""
    from common.models.params import trainable_state

    branches = (*model.config.modalities, "head")
    return {k: v.detach().cpu().contiguous() for k, v in trainable_state(model, branches=branches).items()}
