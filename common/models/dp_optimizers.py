"""Opacus' DP optimizers without their avoidable per-step copies: same math, same bits, less fixed cost.

Opacus 1.6's ``DPOptimizerFastGradientClipping`` (ghost clipping) stores each step's clipped gradient sum with
``copy.deepcopy(p.grad.data)``, for every trainable tensor, every step. ``deepcopy`` of a tensor goes through
Python's copy protocol (memo dict, ``__deepcopy__``, storage copy, attribute copies): 12-14% of a default-model DP
step (BENCHMARKS.md "DP-SGD step per grad-sample mode"). ``Tensor.clone()`` gives the same values in a fresh
buffer, which is all ``accumulate`` needs (the next line adds noise into a new tensor; ``zero_grad`` drops it).

:class:`PrivacyEngine` is Opacus' ``PrivacyEngine`` whose ``make_private`` hands out the optimizer of
:data:`OPTIMIZERS` in place of Opacus' own class: it calls Opacus' ``_prepare_optimizer`` (which chooses the
class, the noise generator, secure mode) and only re-labels the instance it built with the subclass, which adds
no state and overrides one method. Clipping, noise (Opacus' ``_generate_noise`` with the generator Opacus chose,
secure-RNG included), scaling and the accountant hook are Opacus' own, untouched. ``tests/common/models/
test_dp_optimizers.py`` checks the updates bit for bit against Opacus' class, seeded alike.

Imports Opacus: import this module only where DP training runs.
"""

from __future__ import annotations

from opacus import PrivacyEngine as OpacusPrivacyEngine
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

__all__ = ["CloningFastGradientClipping", "OPTIMIZERS", "PrivacyEngine"]


class CloningFastGradientClipping(DPOptimizerFastGradientClipping):
    """Opacus' ghost-clipping optimizer whose ``accumulate`` clones the gradient instead of deep-copying it."""

    def accumulate(self) -> None:
        """Store the clipped gradient sum in ``p.summed_grad`` (Opacus' method, ``clone`` for ``deepcopy``)."""
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad.data)
            else:
                p.summed_grad = p.grad.data.clone()


#: Opacus' optimizer class -> ours (a subclass adding no state). A class not listed is used as Opacus built it.
OPTIMIZERS: dict[type[DPOptimizer], type[DPOptimizer]] = {
    DPOptimizerFastGradientClipping: CloningFastGradientClipping,
}


class PrivacyEngine(OpacusPrivacyEngine):
    """Opacus' ``PrivacyEngine``; its DP optimizer is the :data:`OPTIMIZERS` subclass of what Opacus chose."""

    def _prepare_optimizer(self, **kwargs) -> DPOptimizer:  # noqa: ANN003 - Opacus' keyword arguments
        optimizer = super()._prepare_optimizer(**kwargs)
        ours = OPTIMIZERS.get(type(optimizer))
        if ours is not None:
            optimizer.__class__ = ours  # same instance, same state: only the overridden method differs
        return optimizer

