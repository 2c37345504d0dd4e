"""How DP-SGD's per-sample clipping budget C is shared among the model's branches.

``flat`` (Opacus' default) clips each sample's gradient over ALL trainable parameters together to norm C. In the
default fusion model the shared head holds ~99.5% of a sample's squared gradient norm (BENCHMARKS.md "Every
modality under DP"), so whenever a sample is clipped the text and image branches are scaled down with the head and
their signal drowns in the noise DP-SGD adds to every coordinate.

``per-modality`` gives every trainable branch (each modality a site trains, and the shared head) its own share of
C: C_g = C / sqrt(G) for the G trainable branches, so that sqrt(sum_g C_g^2) = C. The idea is modality-aware
clipping (MDPFL, IEEE TIFS 2025, which reports +10% accuracy from it). It is realised with Opacus' own per-layer
clipping (``make_private(clipping="per_layer", max_grad_norm=[C_t ...])``): each tensor t of branch g is clipped
to C_t = C_g sqrt(d_t / d_g) (its share of the branch's budget by size), so sqrt(sum_t C_t^2) = C. Opacus'
``DPPerLayerOptimizer`` adds noise of std sigma * ||(C_t)||_2 = sigma C to every coordinate: the sensitivity of the
clipped sum is still C, the noise multiplier the accountant records is still sigma, and ε is unchanged. Only the
split of the budget changes, which depends on the model's architecture (public), never on data.

Opacus 1.6 supports per-layer clipping only in its hook-based grad-sample modes (not ``ghost``):
:data:`CLIPPINGS` says which mode each clipping needs (``common/models/grad_sample.py`` for the rest).
Plain torch: no Opacus import here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import nn

from common.models.params import branch_of

__all__ = ["CLIPPINGS", "ClippingSpec", "branch_budgets", "tensor_budgets"]


@dataclass(frozen=True)
class ClippingSpec:
    """One clipping scheme: Opacus' ``clipping`` argument and the grad-sample mode it needs (None = any)."""

    opacus_clipping: str  # "flat" | "per_layer"
    required_mode: str | None  # grad-sample mode this scheme needs; None = the model's registered one


CLIPPINGS: dict[str, ClippingSpec] = {
    "flat": ClippingSpec("flat", None),
    "per-modality": ClippingSpec("per_layer", "hooks"),  # Opacus 1.6: per_layer + ghost raises ValueError
}


def branch_budgets(branches: Iterable[str], max_grad_norm: float) -> dict[str, float]:
    """C_g = C / sqrt(G) for each of the G distinct ``branches`` (so that sqrt(sum_g C_g^2) = C)."""
    distinct = sorted(set(branches))
    if not distinct:
        raise ValueError("no trainable branch: per-modality clipping needs at least one trainable parameter")
    if not (max_grad_norm > 0 and math.isfinite(max_grad_norm)):
        raise ValueError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    share = max_grad_norm / math.sqrt(len(distinct))
    return dict.fromkeys(distinct, share)


def tensor_budgets(named_params: Iterable[tuple[str, nn.Parameter]], max_grad_norm: float) -> list[float]:
    """Per-tensor clipping norms C_t, in the order of ``named_params`` (the trainable ones, as the optimizer holds).

    Tensor t of branch g (``common.models.params.branch_of``) gets C_g sqrt(d_t / d_g), with C_g from
    :func:`branch_budgets` and d the number of entries; sqrt(sum_t C_t^2) = C up to rounding.
    """
    named = [(name, p.numel()) for name, p in named_params]
    owners = [branch_of(name) for name, _ in named]
    budgets = branch_budgets(owners, max_grad_norm)
    sizes: dict[str, int] = {}
    for owner, (_, d) in zip(owners, named, strict=True):
        sizes[owner] = sizes.get(owner, 0) + d
    return [budgets[owner] * math.sqrt(d / sizes[owner]) for owner, (_, d) in zip(owners, named, strict=True)]
