"""Fused DP-SGD clipping for models whose trainable layers are all ``nn.Linear``: one forward, one backward.

Opacus' ghost clipping (``grad_sample_mode="ghost"``) gets the per-sample gradient norms from per-module full
backward hooks, then runs a second backward pass of the clip-weighted loss. For a small model (the default one:
18,915 trainable parameters, 9 ``nn.Linear``) that fixed machinery is most of a DP step (BENCHMARKS.md "DP-SGD step /
plain step"). Where every trainable tensor is the weight or bias of an ``nn.Linear``, the same clipped sum needs
much less:

1. forward, capturing each trainable Linear's input ``a`` and output (a forward hook);
2. ONE backward, ``torch.autograd.grad`` of the summed per-sample losses with respect to those outputs only: the
   per-sample output gradients ``g`` (the parameters' own gradients are never formed);
3. per-sample squared norms, exact: a Linear on (B, d) inputs has ``||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2`` and its
   bias ``||g_i||^2``; on (B, T, d) inputs ``<a_i a_i^T, g_i g_i^T>`` and ``||sum_t g_it||^2`` (Opacus'
   ``compute_linear_norm_sample``);
4. Opacus' clip factor ``(C / (norm_i + 1e-6)).clamp(max=1)`` (``get_clipping_coef``), then each layer's clipped
   sum ``sum_i c_i g_i a_i^T`` by one matmul, left in ``p.grad``, where ghost clipping's second backward leaves it.

Noise, scaling by the expected batch size and the accountant's step are NOT done here: the DP optimizer does them,
the ghost-clipping optimizer Opacus builds (re-labelled by ``common/models/dp_optimizers.py``: the same bits), with
the same generator, the same draws in the same order, the same sample rate. An empty Poisson batch (B = 0) leaves zero
gradients, so the optimizer's step is noise only, as in every Opacus mode.

A model with any other trainable parameter (convolutions, embeddings, norms, bare parameters such as late fusion's
weights, ``nn.Linear`` subclasses used outside their ``forward``) is refused when wrapped, naming the tensors:
use ``ghost`` or ``hooks`` for it (``common/models/grad_sample.py``). Like Opacus' hooks, this assumes a Linear's
parameters reach the loss only through that Linear's ``forward``; a Linear called twice in one forward pass, or
two Linear layers sharing a tensor (parameter tying), are refused, and so is a backward pass after a forward pass
that captured nothing (eval mode: the step would silently be noise only).

Where the time goes (default model, batch 32, one thread, 2026-12-03, one process, medians of 280 interleaved steps,
load 2.8 on 2 cores): plain 1.84 ms = forward 0.88 + backward 0.74 + step 0.16 (+ zero_grad); ghost 5.31 ms =
1.39 + 3.28 + 0.55; fused 2.83 ms = 1.06 + 1.15 + 0.52. In a quieter separate run, fused's backward was
``autograd.grad`` to the 9 outputs 0.33 ms plus the norms and clipped sums ~0.3 ms, and its DP step 0.21 ms, of which
the 18 noise draws (one per tensor, as Opacus) 0.09 ms.

Checked against Opacus' ghost clipping and a slow per-sample reference in
``tests/common/models/test_fused_dp.py``. Imports Opacus: import this module only where DP training runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from torch import Tensor, nn

__all__ = ["FUSED", "FusedDPCriterion", "FusedDPLoss", "FusedLinearGradSampleModule", "unsupported_parameters"]

FUSED = "fused"  #: the grad-sample mode name (``common/models/grad_sample.py``, ``dp_optimizers.PrivacyEngine``)


@dataclass(frozen=True, slots=True)
class _LinearSpec:
    """A trainable ``nn.Linear`` and its trainable tensors (None: frozen or absent), read once when wrapped."""

    layer: nn.Linear
    weight: nn.Parameter | None
    bias: nn.Parameter | None

    @classmethod
    def of(cls, layer: nn.Linear) -> _LinearSpec:
        bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
        return cls(layer, layer.weight if layer.weight.requires_grad else None, bias)


def unsupported_parameters(module: nn.Module) -> list[str]:
    """Names of ``module``'s trainable parameters that are not the weight or bias of an ``nn.Linear`` (exact type)."""
    linear = {id(p) for m in module.modules() if type(m) is nn.Linear for p in m.parameters(recurse=False)}
    return [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in linear]


