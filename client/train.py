"""DP-SGD training and evaluation loops: plain torch + Opacus, no Flower.

The privacy accountant handed to :func:`train_dp` is restored from the site's ledger
(see ``client/privacy.py``); Opacus appends this round's steps to its history, so the
history after training covers the dataset's whole life, never one round only.

The round runs exactly the steps the ledger reserved: the Poisson loader is built here from the
plan (``common.privacy.accountant.plan_steps``: q = 1/k, k batches per epoch, k from the site's
public ``max-records``), not by Opacus from ``len(loader)`` (whose ``int(1/q)`` is k - 1 for some
k). The mean-gradient normaliser is the plan's public ``max_records x q`` too, never ``n x q``.

FedProx's proximal term μ/2 ||w - w_global||² (``proximal_mu`` > 0) is not part of the loss: its gradient
μ (w - w_global) depends on no record, so it is added to the gradient the optimizer steps with, AFTER Opacus has
clipped the per-sample gradients and added the noise (a step pre-hook of the inner optimizer). Inside the loss it
would be clipped with every sample and distorted; added after the noise it is post-processing of the DP release and
costs no privacy. The non-private path adds it the same way.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from client.dp_random import DpRandomness, model_randomness
from common.privacy.accountant import StepPlan
from common.models.clipping import CLIPPINGS, tensor_budgets
from common.models.config import FusionConfig
from common.models.grad_sample import grad_sample_mode as registered_grad_sample_mode
from common.models.grad_sample import prepare_opacus

__all__ = [
    "TensorDictDataset", "TrainResult", "EvalResult", "resolve_device", "make_loader", "poisson_loader",
    "steps_per_epoch", "run_epochs", "train_dp", "train_plain", "evaluate", "noise_generator_problem",
    "add_proximal_term", "PLAIN_OPTIMIZERS", "dropout_generator",
]

LABEL, MODALITY_MASK = "label", "modality_mask"


class TensorDictDataset(Dataset):
    """Rows of equally long tensors, served as dicts (Opacus' empty-batch collate keeps dicts)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all tensors need the same number of rows; got {lengths}")
        self.tensors = dict(tensors)
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the round's batches: for the site's own log, never sent
    steps: int  # optimizer steps taken (DP-SGD steps when private)
    num_examples: int  # training set size (private: the site's log only)
    sample_rate: float  # Poisson sampling rate Opacus accounted (1/len(loader) = the plan's q); 0 when not private


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    balanced_accuracy: float
    auc: float  # NaN when the test set holds one class only
    num_examples: int
    positives: int  # test records not of class 0 (binary: the positives)


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when the site has it, else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device = 'cuda' but torch sees no CUDA device on this site; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def make_loader(dataset: Dataset, *, batch_size: int, generator: torch.Generator, shuffle: bool = True) -> DataLoader:
    """A loader whose order comes from ``generator``.

    Opacus' Poisson sampler draws its batches from this generator (``DPDataLoader.from_data_loader``).
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """ceil(n / B): batches per epoch of non-private SGD (DP-SGD plans from max-records: ``plan_steps``)."""
    return math.ceil(num_examples / batch_size)


def _collate_with_empty(dataset: TensorDictDataset):
    """Stack rows into a batch; an empty Poisson batch becomes the same dict with zero rows."""
    from torch.utils.data import default_collate

    def collate(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return default_collate(rows) if rows else {k: v[:0] for k, v in dataset.tensors.items()}

    return collate


def poisson_loader(dataset: TensorDictDataset, *, sample_rate: float, steps: int,
                   generator: torch.Generator | None) -> DataLoader:
    """Opacus' Poisson sampler (``UniformWithReplacementSampler``) with exactly ``steps`` batches per pass.

    Each batch holds every row independently with probability ``sample_rate``. ``len(loader) == steps``, so
    Opacus' accountant hook sees ``1/len(loader)`` = the planned q when ``steps = 1/q`` (one epoch).
    """
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    sampler = UniformWithReplacementSampler(num_samples=len(dataset), sample_rate=sample_rate, generator=generator,
                                            steps=steps)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate_with_empty(dataset), generator=generator)


def noise_generator_problem(rng: DpRandomness, device: torch.device) -> str:
    """Why ``rng``'s noise generator cannot draw on ``device`` ("" when it can): checked before reserving."""
    gen = torch.device(rng.noise.device)
    want = torch.device(device)
    if gen.type != want.type or (want.type == "cuda" and (gen.index or 0) != (want.index or 0)):
        return f"the DP noise generator is on {gen}, the model on {want}: torch.normal would refuse it"
    return ""


def _split(batch: Mapping[str, torch.Tensor], device: torch.device, dropout: float,
           gen: torch.Generator | None) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    inputs = {k: v.to(device) for k, v in batch.items() if k not in (LABEL, MODALITY_MASK)}
    mask = batch[MODALITY_MASK].to(device)
    if dropout > 0 and gen is not None and len(mask):
        keep = (torch.rand(mask.shape, generator=gen) >= dropout).to(device, mask.dtype)
        dropped = mask * keep
        # never hide every modality of a sample: fall back to what it had
        empty = dropped.sum(dim=1, keepdim=True) == 0
        mask = torch.where(empty, mask, dropped)
    return inputs, mask, batch[LABEL].to(device)


def run_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, *, epochs: int,
               device: torch.device, modality_dropout: float, seed: int,
               criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
               dropout_generator: torch.Generator | None = None) -> tuple[list[float], int]:
    """The one training loop (plain, DP, canary-audited): losses of non-empty batches, and the step count.

    An empty Poisson batch still takes a step (noise only, under DP): it counts as a step, not as a loss.
    ``criterion`` is cross-entropy; in the ghost and fused modes, the loss object ``make_private`` returned.
    ``dropout_generator``: where the modality-dropout draws come from (DP-SGD: :func:`dropout_generator`);
    None = a generator seeded by ``seed`` (non-private training).
    """
    gen = dropout_generator if dropout_generator is not None else torch.Generator().manual_seed(seed + 1)
    losses, steps = [], 0
    for _ in range(epochs):
        for batch in loader:
            inputs, mask, y = _split(batch, device, modality_dropout, gen)
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(inputs, mask), y)
            loss.backward()
            optimizer.step()
            steps += 1
            if len(y):
                losses.append(float(loss.detach()))
    return losses, steps


