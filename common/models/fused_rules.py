"""Per-layer rules of the fused grad-sample mode: exact per-sample squared norms and clipped sums, by layer type.

``common/models/fused_dp.py`` captures each trainable layer's input and output in the forward pass and gets the
output gradients ``g`` (per sample, summed over the batch's loss) from ONE ``torch.autograd.grad``. A rule turns one
layer's ``(input, g)`` into a :class:`Part`: the (B,) squared norms of the per-sample gradients of the layer's
trainable tensors, and a function of Opacus' clip factors ``coef`` (B,) returning the clipped sums
``sum_i coef_i grad_i`` of its weight and bias. :data:`RULES` maps the exact layer type to its rule (a subclass,
whose ``forward`` may differ, is not matched); :data:`REFUSALS` names layer options a rule cannot honour.

* ``nn.Linear``: on (B, d) inputs ``||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2``; on (B, T, d) inputs either the token
  grams ``<a_i a_i^T, g_i g_i^T>`` (Opacus' ``compute_linear_norm_sample``) or the per-sample gradients
  ``g_i^T a_i`` themselves, whichever takes fewer multiplications (T (in + out) against in x out: tiny-BERT's
  64 tokens of width 32 take the per-sample gradients, MiniLM's 384-wide layer the grams). Measured norms + clipped
  sum, B = 32, T = 64, one thread, one process, 2026-12-03, load 2.1: 32 -> 32 per-sample 0.06 ms vs grams 0.29 ms;
  32 -> 64 0.12 vs 0.43; 384 -> 384 12.6 vs 9.0 (the count picked the faster one each time).
* ``nn.LayerNorm`` (elementwise affine): per-sample weight gradient ``sum_t g_it * x_hat_it`` with ``x_hat`` the
  normalised input, recomputed from the captured input with the layer's ``eps``; bias gradient ``sum_t g_it``. Both
  are (B, d): formed, then squared and summed.
* ``nn.Embedding``: the per-sample gradient of the table is ``sum_t g_it e_{id_it}^T``, so its squared norm is
  ``sum_{t,s: id_it = id_is} g_it . g_is`` (the same number as Opacus' ghost norm, ``embedding_norm_sample.py``, which
  sums the gradients of equal ids per sample), here by one (B, T, T) gram masked by id equality: no sort, no
  ``torch.unique`` (tiny-BERT's 30522 x 32 table, B = 32, T = 64: 0.27 ms against 0.87 ms for Opacus'
  ``compute_embedding_norm_sample`` on the same, padding-masked, gradients, which gave the same norms). Tokens of
  ``padding_idx`` get no gradient (as torch's own embedding backward): their ``g`` is zeroed first, so their row's
  clipped sum is exactly 0 and they add nothing to the norm. (Opacus 1.6's ghost norm counts them; inside BERT their
  ``g`` is 0 anyway, the attention mask and the masked pooling ignore them.) The clipped sum is one ``index_add_`` of
  ``coef_i g_it`` into the rows of the ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Part", "REFUSALS", "RULES", "Spec", "refusal"]

ClippedSums = Callable[[Tensor], tuple[Tensor | None, Tensor | None]]  # coef (B,) -> (weight sum, bias sum)


@dataclass(frozen=True, slots=True)
class Spec:
    """A layer with a rule and its trainable tensors (None: frozen or absent), read once when wrapped."""

    layer: nn.Module
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    @classmethod
    def of(cls, layer: nn.Module) -> Spec:
        weight, bias = getattr(layer, "weight", None), getattr(layer, "bias", None)
        return cls(layer, weight if weight is not None and weight.requires_grad else None,
                   bias if bias is not None and bias.requires_grad else None)


@dataclass(frozen=True, slots=True)
class Part:
    """One layer's share of a batch: the per-sample squared norms of its trainable tensors, and their clipped sums."""

    squared: Tensor  # (B,)
    clipped_sums: ClippedSums