class FusedLinearGradSampleModule(AbstractGradSampleModule):
    """Opacus' ``GradSampleModule`` interface over an all-``nn.Linear`` model: clipped sums in one backward.

    Parameters
    ----------
    m
        The model; each trainable tensor must be an ``nn.Linear``'s weight or bias.
    max_grad_norm
        C of flat clipping (one number: per-layer clipping needs Opacus' hooks mode).
    loss_reduction
        ``"mean"`` or ``"sum"``, as the optimizer and criterion use it (the clipped sum is the same for both; the
        optimizer divides by the expected batch size for ``"mean"``).
    """

    def __init__(self, m: nn.Module, *, max_grad_norm: float, batch_first: bool = True,
                 loss_reduction: str = "mean") -> None:
        unsupported = unsupported_parameters(m)
        if unsupported:
            raise NotImplementedError(
                f"grad_sample_mode='fused' computes per-sample norms only for nn.Linear layers, but these trainable "
                f"parameters belong to other layers: {unsupported[:6]}{' ...' if len(unsupported) > 6 else ''}; "
                "use grad_sample_mode='ghost' or 'hooks' for this model (common/models/grad_sample.py)")
        if not isinstance(max_grad_norm, (int, float)) or isinstance(max_grad_norm, bool):
            raise ValueError(f"grad_sample_mode='fused' clips flat, with one max_grad_norm; got {max_grad_norm!r} "
                             "(per-layer clipping needs grad_sample_mode='hooks')")
        if not batch_first:
            raise NotImplementedError("grad_sample_mode='fused' needs batch_first=True: the batch is dimension 0")
        if loss_reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}")
        super().__init__(m, batch_first=batch_first, loss_reduction=loss_reduction)
        self.max_grad_norm = float(max_grad_norm)
        self.per_sample_gradient_norms: Tensor | None = None  # of the last backward, as Opacus' ghost module keeps
        specs = [_LinearSpec.of(layer) for layer in m.modules() if type(layer) is nn.Linear]
        self._specs = [spec for spec in specs if spec.weight is not None or spec.bias is not None]
        owned = [id(p) for spec in self._specs for p in (spec.weight, spec.bias) if p is not None]
        if len(owned) != len(set(owned)):
            raise NotImplementedError("two nn.Linear layers share a trainable tensor (parameter tying): its per-sample "
                                      "norm is not the sum of the layers' own; use grad_sample_mode='hooks'")
        self._captured: dict[nn.Linear, tuple[Tensor, Tensor]] = {}
        self._accumulation_forbidden = False
        self._handles = [spec.layer.register_forward_hook(self._capture) for spec in self._specs]

    def _capture(self, layer: nn.Linear, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (layer.training and torch.is_grad_enabled()):
            return
        if layer in self._captured:
            raise NotImplementedError(
                f"an nn.Linear ({layer}) ran twice in one forward pass: its per-sample gradient would be a sum over "
                "the calls, which grad_sample_mode='fused' does not compute (parameter tying); use 'hooks'")
        self._captured[layer] = (inputs[0].detach(), output)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._captured = {}

    def forbid_grad_accumulation(self) -> None:
        self._accumulation_forbidden = True

    def allow_grad_accumulation(self) -> None:
        self._accumulation_forbidden = False

    def zero_grad(self, set_to_none: bool = False) -> None:
        self._captured = {}  # a forward pass whose loss never went backward leaves nothing behind
        super().zero_grad(set_to_none)

    def clipped_backward(self, loss_per_sample: Tensor) -> None:
        """Leave in each trainable ``p.grad`` the sum over samples of their gradients, each clipped to C."""
        captured, self._captured = self._captured, {}
        if loss_per_sample.dim() != 1:
            raise ValueError(f"the per-sample loss must have shape (B,), got {tuple(loss_per_sample.shape)}: one "
                             "loss per sample is what DP-SGD clips")
        if not captured and loss_per_sample.shape[0] > 0:
            raise ValueError("no trainable nn.Linear ran in training mode with gradients enabled since the last "
                             "backward: the clipped gradient would be 0 and the step noise only (call model.train())")
        ran = [spec for spec in self._specs if spec.layer in captured]
        outputs = [captured[spec.layer][1] for spec in ran]
        grads = torch.autograd.grad(loss_per_sample.sum(), outputs, allow_unused=True) if outputs else ()
        squared = loss_per_sample.new_zeros(loss_per_sample.shape[0])
        parts: list[_Part] = []
        for spec, g in zip(ran, grads, strict=True):
            if g is None:  # ran, but the loss does not depend on it: zero gradient (below)
                continue
            a = captured[spec.layer][0]
            part = _per_sample(spec, a if a.dtype == g.dtype else a.to(g.dtype), g)
            squared += part.squared
            parts.append(part)
        self.per_sample_gradient_norms = norms = squared.sqrt()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' get_clipping_coef
        for part in parts:
            spec = part.spec
            if spec.weight is not None:
                self._set_grad(spec.weight, part.clipped_weight_sum(coef))
            if spec.bias is not None:  # sum_i c_i g_i
                self._set_grad(spec.bias, torch.mv(part.g.t(), coef))
        if len(parts) < len(self._specs):  # some did not run, or do not reach the loss: every sample's gradient is 0
            done = {id(part.spec) for part in parts}
            for spec in self._specs:
                if id(spec) not in done:
                    for p in (spec.weight, spec.bias):
                        if p is not None:
                            self._set_grad(p, torch.zeros_like(p))

    def _set_grad(self, p: nn.Parameter, grad: Tensor) -> None:
        if grad.dtype != p.dtype:
            grad = grad.to(p.dtype)
        if p.grad is None:
            p.grad = grad
        elif self._accumulation_forbidden:
            raise ValueError("a second backward pass without an optimizer step: Poisson-sampled DP-SGD takes one "
                             "batch per step (call optimizer.zero_grad() before the next forward pass)")
        else:
            p.grad += grad

    def criterion(self, criterion: Callable[..., Tensor]) -> FusedDPCriterion:
        """``criterion`` (a torch loss with a ``reduction``) as the loss whose ``backward`` clips."""
        return FusedDPCriterion(self, criterion)


@dataclass(slots=True)
class _Part:
    """One Linear's share of a batch: its per-sample squared norms and what its clipped sums need."""

    spec: _LinearSpec
    squared: Tensor  # (B,) squared norms of the per-sample gradients of the layer's trainable tensors
    g: Tensor  # (B, out) output gradients (summed over tokens): the bias's per-sample gradients
    a: Tensor | None = None  # (B, in) inputs, 2-D case: weight gradient g_i a_i^T
    tokens: tuple[Tensor, Tensor] | None = None  # (B, T, out) gradients and (B, T, in) inputs: (B, T, d) case

    def clipped_weight_sum(self, coef: Tensor) -> Tensor:
        """sum_i coef_i (gradient of sample i) of the weight, by one matrix product."""
        if self.a is not None:  # sum_i c_i g_i a_i^T = g^T (c * a)
            return torch.mm(self.g.t(), self.a * coef.unsqueeze(1))
        g, a = self.tokens
        return (g * coef[:, None, None]).flatten(0, 1).t() @ a.flatten(0, 1)


def _per_sample(spec: _LinearSpec, a: Tensor, g: Tensor) -> _Part:
    """Squared per-sample gradient norms of one Linear (exact), and what its clipped sums need."""
    if g.dim() == 2:  # the weight gradient g_i a_i^T has norm ||g_i|| ||a_i||
        gg = torch.linalg.vecdot(g, g)
        if spec.weight is None:
            return _Part(spec, gg, g)
        aa = torch.linalg.vecdot(a, a)
        return _Part(spec, gg * (aa + 1.0) if spec.bias is not None else gg * aa, g, a=a)
    a, g = a.flatten(1, -2), g.flatten(1, -2)  # (B, T, d)
    summed = g.sum(dim=1)
    squared = torch.linalg.vecdot(summed, summed) if spec.bias is not None else g.new_zeros(g.shape[0])
    if spec.weight is None:
        return _Part(spec, squared, summed)
    # sum_{t,s} (g_t . g_s)(a_t . a_s), as Opacus' compute_linear_norm_sample (measured faster here, for T = 2 and
    # d = 64, than forming the (B, out, in) per-sample gradients)
    gram = (torch.bmm(g, g.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum(dim=(1, 2)).clamp(min=0)
    return _Part(spec, squared + gram, summed, tokens=(g, a))


class FusedDPLoss:
    """The batch's loss: ``backward()`` runs the fused clipping; ``detach()``/``item()`` give the reduced loss."""

    def __init__(self, module: FusedLinearGradSampleModule, loss_per_sample: Tensor) -> None:
        self.module = module
        self.loss_per_sample = loss_per_sample

    def backward(self) -> None:
        self.module.clipped_backward(self.loss_per_sample)

    def detach(self) -> Tensor:
        reduce = torch.mean if self.module.loss_reduction == "mean" else torch.sum
        return reduce(self.loss_per_sample).detach()

    def item(self) -> float:
        return self.detach().item()


class FusedDPCriterion:
    """``criterion`` computed per sample (``reduction="none"``), wrapped as a :class:`FusedDPLoss`."""

    def __init__(self, module: FusedLinearGradSampleModule, criterion: Callable[..., Tensor]) -> None:
        reduction = getattr(criterion, "reduction", None)
        if reduction != module.loss_reduction:
            raise ValueError(f"the criterion's reduction {reduction!r} differs from the DP module's loss_reduction "
                             f"{module.loss_reduction!r}: the optimizer would scale the gradient for the other one")
        self.module = module
        self.criterion = criterion

    def __call__(self, *args, **kwargs) -> FusedDPLoss:  # noqa: ANN002, ANN003 - the criterion's own arguments
        reduction, self.criterion.reduction = self.criterion.reduction, "none"
        try:
            loss_per_sample = self.criterion(*args, **kwargs)
        finally:
            self.criterion.reduction = reduction
        return FusedDPLoss(self.module, loss_per_sample)