def add_proximal_term(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], *, mu: float):
    """Add FedProx's μ (w - w_start) to each parameter's gradient just before ``optimizer`` steps.

    ``w_start`` is each parameter's value now (the global model the round starts from). Register it on the
    optimizer that applies the update (under Opacus: the one passed to ``make_private``, whose ``step`` the
    DP optimizer calls after clipping and noise). Returns the hook handle (``.remove()``), or None for μ = 0.
    """
    if mu == 0.0:
        return None
    if not (mu > 0.0 and math.isfinite(mu)):
        raise ValueError(f"proximal mu must be a finite number >= 0, got {mu!r}")
    anchors = [p.detach().clone() for p in params]

    def pre_step(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:  # noqa: ARG001 (torch's hook)
        with torch.no_grad():
            for p, anchor in zip(params, anchors, strict=True):
                if p.grad is not None:
                    p.grad.add_(p.detach() - anchor, alpha=mu)

    return optimizer.register_step_pre_hook(pre_step)


def dropout_generator(rng: DpRandomness, modality_dropout: float) -> torch.Generator | None:
    """The modality-dropout draws of one DP-SGD round: seeded from the round's SECRET sampling stream.

    Why modality dropout leaves ε unchanged: it replaces a sampled record x by x with some modalities hidden,
    using draws that are independent of the data and of everything released. Each step then releases
    sum_i clip(g(x_i, u_i)) + N(0, σ²C²): every record's term still has norm <= C, and the draws u_i are
    i.i.d. and secret, so for neighbouring datasets the step is a mixture, over the same distribution of draws,
    of Gaussian mechanisms of sensitivity C, whose privacy loss is at most that of one of them (joint convexity
    of the hockey-stick divergence): the sampled Gaussian mechanism the accountant already counts.
    The draws must not come from a PUBLIC stream consumed in batch order: then the draw a record gets would
    depend on which other records were sampled before it, and adding one record would shift the draws of the
    records after it (more than C of change). So they come from a generator seeded by one draw of the secret
    sampling stream (``client.dp_random``), and only when dropout is on (``modality-dropout = 0``: no draw, the
    sampling stream is untouched).
    """
    if modality_dropout <= 0:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=rng.sampling))
    return torch.Generator().manual_seed(seed)


