"""FedProx's proximal term at the site: μ (w - w_global) added to the gradient the optimizer steps with.

Under Opacus it is added after clipping and noise (data-independent: post-processing), so it is never clipped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.round import MessageError, SiteRound
from client.train import add_proximal_term
from common.records import PROXIMAL_MU


def _linear() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 1)


def test_the_term_pulls_each_parameter_back_to_the_round_start_exactly():
    model = _linear()
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=0.5)
    add_proximal_term(opt, params, mu=0.2)
    with torch.no_grad():
        for p in params:
            p.add_(1.0)  # the site moved away from the global model
            p.grad = torch.zeros_like(p)  # and its data gradient is 0 this step
    opt.step()
    for p, s in zip(params, start, strict=True):
        # w = (s + 1) - lr * mu * ((s + 1) - s) = s + 1 - 0.1
        torch.testing.assert_close(p.detach(), s + 0.9)


def test_mu_zero_registers_nothing_and_bad_mu_is_refused():
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert add_proximal_term(opt, list(model.parameters()), mu=0.0) is None
    with pytest.raises(ValueError, match="finite number >= 0"):
        add_proximal_term(opt, list(model.parameters()), mu=float("nan"))


def test_under_opacus_the_term_is_added_after_clipping_and_noise():
    from opacus import PrivacyEngine

    model = _linear()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1.0)
    add_proximal_term(opt, params, mu=0.5)  # on the optimizer Opacus wraps
    data = torch.utils.data.TensorDataset(torch.randn(8, 3) * 100, torch.randn(8, 1) * 100)
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    engine = PrivacyEngine(accountant="rdp")
    model, dp_opt, loader = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                                noise_multiplier=0.0, max_grad_norm=1e-9, poisson_sampling=False)
    start = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p in params:
            p.add_(2.0)
    x, y = next(iter(loader))
    nn.functional.mse_loss(model(x), y).backward()  # huge data gradients: clipped to norm 1e-9
    dp_opt.step()
    for p, s in zip(params, start, strict=True):
        # (s + 2) - 1.0 * (≈0 clipped data gradient + 0.5 * 2): the proximal part is not clipped, added once
        torch.testing.assert_close(p.detach(), s + 1.0, atol=1e-6, rtol=0)


def _job(mu) -> SiteRound:
    job = object.__new__(SiteRound)  # proximal_mu reads the message only
    job.message_config = {} if mu is None else {PROXIMAL_MU: mu}
    return job


def test_the_site_checks_the_messages_mu():
    assert _job(None).proximal_mu() == 0.0
    assert _job(0.01).proximal_mu() == 0.01
    for bad in (-1.0, 1e6, "0.1", True, float("nan")):
        with pytest.raises(MessageError, match="'proximal-mu'"):
            _job(bad).proximal_mu()
