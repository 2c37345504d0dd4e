"""Which Opacus grad-sample mode DP-SGD uses for a model: the fastest correct one, per encoder kind.

Opacus computes what DP-SGD clips in one of several modes (``PrivacyEngine.make_private(grad_sample_mode=...)``):
per-layer hooks with hand-written per-sample-gradient rules (``hooks``), the same hooks with ``torch.func``
(``functorch``), or fast gradient clipping (``ghost``: per-sample gradient norms without per-sample gradients, then a
second backward pass), and ours, ``fused`` (``common/models/fused_dp.py``: models whose trainable layers are
``nn.Linear``, ``nn.LayerNorm`` and ``nn.Embedding``; one backward pass, exact per-sample norms and clipped sums,
Opacus' optimizer for the noise). All give the same clipped, summed gradient; they differ in time and memory
(``benchmarks/dp_step.py``, BENCHMARKS.md). A model's mode is that of its most demanding trainable encoder
(:data:`PRECEDENCE`), unless its fusion head is one the mode cannot clip (:data:`FUSION_SUPPORT`); every mode is checked
against a slow per-sample reference in ``tests/common/models/test_grad_sample_modes.py`` (``fused`` also against ghost,
step for step, in ``test_fused_dp.py``).

``client/train.py`` passes the mode to ``make_private`` (of ``common/models/dp_optimizers.py``'s engine: Opacus'
own, without the ghost optimizer's deepcopy per step, plus ``fused``), after :func:`prepare_opacus`. Opacus is
imported only there.
"""

from __future__ import annotations

import functools
from typing import Literal

from common.models.config import FusionConfig

__all__ = ["FUSION_SUPPORT", "GRAD_SAMPLE_MODES", "GradSampleMode", "PRECEDENCE", "encoder_kinds", "grad_sample_mode",
           "prepare_opacus"]

GradSampleMode = Literal["hooks", "functorch", "ghost", "fused"]

GRAD_SAMPLE_MODES: dict[str, GradSampleMode] = {
    # encoder kind -> mode: the fastest in BENCHMARKS.md "DP-SGD step time per grad-sample mode", all checked correct
    # fused: every trainable layer an nn.Linear; one backward instead of ghost's hooks and second backward.
    # 2026-12-03, batch 32, 1 thread, machine loaded (4-6 on 2 cores): dp_step.py 5 x 20 steps, default model fused
    # 2.13x plain vs ghost 5.66x vs Opacus' own ghost 7.00x (pixel-projection 1.74x / 4.63x / 5.86x); one step of
    # each in turn, 1500 rounds, 10th percentiles: fused 1.52x, ghost 2.93x, Opacus' ghost 3.29x (1.49 / 2.81 / 3.13)
    "tabular": "fused",
    "minilm-frozen": "fused",  # the default model: the same small Linear layers after the cached embedding
    # BERT layers (Linear, LayerNorm, Embedding: fused_rules.py). 2026-12-03, dp_step.py --steps 10 --repeats 3
    # --warmup 2 --threads 1, batch 32, load 2.1-2.6 on 2 cores, one invocation per model: tiny-BERT fused 1.40x
    # plain vs ghost 2.49x vs hooks 5.06x (54 vs 97 vs 197 ms; peak 21 vs 19 vs 244 MB: no B copies of the
    # 30522-word table's gradient; again at load 1.6-1.8: 1.42x vs 2.35x vs 4.96x); MiniLM top layer fused 1.22x vs
    # ghost 1.80x vs hooks 2.05x (peak 119 vs 106 vs 295 MB). Checked against a per-sample reference and Opacus' ghost
    # in test_fused_dp.py and test_fused_rules.py
    "minilm-finetune-top": "fused",
    "tiny-bert": "fused",
    "small-cnn": "hooks",  # convolutions have no ghost norm in Opacus: ghost would add a second backward pass
    # convolutions have no ghost norm in Opacus 1.6: ghost computes their per-sample gradients AND runs a second
    # backward. Measured side by side (BENCHMARKS.md, 2026-12-02, 3 interleaved repeats): hooks 2.59x plain,
    # ghost 4.93x (an earlier single repeat: 2.64x vs 10.5x); hooks peaks at 2.4x ghost's memory (1.47 vs 0.62 GB)
    "resnet18-gn": "hooks",
    "pixel-projection": "fused",  # no trainable encoder parameter: only the fusion's Linear layers, as minilm-frozen
}

FUSION_SUPPORT: dict[str, tuple[frozenset[str], GradSampleMode]] = {
    # mode -> (the fusions whose heads it can clip, the mode a model of any other fusion takes instead)
    "fused": (frozenset({"concat", "attention"}), "ghost"),  # late fusion mixes by bare parameters, not nn.Linear
}

PRECEDENCE: tuple[str, ...] = (
    # most demanding first: a model holding several trainable encoders takes the mode of the first one here
    "resnet18-gn", "tiny-bert", "minilm-finetune-top", "small-cnn", "pixel-projection", "minilm-frozen", "tabular",
)


def encoder_kinds(config: FusionConfig) -> tuple[str, ...]:
    """The encoder kinds of ``config`` (``"tabular"``, the text kind, the image kind), in modality order."""
    return tuple(m if m == "tabular" else getattr(config, m).kind for m in config.modalities)


def grad_sample_mode(config: FusionConfig) -> GradSampleMode:
    """The grad-sample mode DP-SGD uses for a model built from ``config``."""
    kinds = encoder_kinds(config)
    for kind in PRECEDENCE:
        if kind in kinds:
            mode = GRAD_SAMPLE_MODES[kind]
            fusions, otherwise = FUSION_SUPPORT.get(mode, (frozenset({config.fusion}), mode))
            return mode if config.fusion in fusions else otherwise
    raise KeyError(f"no grad-sample mode registered for encoders {kinds}: add them to GRAD_SAMPLE_MODES and "
                   "PRECEDENCE in common/models/grad_sample.py (and measure with benchmarks/dp_step.py)")



@functools.cache
def prepare_opacus() -> None:
    """Make Opacus' ghost clipping survive an empty Poisson batch in ``nn.Embedding`` (once per process).

    Opacus 1.6's ghost norm of an embedding reshapes the batch's token ids with ``reshape(B, -1)``, which fails
    for B = 0, and Poisson sampling does draw empty batches (the step must still run: noise only, accounted).
    Through Opacus' public ``register_norm_sampler`` this puts a wrapper in front of that norm: for an empty
    batch it returns the empty vector of per-sample norms, otherwise it calls Opacus' own.
    """
    import torch
    from opacus.grad_sample import register_norm_sampler
    from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleHooksFastGradientClipping

    opacus_norm = GradSampleHooksFastGradientClipping.NORM_SAMPLERS[torch.nn.Embedding]

    @register_norm_sampler(torch.nn.Embedding)
    def embedding_norm_sample(layer, activations, backprops):  # noqa: ANN001, ANN202 - Opacus' signature
        if activations[0].numel() == 0:
            return {layer.weight: torch.zeros(0, device=layer.weight.device, dtype=layer.weight.dtype)}
        return opacus_norm(layer, activations, backprops)
