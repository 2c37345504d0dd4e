"""Training WITHOUT DP has its own optimiser and learning rate (``plain-optimizer``, ``plain-learning-rate``).

Finding 3 of issue 14: with ``dp = false`` every site scored balanced accuracy 0.500 (a constant predictor), because
the non-private path stepped raw gradients with DP-SGD's learning rate 1.0. The defaults are now chosen on public
proxy data (benchmarks/plain_defaults.py, the breast-cancer scenario); these tests hold the mechanics and that the
defaults learn on that proxy.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from client.train import PLAIN_OPTIMIZERS, TensorDictDataset, evaluate, train_plain
from common.config import PLAIN_OPTIMIZERS as PLAIN_OPTIMIZER_NAMES
from common.config import ConfigError, app_defaults, parse_run_config

CPU = torch.device("cpu")


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)

    def forward(self, inputs, mask):  # noqa: ARG002
        return self.linear(inputs["x"])


def _data(n: int = 10) -> TensorDictDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn((n, 2), generator=g)
    return TensorDictDataset({"x": x, "label": (x[:, 0] > 0).long(), "modality_mask": torch.ones((n, 1))})


def test_the_run_settings_name_exactly_the_optimisers_the_client_has():
    assert tuple(PLAIN_OPTIMIZERS) == PLAIN_OPTIMIZER_NAMES


def test_an_unknown_plain_optimizer_is_refused_naming_the_setting():
    with pytest.raises(ConfigError, match="plain-optimizer.*sgd, adam.*'rmsprop'"):
        parse_run_config({**app_defaults(), "plain-optimizer": "rmsprop"})
    with pytest.raises(ConfigError, match="plain-learning-rate"):
        parse_run_config({**app_defaults(), "plain-learning-rate": 0.0})
    with pytest.raises(ValueError, match=r"optimizer must be one of \['adam', 'sgd'\]"):
        train_plain(_Linear(), _data(), epochs=1, batch_size=4, lr=0.1, momentum=0.0, modality_dropout=0.0,
                    device=CPU, seed=0, optimizer="rmsprop")


@pytest.mark.parametrize("name, expected", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)])
def test_the_registry_builds_the_named_optimiser(name, expected):
    opt = PLAIN_OPTIMIZERS[name]([nn.Parameter(torch.zeros(1))], 0.1, 0.0)
    assert isinstance(opt, expected) and opt.param_groups[0]["lr"] == 0.1


def test_max_steps_takes_exactly_that_many_steps_across_passes():
    # 10 rows in batches of 4: 3 batches per pass; 7 steps = two whole passes and one batch of the third
    res = train_plain(_Linear(), _data(10), epochs=99, batch_size=4, lr=0.1, momentum=0.0, modality_dropout=0.0,
                      device=CPU, seed=0, max_steps=7)
    assert res.steps == 7
    res = train_plain(_Linear(), _data(10), epochs=2, batch_size=4, lr=0.1, momentum=0.0, modality_dropout=0.0,
                      device=CPU, seed=0)
    assert res.steps == 6
    with pytest.raises(ValueError, match="max_steps must be an integer >= 1"):
        train_plain(_Linear(), _data(10), epochs=1, batch_size=4, lr=0.1, momentum=0.0, modality_dropout=0.0,
                    device=CPU, seed=0, max_steps=0)


def test_the_dp_false_defaults_learn_on_the_public_proxy(tmp_path):
    """One breast-cancer clinic, the run defaults, rounds x local-epochs passes: no constant predictor (the old
    path, SGD at learning-rate 1.0, scored balanced accuracy 0.500 here; the defaults measured 0.905)."""
    from client.round import SiteRound
    from common.config import PACKAGED_SCENARIOS
    from common.factory import build_model

    config = {**app_defaults(), "scenario-file": str(PACKAGED_SCENARIOS / "breast-cancer.toml"),
              "site-state-root": str(tmp_path), "dp": False}
    site = SiteRound.from_flower(config, {"partition-id": 0, "num-partitions": 3}, {"server-round": 1}, "t")
    data, t = site.data(), site.run.train
    model = build_model(site.run.model, scenario=site.scenario, seed=0)
    train_plain(model, data.train, epochs=site.run.federation.num_rounds * t.local_epochs, batch_size=t.batch_size,
                optimizer=t.plain_optimizer, lr=t.plain_learning_rate, momentum=t.momentum, modality_dropout=0.0,
                device=CPU, seed=0)
    assert evaluate(model, data.test, device=CPU).balanced_accuracy > 0.8


def test_a_round_without_dp_steps_with_the_plain_settings_not_dp_sgds(make_job, initial_state):
    """The site's dp = false round uses plain-optimizer / plain-learning-rate; DP-SGD's learning-rate (here absurd)
    is not read: an SGD step of 1e-9 leaves the model where it was, Adam at 0.01 moves it."""
    def update(round_: int, **settings) -> float:
        job = make_job(round_=round_, run_id=f"r{round_}", site_privacy={"dp": False}, dp=False,
                       **{"learning-rate": 1e6}, **settings)
        start = initial_state(job)
        out = job.train(start)
        assert out.privacy["mode"] == "none" and out.arrays
        return max(float((out.arrays[k] - start[k]).abs().max()) for k in out.arrays)

    assert update(1, **{"plain-optimizer": "sgd", "plain-learning-rate": 1e-9}) < 1e-6
    assert 1e-3 < update(2, **{"plain-optimizer": "adam", "plain-learning-rate": 0.01}) < 1.0
