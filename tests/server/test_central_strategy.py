"""CentralDPStrategy: Flower's DP wrapper clips, noises and accounts; we record one ledger row per round.

No Flower processes: a fake grid and hand-made reply messages drive the strategy through rounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from common.privacy.central import FEDERATION_SITE, CentralPlan, parse_assumption
from common.privacy.ledger import Ledger
from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY, SITE, SITE_WEIGHT
from server.central import CentralDPStrategy
from server.recorder import RunRecorder

D = 20_000  # coordinates: enough to measure the noise's standard deviation to ~1 %
# dp_accounting RDP of k Gaussian releases at σ = 1, δ = 1e-3 (see tests/common/privacy/test_central_plan.py)
EPS_1, EPS_2 = 3.5365620688888635, 5.420018242131793


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _plan() -> CentralPlan:
    return CentralPlan(num_sites=3, sampled_sites=3, num_rounds=3, noise_multiplier=1.0, clipping_norm=1.0,
                       delta=1e-3, target_epsilon=10.0, calibrated=False,
                       planned_epsilon=(EPS_1, EPS_2, 6.999106387048849))


def _strategy(tmp_path) -> CentralDPStrategy:
    recorder = RunRecorder(out_dir=tmp_path, federation_id="fed", run_id="1", run_info={})
    return CentralDPStrategy(plan=_plan(), recorder=recorder, federation_id="fed", run_id="1",
                             fraction_train=1.0, min_train_nodes=3, fraction_evaluate=1.0, min_evaluate_nodes=3,
                             min_available_nodes=3)


def _reply(msg: Message, site: str, arrays: np.ndarray, *, weight: float = 1.0) -> Message:
    content = RecordDict({
        ARRAYS: ArrayRecord({"w": Array(arrays)}),
        METRICS: MetricRecord({SITE_WEIGHT: weight}),  # what a site sends in central mode: nothing of its rows
        PRIVACY: ConfigRecord({"status": "trained", "site": site, "privacy-mode": "central"}),
    })
    return Message(content=content, reply_to=msg)


def _round(strategy: CentralDPStrategy, rnd: int, global_w: np.ndarray, updates: list[np.ndarray | None],
           weights: tuple[float, ...] = (1.0, 1.0, 1.0)):
    msgs = list(strategy.configure_train(rnd, ArrayRecord({"w": Array(global_w)}), ConfigRecord(), FakeGrid([1, 2, 3])))
    msgs.sort(key=lambda m: m.metadata.dst_node_id)
    replies = [Message(Error(code=0, reason="site crashed"), reply_to=m) if u is None
               else _reply(m, f"site-{m.metadata.dst_node_id}", global_w + u, weight=w)
               for m, u, w in zip(msgs, updates, weights, strict=True)]
    return strategy.aggregate_train(rnd, replies)


def test_rounds_are_clipped_noised_accounted_and_recorded(tmp_path):
    # Prepare: three sites send updates of norm 100, 50 and 0.5 along the all-ones direction
    np.random.seed(0)
    strategy = _strategy(tmp_path)
    g = np.zeros(D, dtype=np.float64)
    direction = np.ones(D) / np.sqrt(D)
    updates = [100 * direction, 50 * direction, 0.5 * direction]
    # Execute: round 1 released, round 2 skipped (a failed reply), round 3 released
    arrays1, _ = _round(strategy, 1, g, updates)
    arrays2, _ = _round(strategy, 2, g, [updates[0], None, updates[2]])
    arrays3, _ = _round(strategy, 3, g, updates)
    # Assert: clipped to C = 1 and averaged with equal weights: (1 + 1 + 0.5) / 3 along the direction
    w = arrays1["w"].numpy()
    expected = (2.5 / 3) * direction
    residual = w - expected
    assert residual.std() == pytest.approx(1.0 * 1.0 / 3, rel=0.03)  # noise std σ·C/m
    assert float(residual @ direction) == pytest.approx(0.0, abs=4 / 3)  # 4 sd of the projected noise
    assert arrays2 is None and arrays3 is not None
    rows = Ledger(tmp_path / "ledger.sqlite").entries(site=FEDERATION_SITE)
    assert [(r.round, r.event, r.steps) for r in rows] == [(1, "trained", 1), (2, "failed", 0), (3, "trained", 1)]
    assert [r.epsilon for r in rows] == [pytest.approx(EPS_1, rel=1e-12), pytest.approx(EPS_1, rel=1e-12),
                                         pytest.approx(EPS_2, rel=1e-12)]
    assert "1 without a model" in rows[1].reason and parse_assumption(rows[1].reason)["sampling"] == "no-amplification"
    assert Ledger(tmp_path / "ledger.sqlite").verify() == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["central_dp"]["releases"] == 2
    assert summary["central_dp"]["epsilon_pld"] < summary["central_dp"]["epsilon"]
    # site-1 trained (and spent at the site) in all 3 rounds; the federation released 2 of them
    assert summary["sites"]["site-1"]["rounds_trained"] == 3 and summary["sites"]["site-2"]["rounds_failed"] == 1


def test_a_declining_site_means_no_release_not_a_crashed_federation(tmp_path):
    """A site whose own file refuses central mode (or whose budget is spent) declines: a reply without a model.
    Flower's FedAvg would raise InconsistentMessageReplies on it and end the ServerApp; the round releases
    nothing instead (the noise is sized for every site), and the site's reply is recorded."""
    strategy = _strategy(tmp_path)
    g = np.zeros(4)
    msgs = sorted(strategy.configure_train(1, ArrayRecord({"w": Array(g)}), ConfigRecord(), FakeGrid([1, 2, 3])),
                  key=lambda m: m.metadata.dst_node_id)
    declined = Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0.0}), PRIVACY: ConfigRecord(
        {"status": "declined", "site": "site-3", "code": "privacy-request", "reason": "privacy-mode: ..."})}),
        reply_to=msgs[2])
    replies = [_reply(msgs[0], "site-1", g + 1), _reply(msgs[1], "site-2", g + 1), declined]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is None and strategy.accountant.num_releases == 0
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert [(r.site, r.event) for r in ledger.entries()] == [
        ("site-1", "trained"), ("site-2", "trained"), ("site-3", "declined"), (FEDERATION_SITE, "failed")]


