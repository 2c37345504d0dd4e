"""Issue 12: hostile replies against the real ModalityFedAvg and RunRecorder (case numbers from the issue's probe).

Every reply here is CONSTRUCTED: three registered sites (nodes 1-3) send what an honest site would (a real signed
ledger head, the ε the PRV accountant gives for their mechanism, float32 whole branches, num-examples = their public
max-records), and one of them is then altered the way the probe altered it. The round must go on, the altered reply
must be failed with a reason, the ledger must hold one row per site for the round, and the global model must not
move by the attacker's values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from common.config import AggregationSettings
from common.privacy.ledger import Ledger
from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY
from server.identity import RegisteredSite, SiteRegistry
from server.recorder import RunRecorder
from server.strategy import ModalityFedAvg
from tests.server.honest_site import honest_privacy

pytestmark = pytest.mark.usefixtures("flower_task_identity")

GLOBAL = {
    "encoders.tabular.w": np.full(4, 0.1, dtype=np.float32),
    "projections.text.w": np.full((2, 2), 0.1, dtype=np.float32),
    "head.b": np.full(2, 0.1, dtype=np.float32),
}
SITES = (RegisteredSite("cleveland", ("tabular", "text"), 250), RegisteredSite("hungary", ("tabular", "text"), 250),
         RegisteredSite("va_long_beach", ("tabular",), 160))
NODES = {1: "cleveland", 2: "hungary", 3: "va_long_beach"}
BATCH, EPOCHS = 64, 1


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


@pytest.fixture(scope="module")
def keys():
    from cryptography.hazmat.primitives.asymmetric import ec

    return {s.name: ec.generate_private_key(ec.SECP384R1()) for s in SITES}


def _strategy(tmp_path, *, aggregator="weighted-mean", max_update_norm=100.0, weighting="max-records"):
    recorder = RunRecorder(out_dir=tmp_path, federation_id="fed", run_id="1", run_info={})
    return ModalityFedAvg(
        registry=SiteRegistry(SITES, source="test scenario", nodes=NODES),
        aggregation=AggregationSettings(aggregator, 1, weighting, max_update_norm),
        batch_size=BATCH, local_epochs=EPOCHS, recorder=recorder, fraction_train=1.0, min_train_nodes=3,
        min_available_nodes=3, fraction_evaluate=0.0)


def _honest(site: RegisteredSite, key, rnd: int, delta: float = 0.01) -> tuple[dict, dict, dict]:
    """What an honest site sends after ``rnd`` rounds: privacy record, metrics, and its arrays (global + delta)."""
    privacy = honest_privacy(site.name, site.max_records, key, rnd, batch_size=BATCH, local_epochs=EPOCHS)
    arrays = {k: v + np.float32(delta) for k, v in GLOBAL.items()
              if k.startswith("head") or any(m in k for m in site.modalities)}
    return privacy, {NUM_EXAMPLES: float(site.max_records)}, arrays


def _message(msg: Message, privacy: dict, metrics: dict, arrays: dict | None) -> Message:
    content = RecordDict({METRICS: MetricRecord(metrics), PRIVACY: ConfigRecord(privacy)})
    if arrays is not None:
        content[ARRAYS] = ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()})
    return Message(content=content, reply_to=msg)


def _round(strategy, keys, rnd=1, alter=None, node=3):
    """One round: every site honest, except that ``alter(privacy, metrics, arrays)`` edits node ``node``'s reply
    (it returns the reply's parts, or a whole Message-building callable's output)."""
    msgs = sorted(strategy.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                           ConfigRecord(), FakeGrid([1, 2, 3])), key=lambda m: m.metadata.dst_node_id)
    replies = []
    for m in msgs:
        site = SITES[m.metadata.dst_node_id - 1]
        parts = _honest(site, keys[site.name], rnd)
        if m.metadata.dst_node_id == node and alter is not None:
            parts = alter(*parts)
        replies.append(parts if isinstance(parts, Message) else _message(m, *parts))
    arrays, metrics = strategy.aggregate_train(rnd, replies)
    return ({k: v.numpy() for k, v in arrays.items()} if arrays is not None else None), metrics


def _rows(tmp_path, rnd=None):
    return {(e.site, e.round): e for e in Ledger(tmp_path / "ledger.sqlite").entries()
            if rnd is None or e.round == rnd}


def _assert_attacker_failed(tmp_path, merged, site="va_long_beach", match=""):
    rows = _rows(tmp_path, 1)
    assert {s for s, _ in rows} == {"cleveland", "hungary", "va_long_beach"}  # one row per site: none missing
    assert rows[("cleveland", 1)].event == rows[("hungary", 1)].event == "trained"
    assert rows[(site, 1)].event == "failed" and "rejected by the server" in rows[(site, 1)].reason
    assert match in rows[(site, 1)].reason, rows[(site, 1)].reason
    # the honest sites moved every tensor by +0.01; the attacker's values did not get in
    np.testing.assert_allclose(merged["head.b"], GLOBAL["head.b"] + 0.01, rtol=1e-5)
    np.testing.assert_allclose(merged["projections.text.w"], GLOBAL["projections.text.w"] + 0.01, rtol=1e-5)
    assert Ledger(tmp_path / "ledger.sqlite").verify() == []


def test_honest_round_merges_weighted_by_registered_max_records(tmp_path, keys):
    merged, metrics = _round(_strategy(tmp_path), keys)
    np.testing.assert_allclose(merged["encoders.tabular.w"], GLOBAL["encoders.tabular.w"] + 0.01, rtol=1e-5)
    assert metrics[NUM_EXAMPLES] == 250 + 250 + 160
    assert all(e.event == "trained" and "update-sha256=" in e.reason for e in _rows(tmp_path).values())
    assert len(Ledger(tmp_path / "ledger.sqlite").heads()) == 3  # every signed head recorded


def test_case8_a_claim_of_1e12_examples_does_not_take_over_the_model(tmp_path, keys):
    def alter(p, m, a):
        return p, {NUM_EXAMPLES: 1e12}, {k: v + 5 for k, v in a.items()}
    merged, _ = _round(_strategy(tmp_path), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match="num-examples is 1000000000000.0")
    # the attacker's round was spent at its site: its signed head, which verifies, is recorded all the same
    assert {h.site for h in Ledger(tmp_path / "ledger.sqlite").heads()} == {"cleveland", "hungary", "va_long_beach"}


@pytest.mark.parametrize("scale, match", [(1e6, "exceeds max-update-norm"), (3.4e38, "")])
def test_case4_a_huge_update_or_values_near_float32_max_fail(tmp_path, keys, scale, match):
    def alter(p, m, a):
        return p, m, {k: (v * np.float32(scale)).astype(np.float32) for k, v in a.items()}
    merged, _ = _round(_strategy(tmp_path), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match=match)
    assert float(np.max(merged["encoders.tabular.w"])) < 1.0


def test_case3_a_branch_the_site_does_not_hold_fails_its_reply(tmp_path, keys):
    def alter(p, m, a):
        return p, m, a | {"projections.text.w": GLOBAL["projections.text.w"] * np.float32(500)}
    merged, _ = _round(_strategy(tmp_path, max_update_norm=0.0), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match="text branch, which site 'va_long_beach' does not hold")


@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.bool_, np.float16, np.complex64])
def test_case5_any_dtype_but_float32_fails(tmp_path, keys, dtype):
    def alter(p, m, a):
        return p, m, a | {"head.b": (a["head.b"] + (1j if dtype is np.complex64 else 0)).astype(dtype)}
    merged, _ = _round(_strategy(tmp_path), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match="expected exactly float32")


@pytest.mark.parametrize("alter, match", [
    (lambda p, m, a: (p, m, a | {"head.b": np.array(["a", "b"])}), "tensor 'head.b'"),  # case 6: strings
    (lambda p, m, a: (p | {"steps": "10"}, m, a), "steps is '10'"),  # case 14
    (lambda p, m, a: (p, m | {"train-loss": [1.0, 2.0]}, a), "metric"),  # case 14: list-valued metric
    (lambda p, m, a: (p, {NUM_EXAMPLES: math.nan}, a), "are not all finite"),  # case 9
    (lambda p, m, a: (p | {"status": "pwned"}, m, {k: v * 1e6 for k, v in a.items()}), "status 'pwned'"),  # 12
    (lambda p, m, a: (p | {"epsilon": 0.001}, m, a), "reported epsilon 0.001 is below"),  # case 10
    (lambda p, m, a: (p | {"site": "cleveland"}, m, a), "node 3 is site 'va_long_beach'"),  # case 11
    (lambda p, m, a: (p | {"sample-rate": 0.001}, m, a), "is not what max-records 160"),
    (lambda p, m, a: (p | {"ledger-head-signature": p["ledger-head-signature"][:-8] + "AAAAAAA="}, m, a),
     "does not verify"),
    (lambda p, m, a: (p | {"status": "declined"}, m, a), "a declined reply carries arrays"),
])
def test_cases_6_9_10_11_12_14_malformed_or_false_replies_fail_and_the_round_goes_on(tmp_path, keys, alter, match):
    merged, _ = _round(_strategy(tmp_path), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match=match)


def test_case11_the_impersonated_site_keeps_its_own_record(tmp_path, keys):
    merged, _ = _round(_strategy(tmp_path), keys, alter=lambda p, m, a: (p | {"site": "cleveland"}, m, a))
    rows = [e for e in Ledger(tmp_path / "ledger.sqlite").entries() if e.site == "cleveland"]
    assert len(rows) == 1 and rows[0].event == "trained"  # not overwritten, not doubled


def test_case13_a_replayed_reply_must_match_what_this_server_recorded(tmp_path, keys):
    strategy = _strategy(tmp_path)
    _round(strategy, keys, rnd=1)
    # the same round again (a restart): node 3 says "replayed" with ANOTHER update; node 1 replays its own
    merged, _ = _round(strategy, keys, rnd=1, alter=lambda p, m, a: (p | {"status": "replayed"}, m,
                                                                       {k: v + 1 for k, v in a.items()}))
    rows = [e for e in Ledger(tmp_path / "ledger.sqlite").entries() if e.round == 1]
    events = sorted((e.site, e.event) for e in rows)
    # the honest sites' rows are not written twice; the mismatching replay is failed and recorded
    assert events == [("cleveland", "trained"), ("hungary", "trained"), ("va_long_beach", "failed"),
                      ("va_long_beach", "trained")]
    assert "already recorded for site 'va_long_beach' with another update" in \
        next(e.reason for e in rows if e.event == "failed")
    assert float(np.max(merged["encoders.tabular.w"])) < 1.0


def test_case13_replayed_with_another_sites_name_fails(tmp_path, keys):
    merged, _ = _round(_strategy(tmp_path), keys,
                       alter=lambda p, m, a: (p | {"status": "replayed", "site": "hungary"}, m, a))
    _assert_attacker_failed(tmp_path, merged, match="names site 'hungary'")


def test_a_node_that_is_no_site_is_failed_under_its_node_id(tmp_path, keys):
    strategy = _strategy(tmp_path)
    msgs = sorted(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                           ConfigRecord(), FakeGrid([1, 2, 3])), key=lambda m: m.metadata.dst_node_id)
    strategy.registry = SiteRegistry(SITES, source="test", nodes={1: "cleveland", 2: "hungary"})
    replies = [_message(m, *_honest(SITES[i], keys[SITES[i].name], 1)) for i, m in enumerate(msgs)]
    strategy.aggregate_train(1, replies)
    assert _rows(tmp_path, 1)[("node-3", 1)].event == "failed"


def test_case9_a_crashed_site_and_an_unreadable_reply_never_end_the_run(tmp_path, keys):
    strategy = _strategy(tmp_path)
    msgs = sorted(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                           ConfigRecord(), FakeGrid([1, 2, 3])), key=lambda m: m.metadata.dst_node_id)
    replies = [_message(msgs[0], *_honest(SITES[0], keys["cleveland"], 1)),
               Message(Error(code=0, reason="ClientApp crashed"), reply_to=msgs[1]),
               Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 160.0})}), reply_to=msgs[2])]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert [(s, e.event) for (s, _), e in sorted(_rows(tmp_path, 1).items())] == [
        ("cleveland", "trained"), ("hungary", "failed"), ("va_long_beach", "failed")]


@pytest.mark.parametrize("aggregator", ["median", "trimmed-mean", "krum", "multikrum"])
def test_robust_aggregators_run_in_the_strategy_and_exclude_an_unbounded_attacker(tmp_path, keys, aggregator):
    """No norm bound: the 1e3x update is accepted as a reply, and the robust aggregator keeps it out."""
    def alter(p, m, a):
        return p, m, {k: v * np.float32(1e3) for k, v in a.items()}
    strategy = _strategy(tmp_path, aggregator=aggregator, max_update_norm=0.0)
    # 3 holders of the head; trimmed-mean with f=1 needs 3: (0.11, 0.11, 110) -> trimmed to 0.11
    merged, _ = _round(strategy, keys, alter=alter)
    np.testing.assert_allclose(merged["head.b"], GLOBAL["head.b"] + 0.01, rtol=1e-5)
