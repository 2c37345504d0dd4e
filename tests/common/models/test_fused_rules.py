"""The fused mode's rules for nn.Embedding and nn.LayerNorm (``common/models/fused_rules.py``), on a BERT-like model.

A small text model (word embedding with ``padding_idx``, position embedding, LayerNorm on (B, T, d) and on (B, d),
one masked attention, a feed-forward block, a head) covers every rule and both branches of the (B, T, d) Linear
rule (per-sample gradients for the 8 x 8 attention projections, token grams for the 8 x 32 feed-forward layers at
T = 6). float64, noise 0: the fused clipped sum equals one backward pass per sample, each gradient clipped, and
Opacus' ghost clipping; with noise, same-seeded steps equal Opacus' ghost steps. A padding row gets exactly 0.
The real tiny-BERT (HF ``BertModel``) is checked against the reference in ``test_fused_dp.py`` and, with dropout,
against Opacus' ghost here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from opacus import PrivacyEngine as OpacusEngine
from torch import nn
from torch.nn import functional as F

from common.models import FusionModel
from common.models.dp_optimizers import PrivacyEngine
from common.models.fused_dp import FUSED, FusedLinearGradSampleModule
from common.models.grad_sample import prepare_opacus
from tests.common.models.conftest import make_private_sgd, random_batch, small_config

pytestmark = [
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
]

VOCAB, LENGTH, WIDTH, FEED = 20, 6, 8, 32


class TinyText(nn.Module):
    """BERT's trainable layer types; ``masked``: padding is ignored by attention and pooling (as in BERT)."""

    def __init__(self, *, masked: bool = True) -> None:
        super().__init__()
        self.masked = masked
        self.word = nn.Embedding(VOCAB, WIDTH, padding_idx=0)
        self.position = nn.Embedding(LENGTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.query, self.key = nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH, bias=False)
        self.feed = nn.Sequential(nn.Linear(WIDTH, FEED), nn.GELU(), nn.Linear(FEED, WIDTH))
        self.pooled_norm = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        real = ids != 0
        positions = torch.arange(ids.shape[1]).repeat(ids.shape[0], 1)  # contiguous: Opacus' ghost norm views it
        h = self.norm(self.word(ids) + self.position(positions))
        scores = self.query(h) @ self.key(h).transpose(1, 2) / math.sqrt(WIDTH)
        if self.masked:
            scores = scores.masked_fill(~real.unsqueeze(1), float("-inf"))
        h = h + torch.softmax(scores, dim=-1) @ h
        h = h + self.feed(h)
        weights = real.unsqueeze(-1).to(h.dtype) if self.masked else torch.ones_like(h[..., :1])
        return self.head(self.pooled_norm((h * weights).sum(1) / weights.sum(1)))


def _batch(size: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (size, LENGTH), generator=g)
    ids[:, 1] = ids[:, 0]  # an id twice in each sample: the embedding norm sums its tokens' gradients, then squares
    lengths = torch.randint(2, LENGTH, (size, 1), generator=g)
    lengths[:1] = LENGTH  # the first sample has no padding, the others some
    ids = ids * (torch.arange(LENGTH) < lengths)  # padding (id 0) after each sample's length
    return ids, torch.randint(0, 3, (size,), generator=g)


def _reference(model: nn.Module, ids: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """One backward pass per sample: name -> (B, *shape)."""
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            out[n].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
    return {n: torch.stack(v) for n, v in out.items()}


def _clipped(engine, model: nn.Module, mode: str, ids, y, *, clip: float) -> dict[str, torch.Tensor]:
    """p.grad after the DP optimizer's pre_step, noise 0: the clipped sum over the batch size."""
    dp_model, dp_opt, criterion = make_private_sgd(engine, model, mode, clip=clip, noise=0.0, rows=len(y), batch=len(y))
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model(ids), y).backward()
    assert dp_opt.pre_step()
    return {n.removeprefix("_module."): p.grad.clone() for n, p in dp_model.named_parameters()}


