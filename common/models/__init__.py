"""Encoders and fusion heads (plain torch, DP-SGD compatible, no Flower).

Read in this order: ``config`` (what can be set), ``tabular`` / ``text`` / ``image`` (one encoder family
each), ``fusion`` (how modalities are combined), ``model`` (``FusionModel``), ``params`` (which branch owns
which parameter; partial state in and out).
"""

from common.models.config import (
    MODALITIES,
    FusionConfig,
    ImageEncoderConfig,
    TabularEncoderConfig,
    TextEncoderConfig,
)
from common.models.model import FusionModel
from common.models.params import (
    BRANCHES,
    branch_of,
    freeze_branches,
    load_trainable,
    parameter_counts,
    trainable_state,
)
from common.models.text import TextFeaturizer, load_minilm

__all__ = [
    "BRANCHES",
    "MODALITIES",
    "FusionConfig",
    "FusionModel",
    "ImageEncoderConfig",
    "TabularEncoderConfig",
    "TextEncoderConfig",
    "TextFeaturizer",
    "branch_of",
    "freeze_branches",
    "load_minilm",
    "load_trainable",
    "parameter_counts",
    "trainable_state",
]