def train_dp(model: nn.Module, dataset: Dataset, *, plan: StepPlan, lr: float, momentum: float,
             noise_multiplier: float, max_grad_norm: float, accountant, secure_mode: bool,
             modality_dropout: float, device: torch.device, seed: int, rng: DpRandomness,
             proximal_mu: float = 0.0, grad_sample_mode: str | None = None, clipping: str = "flat") -> TrainResult:
    """Run ``plan.steps`` DP-SGD steps (Poisson sampling at ``plan.sample_rate``) with ``accountant`` holding the
    history.

    Opacus' hook appends one entry per step to ``accountant.history``. Batches and noise come from
    ``rng`` (``client.dp_random``), and so do the modality-dropout draws (:func:`dropout_generator`) and the
    model's ``nn.Dropout`` masks (``model_randomness``); ``seed`` is not used for any draw here.
    ``proximal_mu``: FedProx's term, added after the noise (:func:`add_proximal_term`).
    ``grad_sample_mode`` (None = the one ``common/models/grad_sample.py`` registers for the model) only
    changes how Opacus computes the clipped sum, not what it is.
    ``clipping`` (``common/models/clipping.py``): ``flat`` clips each sample's whole gradient to
    ``max_grad_norm``; ``per-modality`` gives each trainable branch its own share of it (Opacus' per-layer
    clipping, same total C, same σ, same ε).
    """
    from common.models.dp_optimizers import PrivacyEngine  # Opacus' own, minus a copy per step; heavy import

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    add_proximal_term(optimizer, params, mu=proximal_mu)  # runs inside the DP optimizer's step, after the noise
    engine = PrivacyEngine(accountant=_accountant_name(accountant), secure_mode=secure_mode)
    engine.accountant = accountant  # restored history: ε continues, never resets
    # secure_mode: Opacus swaps in its CSPRNG for the sampling (switch_generator) and the noise
    loader = poisson_loader(dataset, sample_rate=plan.sample_rate, steps=plan.steps_per_epoch,
                            generator=None if secure_mode else rng.sampling)
    spec = CLIPPINGS[clipping]
    if grad_sample_mode and spec.required_mode and grad_sample_mode != spec.required_mode:
        raise ValueError(f"clipping={clipping!r} needs grad_sample_mode={spec.required_mode!r}, got "
                         f"{grad_sample_mode!r}: Opacus 1.6 has no per-layer clipping in that mode")
    mode = grad_sample_mode or spec.required_mode or _registered_mode(model)
    # per-modality: one norm per trainable tensor (its branch's share of C); their L2 norm is C, Opacus' noise σ C
    norms = (max_grad_norm if spec.opacus_clipping == "flat" else
             tensor_budgets(((n, p) for n, p in model.named_parameters() if p.requires_grad), max_grad_norm))
    prepare_opacus()  # ghost clipping and empty Poisson batches (common/models/grad_sample.py)
    made = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
        max_grad_norm=norms, clipping=spec.opacus_clipping,
        poisson_sampling=False,  # the loader above already samples (Poisson)
        noise_generator=None if secure_mode else rng.noise,
        grad_sample_mode=mode, criterion=nn.CrossEntropyLoss(),
    )  # ghost and fused also return the loss whose backward clips
    dp_model, dp_opt, criterion, dp_loader = made if len(made) == 4 else (made[0], made[1], nn.CrossEntropyLoss(),
                                                                          made[2])
    dp_model.forbid_grad_accumulation()  # what poisson_sampling=True would set: one batch per step
    dp_opt.expected_batch_size = plan.expected_batch_size  # public, not Opacus' int(n q)
    sample_rate = 1.0 / len(dp_loader)
    with model_randomness(rng, device):  # nn.Dropout's masks: secret, not the public seed
        losses, steps = run_epochs(dp_model, dp_opt, dp_loader, epochs=plan.epochs, device=device,
                                   modality_dropout=modality_dropout, seed=seed, criterion=criterion,
                                   dropout_generator=dropout_generator(rng, modality_dropout))
    dp_model._close()  # remove Opacus hooks; the plain `model` keeps the trained weights
    return TrainResult(loss=float(np.mean(losses)) if losses else float("nan"), steps=steps,
                       num_examples=len(dataset), sample_rate=sample_rate)