def _clip_at_median(reference: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
    n = next(iter(reference.values())).shape[0]
    norms = torch.cat([g.reshape(n, -1) for g in reference.values()], dim=1).norm(dim=1)
    clip = float(norms.median())
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert (factor < 1).any() and (factor == 1).any()  # some samples clipped, some not
    return clip, norms, {k: torch.einsum("i,i...->...", factor, g) / n for k, g in reference.items()}


def test_the_model_exercises_both_linear_branches() -> None:
    """T (in + out) > in x out: per-sample gradients (attention); otherwise token grams (feed-forward)."""
    assert LENGTH * (WIDTH + WIDTH) > WIDTH * WIDTH
    assert LENGTH * (WIDTH + FEED) < WIDTH * FEED


@pytest.mark.parametrize("masked", [True, False], ids=["padding-ignored", "padding-reaches-the-loss"])
def test_fused_equals_the_per_sample_reference(masked: bool) -> None:
    torch.manual_seed(0)
    model = TinyText(masked=masked).double().train()
    ids, y = _batch()
    reference = _reference(copy.deepcopy(model), ids, y)
    clip, norms, expected = _clip_at_median(reference)

    fused = _clipped(PrivacyEngine(accountant="prv"), copy.deepcopy(model), FUSED, ids, y, clip=clip)

    assert fused.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(fused[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)
    assert torch.count_nonzero(reference["word.weight"][:, 0]) == 0  # torch gives the padding row nothing


def test_fused_norms_equal_the_reference_and_opacus_ghost() -> None:
    """Padding ignored (as in BERT): Opacus' ghost embedding norm and ours agree, and so do the clipped sums."""
    prepare_opacus()
    torch.manual_seed(1)
    model = TinyText().double().train()
    ids, y = _batch(seed=1)
    reference = _reference(copy.deepcopy(model), ids, y)
    clip, norms, expected = _clip_at_median(reference)
    wrapped = FusedLinearGradSampleModule(copy.deepcopy(model), max_grad_norm=clip)
    wrapped.criterion(nn.CrossEntropyLoss())(wrapped(ids), y).backward()
    torch.testing.assert_close(wrapped.per_sample_gradient_norms, norms, rtol=1e-10, atol=1e-12)

    ghost = _clipped(OpacusEngine(accountant="prv"), copy.deepcopy(model), "ghost", ids, y, clip=clip)
    fused = _clipped(PrivacyEngine(accountant="prv"), copy.deepcopy(model), FUSED, ids, y, clip=clip)

    for name in expected:
        torch.testing.assert_close(ghost[name], expected[name], rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(fused[name], ghost[name], rtol=1e-9, atol=1e-12, msg=name)


def test_a_padding_row_gets_exactly_zero_before_noise() -> None:
    """Padding tokens reach the loss here, so without the padding rule their row would get their gradients."""
    torch.manual_seed(2)
    model = TinyText(masked=False).double().train()
    ids, y = _batch(seed=2)
    unpadded = copy.deepcopy(model)
    unpadded.word.padding_idx = None
    assert torch.count_nonzero(_reference(unpadded, ids, y)["word.weight"][:, 0]) > 0  # the padding tokens' share
    dp_model, dp_opt, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model, FUSED, clip=0.1, noise=1.0,
                                                   rows=len(y), batch=len(y))
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model(ids), y).backward()
    grad = model.word.weight.grad
    assert torch.count_nonzero(grad[0]) == 0
    assert torch.count_nonzero(grad[ids[ids != 0].unique()].abs().sum(dim=1)) == len(ids[ids != 0].unique())


def _steps(engine_class: type, mode: str, *, noise: float, sizes=(8, 5, 0, 8)) -> tuple[dict, list]:
    prepare_opacus()  # Opacus' ghost embedding norm fails on an empty batch without it
    torch.manual_seed(0)
    model = TinyText().train()
    engine = engine_class(accountant="prv")
    dp_model, dp_opt, criterion = make_private_sgd(engine, model, mode, clip=0.5, noise=noise, rows=8, batch=8,
                                           generator=torch.Generator().manual_seed(7))
    for seed, size in enumerate(sizes):
        ids, y = _batch(size, seed=seed)
        dp_opt.zero_grad(set_to_none=True)
        criterion(dp_model(ids), y).backward()
        dp_opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, list(engine.accountant.history)


def test_same_seed_noise_steps_equal_opacus_ghost_steps() -> None:
    theirs, their_history = _steps(OpacusEngine, "ghost", noise=1.0)
    ours, our_history = _steps(PrivacyEngine, FUSED, noise=1.0)
    quiet, _ = _steps(PrivacyEngine, FUSED, noise=0.0)

    assert our_history == their_history == [(1.0, 1.0, 4)]
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    assert max(float((ours[n] - quiet[n]).abs().max()) for n in ours) > 0.1  # the noise moved them


@pytest.mark.parametrize("kind", ["tiny-text", "tiny-bert"])
def test_an_empty_batch_leaves_zero_gradients(kind: str) -> None:
    """B = 0 (Poisson sampling): every rule sees empty tensors (tiny-bert's: (0,) ids and (0, d) LayerNorm inputs)."""
    torch.manual_seed(0)
    text_model = FusionModel(small_config("attention", modalities=("tabular", "text"))) if kind == "tiny-bert" else None
    model = text_model or TinyText()
    dp_model, dp_opt, criterion = make_private_sgd(PrivacyEngine(accountant="prv"), model.train(), FUSED, clip=1.0,
                                                   noise=1.0, rows=8, batch=8)
    inputs = (_batch(0)[0],) if kind == "tiny-text" else random_batch(model.config, 0)
    dp_opt.zero_grad(set_to_none=True)
    criterion(dp_model(*inputs), torch.zeros(0, dtype=torch.long)).backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(p.grad is not None and p.grad.shape == p.shape for _, p in trainable)
    assert all(torch.count_nonzero(p.grad) == 0 for _, p in trainable)
    assert any(n.startswith("encoders.text.bert.embeddings") for n, _ in trainable) or kind == "tiny-text"


@pytest.mark.parametrize("option, value, reason", [
    ("max_norm", 1.0, "renormalises the looked-up rows"),
    ("scale_grad_by_freq", True, "depends on the others"),
    ("sparse", True, "not sparse gradients"),
])
def test_unsupported_embedding_options_are_refused(option: str, value, reason: str) -> None:
    model = nn.Sequential(nn.Embedding(10, 4, **{option: value}), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(NotImplementedError, match=rf"cannot clip 0 \(Embedding.*sets {option}: .*{reason}"):
        FusedLinearGradSampleModule(model, max_grad_norm=1.0)
    model[0].requires_grad_(False)  # a frozen table is not clipped, so its options do not matter
    FusedLinearGradSampleModule(model, max_grad_norm=1.0)


def test_tiny_bert_with_dropout_equals_opacus_ghost() -> None:
    """BERT's hidden and attention dropout draw the same masks in both modes (one forward pass each); a layer output
    changed in place after its capture would make the fused gradients differ."""
    prepare_opacus()
    config = small_config("attention", modalities=("tabular", "text"), dropout=0.3)
    (x, present), y = random_batch(config, 8, seed=4), torch.randint(0, config.num_classes, (8,))
    grads = {}
    for engine, mode in ((OpacusEngine, "ghost"), (PrivacyEngine, FUSED)):
        torch.manual_seed(0)
        model = FusionModel(config).train()
        dp_model, dp_opt, criterion = make_private_sgd(engine(accountant="prv"), model, mode, clip=0.05, noise=0.0,
                                                       rows=8, batch=8)
        torch.manual_seed(1)  # the dropout masks
        dp_opt.zero_grad(set_to_none=True)
        criterion(dp_model(x, present), y).backward()
        assert dp_opt.pre_step()
        grads[mode] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads[FUSED].keys() == grads["ghost"].keys()
    assert any(n.startswith("encoders.text.bert.embeddings.word") for n in grads[FUSED])
    for name in grads["ghost"]:
        torch.testing.assert_close(grads[FUSED][name], grads["ghost"][name], rtol=1e-5, atol=1e-7, msg=name)
