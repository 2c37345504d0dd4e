"""Builders: run settings + scenario -> the global fusion model, its input widths taken from the schema alone.

The server and every site build the same model from the same settings and the scenario's schema, so this is the
one place that maps :class:`common.config.ModelSettings` and the schema onto :class:`common.models.config.FusionConfig`.
No data is read: the tabular width is the schema's tabular columns (one-hot vocabularies included), the number of
classes its label's classes, the image channels what its image feature declares.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from common.config import ModelSettings, Scenario
from common.data.features import label_classes, tabular_width
from common.data.schema import Schema, load_schema
from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig

__all__ = ["text_config", "fusion_config", "build_model", "initial_trainable_state", "scenario_schema"]


def text_config(kind: str, *, public_projection: int = 0) -> TextEncoderConfig:
    return TextEncoderConfig(kind=kind, public_projection=public_projection)


@functools.lru_cache(maxsize=16)
def _schema(path: Path, mtime_ns: int) -> Schema:
    return load_schema(path)


def scenario_schema(scenario: Scenario) -> Schema:
    """The federation's schema (the scenario's ``[scenario] schema``), read once per file version."""
    return _schema(scenario.schema, scenario.schema.stat().st_mtime_ns)


def _image_channels(schema: Schema) -> int:
    image = next((f for f in schema.features if f.role == "feature" and f.type == "image"), None)
    if image is None or image.channels is None:
        raise ValueError(f"the scenario's sites hold images but schema '{schema.name}' ({schema.path}) declares no "
                         "image feature (type = 'image' with size and channels)")
    return image.channels


def _projection(model: ModelSettings) -> int:
    """``text-projection`` applies to the frozen MiniLM embedding only: the fine-tuned encoders learn their output."""
    return model.text_projection if model.text_encoder == "minilm-frozen" else 0


def fusion_config(model: ModelSettings, *, scenario: Scenario) -> FusionConfig:
    """The model's config: modalities from the scenario, every width from its schema."""
    schema = scenario_schema(scenario)
    mods = scenario.modalities
    return FusionConfig(
        modalities=mods, fusion=model.fusion, hidden=model.hidden_dim, num_classes=len(label_classes(schema)),
        tabular=TabularEncoderConfig(in_features=tabular_width(schema)) if "tabular" in mods else None,
        text=text_config(model.text_encoder, public_projection=_projection(model)) if "text" in mods else None,
        image=ImageEncoderConfig(kind=model.image_encoder, in_channels=_image_channels(schema))
        if "image" in mods else None,
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
