"""Fused DP-SGD clipping for models whose trainable layers are ``nn.Linear``, ``nn.LayerNorm`` and ``nn.Embedding``.

Opacus' ghost clipping (``grad_sample_mode="ghost"``) gets the per-sample gradient norms from per-module full
backward hooks, then runs a second backward pass of the clip-weighted loss. For a small model (the default one:
18,915 trainable parameters, 9 ``nn.Linear``) that fixed machinery is most of a DP step (BENCHMARKS.md "DP-SGD step /
plain step"). Where every trainable tensor is the weight or bias of a layer with a rule in
``common/models/fused_rules.py`` (``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``: all of BERT's), the same
clipped sum needs much less:

1. forward, capturing each trainable layer's input ``a`` and output (a forward hook);
2. ONE backward, ``torch.autograd.grad`` of the summed per-sample losses with respect to those outputs only: the
   per-sample output gradients ``g`` (the parameters' own gradients are never formed);
3. per-sample squared norms, exact, by the layer type's rule (``fused_rules.RULES``; e.g. a Linear on (B, d) inputs
   has ``||g_i a_i^T||^2 = ||g_i||^2 ||a_i||^2``);
4. Opacus' clip factor ``(C / (norm_i + 1e-6)).clamp(max=1)`` (``get_clipping_coef``), then each layer's clipped
   sums ``sum_i c_i grad_i`` by the rule (a matmul, an ``index_add_``), left in ``p.grad``, where ghost clipping's
   second backward leaves them.

Noise, scaling by the expected batch size and the accountant's step are NOT done here: the DP optimizer does them,
the ghost-clipping optimizer Opacus builds (re-labelled by ``common/models/dp_optimizers.py``: the same bits), with
the same generator, the same draws in the same order, the same sample rate. An empty Poisson batch (B = 0) leaves zero
gradients, so the optimizer's step is noise only, as in every Opacus mode.

A model with any other trainable parameter (convolutions, GroupNorm, bare parameters such as late fusion's
weights, subclasses of the ruled layers, whose ``forward`` may differ) is refused when wrapped, naming the tensors,
and so is an option a rule cannot honour (``fused_rules.REFUSALS``: an Embedding's ``max_norm``,
``scale_grad_by_freq``, ``sparse``): use ``ghost`` or ``hooks`` for it (``common/models/grad_sample.py``). Like
Opacus' hooks, this assumes a layer's parameters reach the loss only through that layer's ``forward``; a layer
called twice in one forward pass, or two layers sharing a tensor (parameter tying), are refused, and so is a
backward pass after a forward pass that captured nothing (eval mode: the step would silently be noise only).

Where the time goes (default model, batch 32, one thread, 2026-12-03, one process, medians of 280 interleaved steps,
load 2.8 on 2 cores): plain 1.84 ms = forward 0.88 + backward 0.74 + step 0.16 (+ zero_grad); ghost 5.31 ms =
1.39 + 3.28 + 0.55; fused 2.83 ms = 1.06 + 1.15 + 0.52. In a quieter separate run, fused's backward was
``autograd.grad`` to the 9 outputs 0.33 ms plus the norms and clipped sums ~0.3 ms, and its DP step 0.21 ms, of which
the 18 noise draws (one per tensor, as Opacus) 0.09 ms.

Checked against Opacus' ghost clipping and a slow per-sample reference in
``tests/common/models/test_fused_dp.py`` (Embedding and LayerNorm also in ``test_fused_rules.py``).
Imports Opacus: import this module only where DP training runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from torch import Tensor, nn

from common.models.fused_rules import RULES, Part, Spec, refusal

__all__ = ["FUSED", "FusedDPCriterion", "FusedDPLoss", "FusedLinearGradSampleModule", "unsupported_parameters"]

FUSED = "fused"  #: the grad-sample mode name (``common/models/grad_sample.py``, ``dp_optimizers.PrivacyEngine``)


def unsupported_parameters(module: nn.Module) -> list[str]:
    """Names of ``module``'s trainable parameters that belong to no layer of a type in :data:`RULES` (exact type)."""
    covered = {id(p) for m in module.modules() if type(m) in RULES for p in m.parameters(recurse=False)}
    return [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in covered]


class FusedLinearGradSampleModule(AbstractGradSampleModule):
    """Opacus' ``GradSampleModule`` interface over a model of ruled layers: clipped sums in one backward.

    (Named for its first rule; it clips every layer type of ``fused_rules.RULES``.)

    Parameters
    ----------
    m
        The model; each trainable tensor must be the weight or bias of a layer type in ``fused_rules.RULES``.
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
                f"grad_sample_mode='fused' computes per-sample norms only for nn.Linear, nn.LayerNorm and nn.Embedding "
                f"layers (common/models/fused_rules.py RULES), but these trainable parameters belong to other layers: "
                f"{unsupported[:6]}{' ...' if len(unsupported) > 6 else ''}; "
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
        specs = [Spec.of(layer) for layer in m.modules() if type(layer) in RULES]
        self._specs = [spec for spec in specs if spec.weight is not None or spec.bias is not None]
        owned = [id(p) for spec in self._specs for p in (spec.weight, spec.bias) if p is not None]
        if len(owned) != len(set(owned)):
            raise NotImplementedError("two layers share a trainable tensor (parameter tying): its per-sample "
                                      "norm is not the sum of the layers' own; use grad_sample_mode='hooks'")
        names = {id(layer): name for name, layer in m.named_modules()}
        refused = [why for spec in self._specs if (why := refusal(names[id(spec.layer)], spec.layer)) is not None]
        if refused:
            raise NotImplementedError(f"grad_sample_mode='fused' cannot clip {refused[0]}")
        self._captured: dict[nn.Module, tuple[Tensor, Tensor]] = {}
        self._accumulation_forbidden = False
        self._handles = [spec.layer.register_forward_hook(self._capture) for spec in self._specs]

    def _capture(self, layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (layer.training and torch.is_grad_enabled()):
            return
        if layer in self._captured:
            raise NotImplementedError(
                f"a layer ({layer}) ran twice in one forward pass: its per-sample gradient would be a sum over "
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
            raise ValueError("no trainable layer ran in training mode with gradients enabled since the last "
                             "backward: the clipped gradient would be 0 and the step noise only (call model.train())")
        ran = [spec for spec in self._specs if spec.layer in captured]
        outputs = [captured[spec.layer][1] for spec in ran]
        grads = torch.autograd.grad(loss_per_sample.sum(), outputs, allow_unused=True) if outputs else ()
        squared = loss_per_sample.new_zeros(loss_per_sample.shape[0])
        parts: list[tuple[Spec, Part]] = []
        for spec, g in zip(ran, grads, strict=True):
            if g is None:  # ran, but the loss does not depend on it: zero gradient (below)
                continue
            part = RULES[type(spec.layer)](spec, captured[spec.layer][0], g)
            squared += part.squared
            parts.append((spec, part))
        self.per_sample_gradient_norms = norms = squared.sqrt()
        coef = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' get_clipping_coef
        for spec, part in parts:
            for p, grad in zip((spec.weight, spec.bias), part.clipped_sums(coef), strict=True):
                if p is not None:
                    self._set_grad(p, grad)
        if len(parts) < len(self._specs):  # some did not run, or do not reach the loss: every sample's gradient is 0
            done = {id(spec) for spec, _ in parts}
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
