"""Opacus' DP optimizers without their avoidable per-step copies: same math, same bits, less fixed cost.

Opacus 1.6's ``DPOptimizerFastGradientClipping`` (ghost clipping) stores each step's clipped gradient sum with
``copy.deepcopy(p.grad.data)``, for every trainable tensor, every step. ``deepcopy`` of a tensor goes through
Python's copy protocol (memo dict, ``__deepcopy__``, storage copy, attribute copies): 12-14% of a default-model DP
step (BENCHMARKS.md "DP-SGD step per grad-sample mode"). ``Tensor.clone()`` gives the same values in a fresh
buffer, which is all ``accumulate`` needs (the next line adds noise into a new tensor; ``zero_grad`` drops it).

:class:`PrivacyEngine` is Opacus' ``PrivacyEngine`` whose ``make_private`` hands out the optimizer of
:data:`OPTIMIZERS` in place of Opacus' own class: it calls Opacus' ``_prepare_optimizer`` (which chooses the
class, the noise generator, secure mode) and only re-labels the instance it built with the subclass, which adds
no state and overrides ``accumulate`` and ``pre_step``: the latter does Opacus' accumulate, noise and scaling in one
pass per tensor with Opacus' own ``torch.normal`` call (same generator, same order), and hands every uncommon case
(secure mode, std 0, sum reduction, skipped steps, adaptive clipping) to Opacus' method. The accountant hook is
Opacus' own. ``tests/common/models/test_dp_optimizers.py`` checks the updates bit for bit against Opacus' class,
seeded alike, an empty batch included.

Grad-sample mode ``fused`` (``common/models/fused_dp.py``: models of Linear, LayerNorm and Embedding layers, one
backward pass) is added through the engine's own steps: ``_prepare_model`` wraps the model in
:class:`FusedLinearGradSampleModule`, ``_prepare_optimizer`` builds the optimizer Opacus builds for ``ghost`` (it
noises, scales and accounts ``p.grad`` as the module leaves it: the clipped sum), and ``make_private`` returns the
per-sample criterion as it does for ``ghost``: ``(module, optimizer, criterion, data_loader)``.

Imports Opacus: import this module only where DP training runs.
"""

from __future__ import annotations

import torch
from opacus import PrivacyEngine as OpacusPrivacyEngine
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _mark_as_processed
from torch import nn

from common.models.fused_dp import FUSED, FusedLinearGradSampleModule

__all__ = ["CloningFastGradientClipping", "OPTIMIZERS", "OPTIMIZER_MODES", "PrivacyEngine"]

#: our grad-sample mode -> the Opacus mode whose optimizer it uses (the module leaves p.grad as that mode does)
OPTIMIZER_MODES: dict[str, str] = {FUSED: "ghost"}


class CloningFastGradientClipping(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer without its avoidable per-tensor work: the same bits, fewer operations.

    ``accumulate`` clones the gradient instead of deep-copying it. ``pre_step``, in the common case (plain noise, mean
    reduction, no step pending from a skipped one), does Opacus' accumulate / add_noise / scale_grad in one pass per
    tensor: the clipped sum ``p.grad`` is kept as ``p.summed_grad`` (no copy: ``p.grad`` is replaced by a new tensor
    at once), Opacus' own ``torch.normal`` call of ``_generate_noise`` (same arguments, same generator, same order;
    without the ``torch.zeros`` it allocates only for std 0), ``(sum + noise) / (expected batch size x
    accumulated iterations)``, the processed mark, then the accountant hook. Every other case is Opacus' own method.
    """

    def accumulate(self) -> None:
        """Store the clipped gradient sum in ``p.summed_grad`` (Opacus' method, ``clone`` for ``deepcopy``)."""
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.data)
            else:
                p.summed_grad = p.grad.data.clone()

    def pre_step(self, closure=None) -> bool:  # noqa: ANN001 - Opacus' signature
        """Opacus' ``pre_step`` (accumulate, noise, scale, accountant hook), one pass per tensor where it can."""
        std = self.noise_multiplier * self.max_grad_norm
        if (self.secure_mode or std == 0 or self.loss_reduction != "mean" or self._check_skip_next_step(pop_next=False)
                or hasattr(self, "_adjusted_noise_multiplier") or any(p.summed_grad is not None for p in self.params)):
            return super().pre_step(closure)
        divisor = self.expected_batch_size * self.accumulated_iterations
        for p in self.params:
            summed = p.summed_grad = p.grad.data
            noise = torch.normal(mean=0, std=std, size=summed.shape, device=summed.device, generator=self.generator,
                                 dtype=summed.dtype)  # _generate_noise's call
            p.grad = (summed + noise).view_as(p)
            p.grad /= divisor
            _mark_as_processed(summed)
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True


#: Opacus' optimizer class -> ours (a subclass adding no state). A class not listed is used as Opacus built it.
OPTIMIZERS: dict[type[DPOptimizer], type[DPOptimizer]] = {
    DPOptimizerFastGradientClipping: CloningFastGradientClipping,
}


class PrivacyEngine(OpacusPrivacyEngine):
    """Opacus' ``PrivacyEngine``; its DP optimizer is the :data:`OPTIMIZERS` subclass of what Opacus chose."""

    def make_private(self, **kwargs):  # noqa: ANN003, ANN201 - Opacus' keyword arguments and return value
        """Opacus' ``make_private``; for ``grad_sample_mode="fused"`` also the criterion, as for ``ghost``."""
        made = super().make_private(**kwargs)
        if kwargs.get("grad_sample_mode") != FUSED:
            return made
        module, optimizer, data_loader = made
        return module, optimizer, module.criterion(kwargs.get("criterion") or nn.CrossEntropyLoss()), data_loader

    def _prepare_model(self, module: nn.Module, **kwargs) -> nn.Module:  # noqa: ANN003 - Opacus' keywords
        if kwargs.get("grad_sample_mode") != FUSED:
            return super()._prepare_model(module, **kwargs)
        if not kwargs.get("wrap_model", True):
            raise ValueError("grad_sample_mode='fused' wraps the model (wrap_model=False is not supported)")
        self.validate(module=module, optimizer=None, data_loader=None)  # as Opacus' own _prepare_model
        return FusedLinearGradSampleModule(module, max_grad_norm=kwargs.get("max_grad_norm", 1.0),
                                           batch_first=kwargs.get("batch_first", True),
                                           loss_reduction=kwargs.get("loss_reduction", "mean"))

    def _prepare_optimizer(self, **kwargs) -> DPOptimizer:  # noqa: ANN003 - Opacus' keyword arguments
        mode = kwargs.get("grad_sample_mode", "hooks")
        kwargs["grad_sample_mode"] = OPTIMIZER_MODES.get(mode, mode)
        optimizer = super()._prepare_optimizer(**kwargs)
        ours = OPTIMIZERS.get(type(optimizer))
        if ours is not None:
            optimizer.__class__ = ours  # same instance, same state: only the overridden method differs
        return optimizer

