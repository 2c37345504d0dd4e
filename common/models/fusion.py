"""Fusion heads: how per-modality features become one prediction, with modalities missing per sample.

Each fusion kind has two parts (see :data:`FUSIONS`):

* a *per-modality branch* owned by that modality (``projections.<m>`` or ``late_heads.<m>`` in
  ``FusionModel``), applied to the encoder's feature;
* a shared *head* (``head``) that combines the stacked branch outputs (B, M, width) under the presence mask
  ``present`` (B, M), 1 = modality present for that sample.

==========  ===========================================================================================
concat      projection to ``hidden``, zeroed where missing; ``[h_1 .. h_M, present]`` -> MLP -> logits
attention   projection to ``hidden``; gated attention (Ilse et al., 2018) scores each modality, softmax
            over the present ones, weighted sum -> MLP -> logits; weights kept in ``last_attention_weights``
late        each modality its own classifier; logits mixed by a masked softmax of learnable per-modality
            log-weights, plus a shared bias (a sample with no modality gets just the bias)
==========  ===========================================================================================

All heads work for B = 0 and are DP-SGD compatible: per-sample gradients exist for every parameter
(``LateFusion`` registers its own Opacus grad sampler, checked against a slow reference in the tests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.models.config import FusionConfig

__all__ = [
    "FUSIONS",
    "ConcatFusion",
    "FusionKindSpec",
    "GatedAttentionFusion",
    "LateFusion",
    "masked_softmax",
]


def masked_softmax(scores: Tensor, present: Tensor) -> Tensor:
    """Softmax of ``scores`` (B, M) over the entries where ``present`` (B, M) > 0.

    Absent entries get weight exactly 0; a row with nothing present is all zeros (never NaN, also in the
    backward pass).
    """
    keep = present > 0
    lowest = torch.finfo(scores.dtype).min
    return torch.softmax(scores.masked_fill(~keep, lowest), dim=-1) * keep.to(scores.dtype)


def build_projection(in_dim: int, config: FusionConfig) -> nn.Module:
    """Per-modality projection of an encoder feature to the shared width ``hidden``."""
    return nn.Sequential(nn.Linear(in_dim, config.hidden), nn.GELU())


def build_late_classifier(in_dim: int, config: FusionConfig) -> nn.Module:
    """Per-modality classifier of late fusion: encoder feature -> ``num_classes`` logits."""
    return nn.Sequential(
        nn.Linear(in_dim, config.hidden),
        nn.GELU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden, config.num_classes),
    )


class ConcatFusion(nn.Module):
    """MLP over the concatenated projections (zeroed where missing) and the presence mask."""

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        num_modalities = len(config.modalities)
        self.mlp = nn.Sequential(
            nn.Linear(num_modalities * config.hidden + num_modalities, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, features: Tensor, present: Tensor) -> Tensor:
        """``features`` (B, M, hidden), zero where absent; ``present`` (B, M) -> logits (B, num_classes)."""
        return self.mlp(torch.cat([features.flatten(start_dim=1), present], dim=1))


class GatedAttentionFusion(nn.Module):
    """Gated attention pooling over modalities, then an MLP.

    score_m = w^T (tanh(V h_m) * sigmoid(U h_m)); a = masked softmax of the scores over present modalities;
    logits = MLP(sum_m a_m h_m). A sample with no modality pools to 0 and gets the MLP's output for 0.
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.attention_v = nn.Linear(config.hidden, config.hidden)
        self.attention_u = nn.Linear(config.hidden, config.hidden)
        self.attention_w = nn.Linear(config.hidden, 1)
        self.mlp = nn.Sequential(
            nn.Linear(config.hidden, config.hidden),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )
        self.last_attention_weights: Tensor | None = None

    def forward(self, features: Tensor, present: Tensor) -> Tensor:
        """``features`` (B, M, hidden); ``present`` (B, M) -> logits (B, num_classes)."""
        gate = torch.tanh(self.attention_v(features)) * torch.sigmoid(self.attention_u(features))
        weights = masked_softmax(self.attention_w(gate).squeeze(-1), present)
        self.last_attention_weights = weights.detach()
        return self.mlp((weights.unsqueeze(-1) * features).sum(dim=1))


class LateFusion(nn.Module):
    """Masked weighted mean of per-modality logits plus a shared bias.

    logits = sum_m w_m l_m + bias, with w = masked softmax of the learnable ``log_weights`` (M,) over the
    modalities present for the sample. Both parameters start at 0 (plain mean, no bias).
    """

    def __init__(self, config: FusionConfig) -> None:
        super().__init__()
        self.log_weights = nn.Parameter(torch.zeros(len(config.modalities)))
        self.bias = nn.Parameter(torch.zeros(config.num_classes))
        _register_late_fusion_grad_sampler()  # before any Opacus wrapper can meet this layer

    def mixing_weights(self, present: Tensor) -> Tensor:
        """(B, M) weight of each modality's logits for each sample; rows sum to 1, or 0 if none is present."""
        return masked_softmax(self.log_weights.to(present.dtype).expand_as(present), present)

    def forward(self, logits: Tensor, present: Tensor) -> Tensor:
        """``logits`` (B, M, num_classes) per modality; ``present`` (B, M) -> logits (B, num_classes)."""
        return (self.mixing_weights(present).unsqueeze(-1) * logits).sum(dim=1) + self.bias


def _register_late_fusion_grad_sampler() -> None:
    """Teach Opacus the rule below, once per process. Done when the first LateFusion is built (not at import):
    Opacus costs seconds to import, and a process that only evaluates attention or concat models never needs it."""
    from opacus.grad_sample import register_grad_sampler

    register_grad_sampler(LateFusion)(compute_late_fusion_grad_sample)  # a dict entry: repeating it is harmless


def compute_late_fusion_grad_sample(
    layer: LateFusion, activations: list[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Per-sample gradients of :class:`LateFusion` for Opacus (hooks mode).

    Opacus has no rule for bare parameters and its functorch fallback passes a layer only its first input,
    so the closed form is written out. For one sample with output gradient g (C,), weights w (M,) and
    per-modality logits l (M, C): d out_c / d bias_c' = [c = c'], and since dw_m / ds_k = w_m ([m = k] - w_k),
    d loss / d s_k = w_k * g . (l_k - sum_m w_m l_m).
    """
    logits, present = activations
    with torch.no_grad():
        weights = layer.mixing_weights(present)
        mixed = (weights.unsqueeze(-1) * logits).sum(dim=1, keepdim=True)
        log_weight_grad = weights * torch.einsum("bc,bmc->bm", backprops, logits - mixed)
    return {layer.log_weights: log_weight_grad, layer.bias: backprops}


@dataclass(frozen=True)
class FusionKindSpec:
    """How ``FusionModel`` assembles one fusion kind."""

    branch_attr: str  # attribute of FusionModel holding the per-modality branches ("projections" | "late_heads")
    build_branch: Callable[[int, FusionConfig], nn.Module]  # (encoder out_dim, config) -> per-modality branch
    branch_width: Callable[[FusionConfig], int]  # width of each branch's output
    build_head: Callable[[FusionConfig], nn.Module]  # config -> head taking (stacked branch outputs, present)


FUSIONS: dict[str, FusionKindSpec] = {
    "concat": FusionKindSpec("projections", build_projection, lambda c: c.hidden, ConcatFusion),
    "attention": FusionKindSpec("projections", build_projection, lambda c: c.hidden, GatedAttentionFusion),
    "late": FusionKindSpec("late_heads", build_late_classifier, lambda c: c.num_classes, LateFusion),
}