def test_unequal_weights_are_refused_by_flowers_wrapper(tmp_path):
    strategy = _strategy(tmp_path)
    g = np.zeros(4)
    with pytest.raises(ValueError, match="equal client weights"):
        _round(strategy, 1, g, [np.ones(4)] * 3, weights=(30.0, 40.0, 30.0))


def test_inner_strategy_is_plain_fedavg_with_equal_weights(tmp_path):
    strategy = _strategy(tmp_path)
    assert type(strategy.strategy) is FedAvg and strategy.strategy.weighted_by_key == SITE_WEIGHT
    assert strategy.num_sampled_clients == 3 and strategy.noise_multiplier == 1.0
    assert strategy.accountant.config.sampling_method.value == "no-amplification"


def test_evaluation_metrics_reach_the_recorder(tmp_path):
    strategy = _strategy(tmp_path)
    msgs = list(strategy.configure_evaluate(1, ArrayRecord({"w": Array(np.zeros(2))}), ConfigRecord(),
                                            FakeGrid([1, 2, 3])))
    replies = [Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 10.0 * (i + 1), "accuracy": 0.5 + 0.1 * i}),
                                   SITE: ConfigRecord({"name": f"s{i}"})}), reply_to=m) for i, m in enumerate(msgs)]
    agg = strategy.aggregate_evaluate(1, replies)
    assert agg["accuracy"] == pytest.approx((10 * 0.5 + 20 * 0.6 + 30 * 0.7) / 60)
    assert strategy.recorder.sites["s2"]["metrics"]["accuracy"] == pytest.approx(0.7)
