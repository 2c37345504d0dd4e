"""Modality dropout under DP draws from the round's secret stream, not from the public seed (client/train.py).

A public stream consumed in batch order would give each record a draw that depends on which records were sampled
before it; the ε argument (``client.train.dropout_generator``'s docstring) needs draws independent of the data.
"""

from __future__ import annotations

import torch
from torch import nn

from client.dp_random import dp_randomness
from client.train import TensorDictDataset, dropout_generator, make_loader, run_epochs

CPU = torch.device("cpu")


def _rng(round_: int = 1):
    return dp_randomness("run-seed", run_seed=7, site="a", server_round=round_)


def test_no_dropout_draws_nothing_from_the_sampling_stream():
    rng, same = _rng(), _rng()
    assert dropout_generator(rng, 0.0) is None
    assert torch.equal(torch.rand(5, generator=rng.sampling), torch.rand(5, generator=same.sampling))


def test_the_draws_follow_the_secret_stream_not_a_public_seed():
    a, b, other = (dropout_generator(r, 0.3) for r in (_rng(1), _rng(1), _rng(2)))
    first = torch.rand(8, generator=a)
    assert torch.equal(first, torch.rand(8, generator=b))  # same stream, same draws (run-seed reproducibility)
    assert not torch.equal(first, torch.rand(8, generator=other))  # another round's stream, other draws


class _Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.masks: list[torch.Tensor] = []

    def forward(self, inputs, mask):
        self.masks.append(mask.clone())
        return self.linear(inputs["x"] * mask[:, :1])


def _masks(gen: torch.Generator | None, seed: int) -> torch.Tensor:
    x = torch.randn((16, 2), generator=torch.Generator().manual_seed(0))
    data = TensorDictDataset({"x": x, "label": (x[:, 0] > 0).long(), "modality_mask": torch.ones((16, 2))})
    model = _Masked()
    run_epochs(model, torch.optim.SGD(model.parameters(), lr=0.1),
               make_loader(data, batch_size=16, generator=torch.Generator().manual_seed(0), shuffle=False),
               epochs=1, device=CPU, modality_dropout=0.5, seed=seed, dropout_generator=gen)
    return torch.cat(model.masks)


def test_run_epochs_hides_modalities_with_the_given_generator_whatever_the_public_seed():
    with_gen = [_masks(dropout_generator(_rng(), 0.5), seed) for seed in (0, 1)]
    assert torch.equal(with_gen[0], with_gen[1])  # the public seed no longer decides which modality is hidden
    assert (with_gen[0] == 0).any() and (with_gen[0].sum(dim=1) >= 1).all()  # some hidden, never all of a row
    assert not torch.equal(_masks(None, 0), _masks(None, 1))  # without one (plain training): the seed decides
