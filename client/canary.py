"""White-box Dirac gradient canaries for the one-run privacy audit: plain torch + Opacus, no Flower.

Canary i is an extra "record" whose clipped per-sample gradient is ``C · e_{j(i)}``: norm exactly
the clipping bound C, all of it on its own coordinate j(i) of the trainable parameters. It is
sampled like every real record (Poisson, rate q, independently at every step) but only if the
audit's coin flip put it IN; it is added to Opacus' ``summed_grad`` after per-sample clipping
and before the Gaussian noise, so it goes through exactly the mechanism the accountant
describes (:class:`CanaryDPOptimizer`). This is the strongest adversary of the DP-SGD threat
model: it chooses its own gradient rather than an input whose gradient it must hope for.

With ``clipping = "per-modality"`` (Opacus' per-layer clipping, each tensor t to its share C_t of C) a record's
clipped gradient can put at most C_t on a coordinate of t: a canary there has norm C_t, and its score is counted
in units of its own norm (``CanaryPerLayerDPOptimizer``). The noise is σ C per coordinate either way.

Score = the signed change of coordinate j(i) between the model before and after training (what
leaves the site), in units of C: ``-(θ_T - θ_0)_j · B / (lr · C)`` (B = Opacus' expected batch
size). Without momentum that is (times canary i was sampled) + real-data drift + N(0, T·σ²);
with momentum the scale differs but it is the same for every canary, so the ranking is unchanged.

Which coordinates
-----------------
Real records move coordinates too (almost the same way whether a canary is IN or OUT); that
drift does not bias the audit (the bound is valid for any score), it only costs power. We therefore
put canaries on the m trainable coordinates whose summed clipped real-data gradient at the
initial model is smallest in magnitude (:func:`quiet_coordinates`). The choice uses only the
fixed dataset and the initial model, never the coin flips, so it is a legitimate part of the
audit design. At Cleveland (hospitals scenario) the 1000 chosen coordinates have a summed real-data
gradient of at most 6e-7·C per pass over the data (the median coordinate: 1.5e-3·C), mostly
weights of the gated attention; a canary adds C each time it is sampled. With a single modality
the gated attention gets exactly zero gradient (a softmax over one element is constant), so with
σ = 0 a canary's score is exactly its sampling count. The driver reports the largest of these
magnitudes with every audit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from opacus.optimizers import DPOptimizer, DPPerLayerOptimizer
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.dp_random import DpRandomness, dp_randomness, model_randomness
from client.train import _split, dropout_generator, poisson_loader, run_epochs
from common.models.clipping import CLIPPINGS, tensor_budgets
from common.privacy.accountant import StepPlan

__all__ = ["CANARY_OPTIMIZERS", "CanaryDPOptimizer", "CanaryPerLayerDPOptimizer", "CanaryTrainResult", "flat_trainable", "quiet_coordinates", "train_with_canaries",
           "with_canaries"]


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def flat_trainable(model: nn.Module) -> torch.Tensor:
    """All trainable parameters, flattened and concatenated in ``model.parameters()`` order (CPU copy)."""
    return torch.cat([p.detach().reshape(-1).cpu() for p in _trainable(model)])


_Target = tuple[nn.Parameter, torch.Tensor, torch.Tensor]  # (parameter, canary ids, flat indices inside it)


def _locate(params: list[nn.Parameter], coordinates: np.ndarray) -> list[_Target]:
    """(parameter, canary ids, flat index inside that parameter) for every parameter holding a canary."""
    sizes = np.array([p.numel() for p in params])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    owner = np.searchsorted(starts, coordinates, side="right") - 1
    out = []
    for k in np.unique(owner):
        ids = np.flatnonzero(owner == k)
        local = coordinates[ids] - starts[k]
        out.append((params[k], torch.as_tensor(ids), torch.as_tensor(local, device=params[k].device)))
    return out


class _Canaries:
    """Dirac canaries added after Opacus' clipping, before its noise (mixed into one of Opacus' DP optimizers).

    At every step each included canary joins the batch independently with probability
    ``sample_rate`` (the Poisson rate of the real records) and contributes its ``canary_norm`` to its
    coordinate of ``p.summed_grad``. ``sampled_counts`` counts how often each one was sampled
    (a diagnostic; the audit never reads it).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, coordinates: np.ndarray, included: np.ndarray,
                 sample_rate: float, canary_norm: float | np.ndarray, canary_seed: int, **dp_kwargs) -> None:
        super().__init__(optimizer, **dp_kwargs)
        coordinates = np.asarray(coordinates, dtype=np.int64)
        total = sum(p.numel() for p in self.params)
        if coordinates.ndim != 1 or len(np.unique(coordinates)) != len(coordinates):
            raise ValueError("canary coordinates must be a vector of distinct indices")
        if len(coordinates) and (coordinates.min() < 0 or coordinates.max() >= total):
            raise ValueError(f"canary coordinates must lie in [0, {total}): the trainable parameters")
        if np.asarray(included).shape != coordinates.shape:
            raise ValueError("included must hold one flag per canary")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        norms = np.broadcast_to(np.asarray(canary_norm, dtype=np.float64), coordinates.shape)
        if not (np.isfinite(norms).all() and (norms > 0).all()):
            raise ValueError("canary norms must be finite and > 0 (one for all canaries, or one per canary)")
        self._targets = _locate(self.params, coordinates)
        self._included = torch.as_tensor(np.asarray(included, dtype=bool))
        self._norms = torch.as_tensor(norms.copy())
        self._rate = float(sample_rate)
        self._canary_gen = torch.Generator().manual_seed(int(canary_seed))
        self.sampled_counts = np.zeros(len(coordinates), dtype=np.int64)

    def clip_and_accumulate(self) -> None:
        super().clip_and_accumulate()
        sampled = self._included & (torch.rand(len(self._included), generator=self._canary_gen) < self._rate)
        self.sampled_counts += sampled.numpy()
        for param, ids, local in self._targets:
            add = (sampled[ids].double() * self._norms[ids]).to(param.summed_grad.dtype).to(param.summed_grad.device)
            param.summed_grad.view(-1).index_add_(0, local, add)  # in place: Opacus' flags stay on the tensor