def _linear(spec: Spec, a: Tensor, g: Tensor) -> Part:
    a = a if a.dtype == g.dtype else a.to(g.dtype)
    has_weight, has_bias = spec.weight is not None, spec.bias is not None
    if g.dim() == 2:  # the weight gradient g_i a_i^T has norm ||g_i|| ||a_i||
        gg = torch.linalg.vecdot(g, g)
        if not has_weight:
            return Part(gg, lambda coef: (None, torch.mv(g.t(), coef)))
        aa = torch.linalg.vecdot(a, a)
        return Part(gg * (aa + 1.0) if has_bias else gg * aa,  # sum_i c_i g_i a_i^T = g^T (c * a)
                    lambda coef: (torch.mm(g.t(), a * coef.unsqueeze(1)), torch.mv(g.t(), coef) if has_bias else None))
    a, g = a.flatten(1, -2), g.flatten(1, -2)  # (B, T, d)
    summed = g.sum(dim=1)
    squared = torch.linalg.vecdot(summed, summed) if has_bias else g.new_zeros(g.shape[0])

    def bias_sum(coef: Tensor) -> Tensor | None:
        return torch.mv(summed.t(), coef) if has_bias else None

    if not has_weight:
        return Part(squared, lambda coef: (None, bias_sum(coef)))
    tokens, d_in, d_out = a.shape[1], a.shape[2], g.shape[2]
    if tokens * (d_in + d_out) > d_in * d_out:  # the per-sample gradients g_i^T a_i take fewer multiplications
        per_sample = torch.bmm(g.transpose(1, 2), a)  # (B, out, in)
        flat = per_sample.flatten(1)
        return Part(squared + torch.linalg.vecdot(flat, flat),
                    lambda coef: (torch.mv(flat.t(), coef).view(d_out, d_in), bias_sum(coef)))
    # sum_{t,s} (g_t . g_s)(a_t . a_s), as Opacus' compute_linear_norm_sample
    gram = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum(dim=(1, 2)).clamp(min=0)
    return Part(squared + gram,
                lambda coef: ((g * coef[:, None, None]).flatten(0, 1).t() @ a.flatten(0, 1), bias_sum(coef)))


def _layer_norm(spec: Spec, x: Tensor, g: Tensor) -> Part:
    layer: nn.LayerNorm = spec.layer
    x = x if x.dtype == g.dtype else x.to(g.dtype)
    batch, width = x.shape[0], math.prod(layer.normalized_shape)
    tokens = math.prod(x.shape[1:x.dim() - len(layer.normalized_shape)])  # 1 for (B, d) inputs
    g = g.reshape(batch, tokens, width)
    squared = g.new_zeros(batch)
    per_weight = per_bias = None
    if spec.weight is not None:  # sum_t g_t * x_hat_t
        x_hat = F.layer_norm(x, layer.normalized_shape, eps=layer.eps).reshape(batch, tokens, width)
        per_weight = (g * x_hat).sum(dim=1)
        squared = squared + torch.linalg.vecdot(per_weight, per_weight)
    if spec.bias is not None:
        per_bias = g.sum(dim=1)
        squared = squared + torch.linalg.vecdot(per_bias, per_bias)

    def sums(coef: Tensor) -> tuple[Tensor | None, Tensor | None]:
        weight = None if per_weight is None else torch.mv(per_weight.t(), coef).reshape(layer.normalized_shape)
        return weight, None if per_bias is None else torch.mv(per_bias.t(), coef).reshape(layer.normalized_shape)

    return Part(squared, sums)


def _embedding(spec: Spec, ids: Tensor, g: Tensor) -> Part:
    layer: nn.Embedding = spec.layer
    batch = ids.shape[0]
    ids = ids.reshape(batch, math.prod(ids.shape[1:]))  # (B, T); a (B,) input is one token per sample
    g = g.reshape(*ids.shape, layer.embedding_dim)
    if layer.padding_idx is not None:  # torch's backward gives the padding row no gradient
        g = g.masked_fill((ids == layer.padding_idx).unsqueeze(-1), 0.0)
    same = ids.unsqueeze(2) == ids.unsqueeze(1)  # (B, T, T): tokens t, s of one sample share an id
    squared = (torch.bmm(g, g.transpose(1, 2)) * same).sum(dim=(1, 2)).clamp(min=0)

    def sums(coef: Tensor) -> tuple[Tensor, None]:
        rows = torch.zeros(layer.num_embeddings, layer.embedding_dim, dtype=g.dtype, device=g.device)
        return rows.index_add_(0, ids.flatten(), (g * coef[:, None, None]).flatten(0, 1)), None

    return Part(squared, sums)


#: exact layer type -> its rule (spec, captured input, output gradient) -> Part
RULES: dict[type[nn.Module], Callable[[Spec, Tensor, Tensor], Part]] = {
    nn.Linear: _linear,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
}

#: exact layer type -> (option, whether the layer uses it, why the fused rule cannot honour it)
REFUSALS: dict[type[nn.Module], tuple[tuple[str, Callable[[nn.Module], bool], str], ...]] = {
    nn.Embedding: (
        ("max_norm", lambda m: m.max_norm is not None,
         "its forward renormalises the looked-up rows of the weight in place, which the rule's gradient ignores"),
        ("scale_grad_by_freq", lambda m: m.scale_grad_by_freq,
         "it scales a row's gradient by the id's count in the whole batch, so one sample's gradient depends on the "
         "others and per-sample clipping would not bound it"),
        ("sparse", lambda m: m.sparse, "the fused mode leaves dense clipped sums in p.grad, not sparse gradients"),
    ),
}


def refusal(name: str, layer: nn.Module) -> str | None:
    """Why the fused rule cannot clip ``layer`` (named ``name``), or None if it can."""
    for option, used, why in REFUSALS.get(type(layer), ()):
        if used(layer):
            return (f"{name} ({layer}) sets {option}: {why}; use grad_sample_mode='ghost' or 'hooks' for this model, "
                    f"or build the {type(layer).__name__} without {option}")
    return None
