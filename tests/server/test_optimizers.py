"""Server optimisers (server/optimizers.py): Flower's FedProx / FedOpt classes on top of the per-tensor merge.

No Flower processes: a fake grid and CONSTRUCTED replies of two registered sites (honest privacy records with signed
heads, ``tests/server/honest_site.py``; float32 arrays, as the reply checks require) drive the composed strategies;
expected values are
computed here by hand from the FedAdam / FedYogi / FedAdagrad update rules (Reddi et al. 2021, Flower's bias-
corrected η).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedProx, FedYogi

from common.config import AggregationSettings, ConfigError, app_defaults, parse_run_config
from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY, PROXIMAL_MU
from server.identity import RegisteredSite, SiteRegistry
from server.optimizers import STRATEGIES, build_strategy
from server.strategy import ModalityFedAvg
from tests.server.honest_site import honest_privacy

pytestmark = pytest.mark.usefixtures("flower_task_identity")

TAB, TEXT, HEAD = "encoders.tabular.w", "projections.text.w", "head.b"
GLOBAL = {TAB: np.array([1.0, 1.0], dtype=np.float32), TEXT: np.array([5.0, 5.0], dtype=np.float32),
          HEAD: np.array([0.0], dtype=np.float32)}
SITES = {1: RegisteredSite("site-1", ("tabular", "text"), 100), 2: RegisteredSite("site-2", ("tabular",), 100)}
BATCH, EPOCHS = 50, 1
ETA, B1, B2, TAU = 0.1, 0.9, 0.99, 1e-3


class FakeGrid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def _settings(name: str, **kw):
    s = parse_run_config(app_defaults()).strategy
    return dataclasses.replace(s, name=name, learning_rate=ETA, beta_1=B1, beta_2=B2, tau=TAU, **kw)


def _strategy(name: str, **kw) -> ModalityFedAvg:
    registry = SiteRegistry(tuple(SITES.values()), source="test", nodes={n: s.name for n, s in SITES.items()})
    return build_strategy(_settings(name, **kw), registry=registry,
                          aggregation=AggregationSettings("weighted-mean", 0, "max-records", 100.0),
                          batch_size=BATCH, local_epochs=EPOCHS, recorder=None, fraction_train=1.0,
                          min_train_nodes=2, fraction_evaluate=0.0, min_available_nodes=2)


def _round(strategy, rnd: int, global_arrays: dict[str, np.ndarray], updates: list[dict[str, np.ndarray]]):
    """One round: site i (node i + 1) replies with ``updates[i]`` (only the tensors it trained), as float32, and
    the shared head (every site holds it) moved by +1."""
    record = ArrayRecord({k: Array(v) for k, v in global_arrays.items()})
    msgs = sorted(strategy.configure_train(rnd, record, ConfigRecord(), FakeGrid([1, 2])),
                  key=lambda m: m.metadata.dst_node_id)
    replies = []
    for msg, update in zip(msgs, updates, strict=True):
        arrays = {HEAD: global_arrays[HEAD] + 1, **update}
        content = RecordDict({
            ARRAYS: ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in arrays.items()}),
            METRICS: MetricRecord({NUM_EXAMPLES: 100.0}),
            PRIVACY: ConfigRecord(_privacy(msg.metadata.dst_node_id, rnd)),
        })
        reply = Message(content=content, reply_to=msg)
        reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id  # as Flower's transport sets it
        replies.append(reply)
    arrays, _ = strategy.aggregate_train(rnd, replies)
    return {k: v.numpy() for k, v in arrays.items()}, msgs


_KEYS: dict = {}


def _privacy(node: int, rnd: int) -> dict:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = _KEYS.setdefault(node, ec.generate_private_key(ec.SECP384R1()))
    site = SITES[node]
    return honest_privacy(site.name, site.max_records, key, rnd, batch_size=BATCH, local_epochs=EPOCHS)


@pytest.mark.parametrize("name, flower", [("fedprox", FedProx), ("fedadam", FedAdam), ("fedyogi", FedYogi),
                                          ("fedadagrad", FedAdagrad)])
def test_each_strategy_is_flowers_class_on_the_modality_merge(name, flower):
    strategy = _strategy(name)
    assert isinstance(strategy, flower) and isinstance(strategy, ModalityFedAvg)
    assert type(strategy).__module__ == "server.optimizers"
    assert strategy.recorder is None and strategy.round_offset == 0  # ModalityFedAvg's own arguments arrived


def test_fedavg_is_the_modality_merge_alone():
    assert type(_strategy("fedavg")) is ModalityFedAvg
    assert set(STRATEGIES) == {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"}


def test_fedadam_step_matches_the_update_rule():
    strategy = _strategy("fedadam")
    new, _ = _round(strategy, 1, GLOBAL, [{TAB: np.array([2.0, 0.0]), TEXT: np.array([6.0, 6.0])},
                                          {TAB: np.array([4.0, 0.0])}])
    # merged tabular = [3, 0] -> delta [2, -1]; text only from site 1 -> delta [1, 1]
    for key, delta in ((TAB, np.array([2.0, -1.0])), (TEXT, np.array([1.0, 1.0]))):
        m = (1 - B1) * delta
        v = (1 - B2) * delta ** 2
        eta_norm = ETA * np.sqrt(1 - B2 ** 2) / (1 - B1 ** 2)  # Flower's bias correction at server_round 1
        np.testing.assert_allclose(new[key], GLOBAL[key] + eta_norm * m / (np.sqrt(v) + TAU), rtol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_a_tensor_nobody_trained_does_not_move_under_the_server_step(name):
    strategy = _strategy(name)
    # round 1: site 1 trains text and tabular, site 2 tabular only -> both tensors move, moments build up
    g1, _ = _round(strategy, 1, GLOBAL, [{TAB: np.array([2.0, 0.0]), TEXT: np.array([6.0, 6.0])},
                                        {TAB: np.array([4.0, 0.0])}])
    assert not np.allclose(g1[TEXT], GLOBAL[TEXT])
    assert {v.dtype for v in g1.values()} == {np.dtype(np.float32)}  # the model's dtype, not Flower's float64
    m_text = np.array(strategy.m_t[TEXT], copy=True)
    v_text = np.array(strategy.v_t[TEXT], copy=True)
    assert np.any(m_text != 0) or name == "fedadagrad"  # plain Flower would drift the text tensor in round 2
    # round 2: nobody trains text (e.g. the notes site declined)
    g2, _ = _round(strategy, 2, g1, [{TAB: g1[TAB] + 1.0}, {TAB: g1[TAB] + 3.0}])
    np.testing.assert_array_equal(g2[TEXT], g1[TEXT])  # exactly: its value is put back
    np.testing.assert_array_equal(strategy.m_t[TEXT], m_text)  # moments advance only in rounds it was trained
    np.testing.assert_array_equal(strategy.v_t[TEXT], v_text)
    assert not np.allclose(g2[TAB], g1[TAB])  # the trained tensor still takes the server step
    assert strategy.untouched_keys == frozenset({TEXT})


def test_without_the_ownership_rule_flowers_step_would_drift_the_untrained_tensor():
    # the same two rounds through Flower's FedAdam arithmetic alone: the text tensor moves in round 2
    delta1 = np.array([1.0, 1.0])
    m1, v1 = (1 - B1) * delta1, (1 - B2) * delta1 ** 2
    m2, v2 = B1 * m1, B2 * v1  # delta 0 in round 2
    drift = ETA * np.sqrt(1 - B2 ** 3) / (1 - B1 ** 3) * m2 / (np.sqrt(v2) + TAU)
    assert np.all(np.abs(drift) > 0.01)  # what test_a_tensor_nobody_trained... rules out


def test_fedprox_sends_mu_in_every_train_message():
    strategy = _strategy("fedprox", proximal_mu=0.25)
    _, msgs = _round(strategy, 1, GLOBAL, [{TAB: np.array([2.0, 0.0])}, {TAB: np.array([4.0, 0.0])}])
    assert [m.content["config"][PROXIMAL_MU] for m in msgs] == [0.25, 0.25]


def test_fedprox_merge_is_the_per_tensor_mean():
    new, _ = _round(_strategy("fedprox"), 1, GLOBAL, [{TAB: np.array([2.0, 0.0]), TEXT: np.array([7.0, 7.0])},
                                                    {TAB: np.array([4.0, 2.0])}])
    np.testing.assert_array_equal(new[TAB], np.array([3.0, 1.0]))
    np.testing.assert_array_equal(new[TEXT], np.array([7.0, 7.0]))  # only the site that trained it


def test_central_mode_refuses_a_server_optimiser():
    with pytest.raises(ConfigError, match="strategy = 'fedyogi' with privacy-mode"):
        parse_run_config({**app_defaults(), "privacy-mode": "central", "strategy": "fedyogi"})


def test_unknown_strategy_is_named():
    with pytest.raises(ConfigError, match="strategy"):
        parse_run_config({**app_defaults(), "strategy": "fedsgd"})