class CanaryDPOptimizer(_Canaries, DPOptimizer):
    """Opacus' ``DPOptimizer`` (flat clipping to C) with Dirac canaries of norm C."""


class CanaryPerLayerDPOptimizer(_Canaries, DPPerLayerOptimizer):
    """Opacus' ``DPPerLayerOptimizer`` (``clipping = "per-modality"``: tensor t clipped to its C_t) with canaries;
    a canary on a coordinate of tensor t has norm C_t, the most one record's clipped gradient can put there."""


#: Opacus' DP optimizer class (what ``make_private`` built for the configured clipping) -> the same with canaries
CANARY_OPTIMIZERS: dict[type[DPOptimizer], type[_Canaries]] = {
    DPOptimizer: CanaryDPOptimizer,
    DPPerLayerOptimizer: CanaryPerLayerDPOptimizer,
}


def with_canaries(dp: DPOptimizer, **canary_kwargs) -> _Canaries:
    """The same DP-SGD optimizer as ``dp`` (settings, clipping, generator, accountant's step hook) plus canaries."""
    try:
        cls = CANARY_OPTIMIZERS[type(dp)]
    except KeyError:
        raise ValueError(f"no canary optimizer for Opacus' {type(dp).__name__}: add one to CANARY_OPTIMIZERS "
                         "in client/canary.py") from None
    norm = dp.max_grad_norms if isinstance(dp, DPPerLayerOptimizer) else dp.max_grad_norm
    new = cls(dp.original_optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=norm,
              expected_batch_size=dp.expected_batch_size, loss_reduction=dp.loss_reduction,
              generator=dp.generator, secure_mode=dp.secure_mode, **canary_kwargs)
    new.step_hook = dp.step_hook
    return new


def _probe_copy(model: nn.Module) -> nn.Module:
    """A copy in training mode (Opacus records activations only then) with every dropout off."""
    probe = copy.deepcopy(model).train()
    for module in probe.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return probe


