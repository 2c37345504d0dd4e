"""Which Opacus grad-sample mode DP-SGD uses for a model: the fastest correct one, per encoder kind.

Opacus computes what DP-SGD clips in one of several modes (``PrivacyEngine.make_private(grad_sample_mode=...)``):
per-layer hooks with hand-written per-sample-gradient rules (``hooks``), the same hooks with ``torch.func``
(``functorch``), or fast gradient clipping (``ghost``: per-sample gradient norms without per-sample gradients, then
a second backward pass). All give the same clipped, summed gradient; they differ in time and memory
(``benchmarks/dp_step.py``, BENCHMARKS.md). A model's mode is that of its most demanding trainable encoder
(:data:`PRECEDENCE`); every mode is checked against a slow per-sample reference in
``tests/common/models/test_grad_sample_modes.py``.

Plain data, no Opacus import: ``client/train.py`` passes the mode to ``make_private``.
"""

from __future__ import annotations

from typing import Literal

from common.models.config import FusionConfig

__all__ = ["GRAD_SAMPLE_MODES", "GradSampleMode", "PRECEDENCE", "encoder_kinds", "grad_sample_mode"]

GradSampleMode = Literal["hooks", "functorch", "ghost"]

GRAD_SAMPLE_MODES: dict[str, GradSampleMode] = {
    # encoder kind -> mode (BENCHMARKS.md "DP-SGD step time": the fastest in that table, checked correct)
    "tabular": "hooks",
    "minilm-frozen": "hooks",
    "minilm-finetune-top": "hooks",
    "tiny-bert": "hooks",
    "small-cnn": "hooks",
    "resnet18-gn": "hooks",
}

PRECEDENCE: tuple[str, ...] = (
    # most demanding first: a model holding several trainable encoders takes the mode of the first one here
    "resnet18-gn", "tiny-bert", "minilm-finetune-top", "small-cnn", "minilm-frozen", "tabular",
)


def encoder_kinds(config: FusionConfig) -> tuple[str, ...]:
    """The encoder kinds of ``config`` (``"tabular"``, the text kind, the image kind), in modality order."""
    return tuple(m if m == "tabular" else getattr(config, m).kind for m in config.modalities)


def grad_sample_mode(config: FusionConfig) -> GradSampleMode:
    """The grad-sample mode DP-SGD uses for a model built from ``config``."""
    kinds = encoder_kinds(config)
    for kind in PRECEDENCE:
        if kind in kinds:
            return GRAD_SAMPLE_MODES[kind]
    raise KeyError(f"no grad-sample mode registered for encoders {kinds}: add them to GRAD_SAMPLE_MODES and "
                   "PRECEDENCE in common/models/grad_sample.py (and measure with benchmarks/dp_step.py)")