#: optimiser of non-private training (``plain-optimizer``): name -> (parameters, lr, momentum) -> optimiser.
#: DP-SGD always steps with SGD on the clipped, noised mean gradient (norm <= C, so ``learning-rate`` 1.0 suits it);
#: raw gradients are unbounded, and the same SGD step can diverge or stall, hence a separate choice (README,
#: "Hyperparameters").
PLAIN_OPTIMIZERS: dict[str, Callable[[list[nn.Parameter], float, float], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr, momentum: torch.optim.SGD(params, lr=lr, momentum=momentum),
    "adam": lambda params, lr, momentum: torch.optim.Adam(params, lr=lr),  # momentum: Adam's own β1
}


def train_plain(model: nn.Module, dataset: Dataset, *, epochs: int, batch_size: int, lr: float, momentum: float,
                modality_dropout: float, device: torch.device, seed: int, proximal_mu: float = 0.0,
                optimizer: str = "sgd", max_steps: int | None = None) -> TrainResult:
    """Non-private training (``optimizer`` from :data:`PLAIN_OPTIMIZERS`): baselines, benchmarks, ``dp = false``.

    ``max_steps``: stop after that many optimizer steps (FLamby's "local updates"), passing over the data as
    many times as needed (``epochs`` is then ignored); None = ``epochs`` full passes.
    """
    try:
        make_optimizer = PLAIN_OPTIMIZERS[optimizer]
    except KeyError:
        raise ValueError(f"optimizer must be one of {sorted(PLAIN_OPTIMIZERS)}, got {optimizer!r}") from None
    torch.manual_seed(seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, momentum)
    add_proximal_term(opt, params, mu=proximal_mu)
    loader = make_loader(dataset, batch_size=batch_size, generator=torch.Generator().manual_seed(seed))
    if max_steps is not None:
        loader = _first_steps(loader, max_steps)
        epochs = 1
    losses, steps = run_epochs(model, opt, loader, epochs=epochs, device=device,
                               modality_dropout=modality_dropout, seed=seed)
    return TrainResult(loss=float(np.mean(losses)) if losses else float("nan"), steps=steps,
                       num_examples=len(dataset), sample_rate=0.0)


def _first_steps(loader: DataLoader, steps: int) -> Iterator[dict[str, torch.Tensor]]:
    """``steps`` batches: ``loader`` passed over again and again (each pass reshuffles), cut after ``steps``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"max_steps must be an integer >= 1, got {steps!r}")
    return itertools.islice(itertools.chain.from_iterable(iter(loader) for _ in itertools.count()), steps)


def _registered_mode(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return registered_grad_sample_mode(config) if isinstance(config, FusionConfig) else "hooks"


def _accountant_name(accountant) -> str:
    return accountant.mechanism()


def _auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC: of class 1 for two classes; for more, the mean one-vs-rest AUC over the classes present in ``y_true``
    (each needs a positive and a negative). NaN when ``y_true`` holds one class only.

    Computed as the Mann-Whitney statistic over mid-ranks (ties count one half): the area under the ROC curve that
    scikit-learn's ``roc_auc_score`` integrates, without its input validation (which cost ~0.1 s per call, five
    calls per evaluation of a ten-class site: most of a small site's evaluate message).
    """
    present = np.unique(y_true)
    if len(present) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return _binary_auc(y_true == 1, probs[:, 1])
    return float(np.mean([_binary_auc(y_true == c, probs[:, c]) for c in present]))


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + P(equal) / 2, by mid-ranks; NaN without both kinds."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    # mid-rank of each distinct value: the mean of the 1-based positions it occupies
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], score.size]
    ranks = np.empty(score.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _balanced_accuracy(y_true: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y_true`` (scikit-learn's ``balanced_accuracy_score``: a class
    only predicted has no recall and is left out), without its input validation (~12 ms a call, five calls per
    evaluation of a two-modality site)."""
    present, counts = np.unique(y_true, return_counts=True)
    hits = np.array([np.count_nonzero((y_true == c) & (pred == c)) for c in present], dtype=np.float64)
    return float(np.mean(hits / counts))


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, device: torch.device, batch_size: int = 256,
             drop_modalities: tuple[int, ...] = ()) -> EvalResult:
    """Loss, accuracy, balanced accuracy and ROC-AUC on ``dataset`` (binary or multi-class).

    The prediction is the most probable class (for two classes: p(class 1) >= 0.5). Balanced accuracy is the mean
    recall over the classes present in the test set; AUC see :func:`_auc`. Both are NaN with one class present.
    ``drop_modalities`` hides the modalities at those positions of the mask (robustness checks).
    """
    model.to(device).eval()
    ys, probs, loss_sum = [], [], 0.0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        inputs, mask, y = _split(batch, device, 0.0, None)
        if drop_modalities:
            mask = mask.clone()
            mask[:, list(drop_modalities)] = 0
        logits = model(inputs, mask)
        loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        probs.append(torch.softmax(logits, dim=1).cpu())
        ys.append(y.cpu())
    y_true = torch.cat(ys).numpy()
    p = torch.cat(probs).numpy()
    pred = (p[:, 1] >= 0.5).astype(int) if p.shape[1] == 2 else p.argmax(axis=1)
    several = len(np.unique(y_true)) >= 2
    bacc = _balanced_accuracy(y_true, pred) if several else float("nan")
    return EvalResult(loss=loss_sum / len(y_true), accuracy=float((pred == y_true).mean()),
                      balanced_accuracy=bacc, auc=_auc(y_true, p), num_examples=int(len(y_true)),
                      positives=int((y_true > 0).sum()))