def quiet_coordinates(model: nn.Module, dataset: Dataset, *, m: int, max_grad_norm: float,
                      device: torch.device, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The m trainable coordinates with the smallest |sum of clipped per-sample gradients| of the real data.

    Parameters
    ----------
    model : nn.Module
        The model as it will start training (not modified).
    dataset : Dataset
        The site's training records.
    m : int
        Number of coordinates wanted (at most the number of trainable parameters).
    max_grad_norm : float
        Clipping bound C, applied per record over all trainable parameters, as DP-SGD does.
    device : torch.device
    batch_size : int
        Records per forward pass (memory only; the result does not depend on it).

    Returns
    -------
    indices : numpy.ndarray
        m distinct flat indices into :func:`flat_trainable`'s vector, ascending.
    magnitudes : numpy.ndarray
        |summed clipped real-data gradient| at those indices (same order), for the report.
    """
    from opacus import GradSampleModule

    probe = _probe_copy(model).to(device)
    params = _trainable(probe)
    total = sum(p.numel() for p in params)
    if not 0 < m <= total:
        raise ValueError(f"m={m} canaries need 1..{total} trainable coordinates")
    gsm = GradSampleModule(probe)
    summed = torch.zeros(total, dtype=torch.float64)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        inputs, mask, y = _split(batch, device, 0.0, None)
        gsm.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(gsm(inputs, mask), y, reduction="sum").backward()
        per_sample = torch.cat([p.grad_sample.reshape(len(y), -1) for p in params], dim=1).double().cpu()
        factor = (max_grad_norm / (per_sample.norm(dim=1) + 1e-6)).clamp(max=1.0)
        summed += (factor[:, None] * per_sample).sum(dim=0)
        for p in params:
            p.grad_sample = None
    gsm._close()
    magnitude = summed.abs().numpy()
    chosen = np.sort(np.argsort(magnitude, kind="stable")[:m])
    return chosen, magnitude[chosen]


@dataclass(frozen=True)
class CanaryTrainResult:
    scores: np.ndarray  # (m,) membership score per canary, units of C (see module docstring)
    sampled_counts: np.ndarray  # (m,) times each canary was sampled (0 for OUT canaries); diagnostic only
    steps: int  # DP-SGD steps taken
    sample_rate: float  # q = plan.sample_rate = 1/ceil(max_records / B)
    expected_batch_size: float  # max_records x q, public (divides the summed gradient, as in train_dp)
    history: list[tuple[float, float, int]]  # Opacus accountant history of this run: (σ used, q, steps)
    loss: float  # mean training loss over non-empty batches


def _canary_norms(norms: float | list[float], sizes: list[int], coordinates: np.ndarray) -> np.ndarray:
    """Each canary's norm: C (flat clipping), or C_t of the tensor t its coordinate lies in (per-layer)."""
    coordinates = np.asarray(coordinates, dtype=np.int64)
    if isinstance(norms, (int, float)):
        return np.full(coordinates.shape, float(norms))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return np.asarray(norms, dtype=np.float64)[np.searchsorted(starts, coordinates, side="right") - 1]


def train_with_canaries(model: nn.Module, dataset: Dataset, *, coordinates: np.ndarray, included: np.ndarray,
                        plan: StepPlan, lr: float, momentum: float, noise_multiplier: float,
                        max_grad_norm: float, secure_mode: bool, modality_dropout: float, device: torch.device,
                        seed: int, rng: DpRandomness | None = None, clipping: str = "flat") -> CanaryTrainResult:
    """DP-SGD exactly as ``client.train.train_dp`` runs it, for ``epochs`` passes, with Dirac canaries.

    Parameters
    ----------
    model : nn.Module
        Trained in place; its trainable parameters before and after give the scores.
    dataset : Dataset
        The site's real training records (the canaries are not rows of it).
    coordinates, included : numpy.ndarray
        Canary i sits on flat trainable coordinate ``coordinates[i]``; ``included[i]`` is its coin flip.
    plan : StepPlan
        The steps as the site plans them from its public ``max-records`` bound (``plan_steps``), over all
        rounds × local-epochs run back to back: q = plan.sample_rate, plan.steps steps.
    noise_multiplier : float
        σ actually used (0 allowed: the negative control without noise).
    rng : DpRandomness, optional
        Sampling and noise generators; default: derived from ``seed`` (an audit experiment is meant to be
        re-run exactly; nothing of it is released).
    Others
        As in ``client.train.train_dp``.

    Returns
    -------
    CanaryTrainResult
    """
    from opacus import PrivacyEngine

    model.to(device).train()
    before = flat_trainable(model)
    optimizer = torch.optim.SGD(_trainable(model), lr=lr, momentum=momentum)
    engine = PrivacyEngine(accountant="prv", secure_mode=secure_mode)
    rng = rng or dp_randomness("run-seed", run_seed=seed, site="canary-audit", server_round=0)
    loader = poisson_loader(dataset, sample_rate=plan.sample_rate, steps=plan.steps_per_epoch,
                            generator=None if secure_mode else rng.sampling)
    spec = CLIPPINGS[clipping]  # as train_dp clips: flat, or each tensor to its branch's share C_t
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    norms = (max_grad_norm if spec.opacus_clipping == "flat" else tensor_budgets(named, max_grad_norm))
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=norms, clipping=spec.opacus_clipping, grad_sample_mode=spec.required_mode or "hooks",
        poisson_sampling=False,  # the loader samples (Poisson), as in train_dp
        noise_generator=None if secure_mode else rng.noise,
    )
    dp_model.forbid_grad_accumulation()
    dp_opt.expected_batch_size = plan.expected_batch_size  # public, as in train_dp
    sample_rate = 1.0 / len(dp_loader)
    canary_norms = _canary_norms(norms, [p.numel() for _, p in named], coordinates)
    opt = with_canaries(dp_opt, coordinates=coordinates, included=included, sample_rate=sample_rate,
                        canary_norm=canary_norms, canary_seed=seed + 2)
    with model_randomness(rng, device):  # nn.Dropout's masks, as in train_dp
        losses, steps = run_epochs(dp_model, opt, dp_loader, epochs=plan.epochs, device=device,
                                   modality_dropout=modality_dropout, seed=seed,
                                   dropout_generator=dropout_generator(rng, modality_dropout))
    dp_model._close()
    after = flat_trainable(model)
    idx = torch.as_tensor(np.asarray(coordinates, dtype=np.int64))
    scale = opt.expected_batch_size / (lr * torch.as_tensor(canary_norms, dtype=torch.float64))
    scores = (-(after[idx] - before[idx]).double() * scale).numpy()  # in units of each canary's own norm
    return CanaryTrainResult(scores=scores, sampled_counts=opt.sampled_counts.copy(), steps=steps,
                             sample_rate=sample_rate, expected_batch_size=float(opt.expected_batch_size),
                             history=[tuple(h) for h in engine.accountant.history],
                             loss=float(np.mean(losses)) if losses else float("nan"))
