"""Issue 15, bytes: the server's train and evaluate messages carry the global model packed, one flat float32 array
per branch (``server/downlink.py``), while the strategy, FedOpt and Flower's central DP wrapper keep it per tensor.
The site's side (splitting with its own model, refusing what does not fit) is tested in
``tests/client/test_site_checks_what_it_is_sent.py``."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.models.params import BRANCHES
from common.packing import unpack_branch
from common.records import ARRAYS, PRIVACY, SITE_WEIGHT
from server.downlink import pack_downlink
from server.identity import registry_from_scenario
from server.optimizers import build_strategy
from server.strategy import validation_kwargs
from tests.server.test_central_strategy import FakeGrid, _strategy as _central_strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")

TENSOR_BYTES = 75_660  # 18,915 float32: the default model's trainable tensors


def _default() -> tuple[ArrayRecord, object]:
    run = parse_run_config(app_defaults())
    scenario = load_scenario(run.paths.scenario_file)
    arrays = ArrayRecord(initial_trainable_state(build_model(run.model, scenario=scenario, seed=0)))
    nodes = list(range(1, len(scenario.sites) + 1))
    strategy = build_strategy(run.strategy, **validation_kwargs(run, registry_from_scenario(
        scenario, discover=lambda: nodes)), recorder=None, fraction_train=1.0, min_train_nodes=len(nodes),
        fraction_evaluate=1.0, min_evaluate_nodes=len(nodes), min_available_nodes=len(nodes))
    return arrays, strategy


def _wire(msg: Message) -> int:
    """The bytes Flower ships for ``msg``: the message, its records, arrays and chunks."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def test_a_default_model_train_message_is_at_most_1_05_times_its_trainable_bytes():
    arrays, strategy = _default()
    config = ConfigRecord({"federation-id": "fed-0", "num-server-rounds": 8})
    # Execute: our strategy's messages, and Flower's own FedAvg's (one Array per tensor) for the same arrays
    ours = list(strategy.configure_train(1, arrays, config, FakeGrid([1, 2, 3, 4])))
    flower = list(FedAvg().configure_train(1, arrays, ConfigRecord(dict(config)), FakeGrid([1, 2, 3, 4])))
    evaluate = list(strategy.configure_evaluate(1, arrays, ConfigRecord(dict(config)), FakeGrid([1, 2, 3, 4])))
    # Assert
    assert sum(a.numpy().nbytes for a in arrays.values()) == TENSOR_BYTES
    assert _wire(flower[0]) > 1.1 * TENSOR_BYTES  # per tensor: 18 headers, Array objects and ids (it was 1.118x)
    for msg in (ours[0], evaluate[0]):
        assert _wire(msg) <= 1.05 * TENSOR_BYTES, (_wire(msg), _wire(msg) / TENSOR_BYTES)


def test_the_messages_carry_each_branch_packed_and_the_strategy_keeps_the_global_model_per_tensor():
    arrays, strategy = _default()
    glob = {k: a.numpy() for k, a in arrays.items()}
    msgs = list(strategy.configure_train(1, arrays, ConfigRecord({"federation-id": "f"}), FakeGrid([1, 2, 3, 4])))
    sent = msgs[0].content[ARRAYS]
    assert list(sent) == [b for b in BRANCHES if b in ("tabular", "text", "head")]
    assert all(a.dtype == "float32" and len(a.shape) == 1 for a in sent.values())
    split = {k: v for b, a in sent.items() for k, v in unpack_branch(b, a.numpy(), glob).items()}
    assert split.keys() == glob.keys()
    for k in glob:
        np.testing.assert_array_equal(split[k], glob[k], err_msg=k)
    assert msgs[1].content[ARRAYS] is sent  # one payload for all messages, packed once
    assert strategy._global is arrays and list(arrays) == list(glob)  # the strategy's copy: untouched, per tensor


def test_pack_downlink_leaves_a_message_without_arrays_alone():
    msg = Message(RecordDict({PRIVACY: ConfigRecord({"x": 1})}), dst_node_id=1, message_type="train")
    assert pack_downlink([msg]) == [msg] and ARRAYS not in msg.content.array_records


def test_central_mode_sends_packed_keeps_per_tensor_and_clips_a_reply_by_name_not_position(tmp_path):
    """Flower's DP wrapper clips a reply against ITS per-tensor global arrays by position. The message no longer
    carries the server's order, so a reply in another order is paired by name: the same release as in order."""
    glob = {"a": np.full(4, 1.0), "b": np.full(4, 5.0)}
    update = {"a": np.full(4, 0.1), "b": np.full(4, -0.2)}  # norm 0.45 < C = 1: clipping leaves it as it is
    released = []
    for order in (["a", "b"], ["b", "a"]):
        np.random.seed(0)  # Flower's noise
        strategy = _central_strategy(tmp_path / "-".join(order))
        record = ArrayRecord({k: Array(v) for k, v in glob.items()})
        msgs = sorted(strategy.configure_train(1, record, ConfigRecord(), FakeGrid([1, 2, 3])),
                      key=lambda m: m.metadata.dst_node_id)
        assert list(msgs[0].content[ARRAYS]) == ["head"]  # "a" and "b" are head tensors: one packed array
        assert list(strategy.current_arrays) == ["a", "b"]  # what Flower's wrapper clips against: per tensor
        replies = [Message(RecordDict({ARRAYS: ArrayRecord({k: Array(glob[k] + update[k]) for k in order}),
                                       "metrics": MetricRecord({SITE_WEIGHT: 1.0}),
                                       PRIVACY: ConfigRecord({"status": "trained", "site": f"s{m.metadata.dst_node_id}",
                                                              "privacy-mode": "central"})}), reply_to=m)
                   for m in msgs]
        arrays, _ = strategy.aggregate_train(1, replies)
        released.append({k: a.numpy() for k, a in arrays.items()})
    for k in glob:
        np.testing.assert_array_equal(released[1][k], released[0][k], err_msg=k)
    assert abs(float(np.mean(released[0]["b"] - released[0]["a"])) - 3.7) < 1.0  # b stays b: not swapped with a


def test_a_central_round_end_to_end_in_process_from_packed_messages(tmp_path):
    """Server -> site -> server in central mode: Flower's DP wrapper (around a plain FedAvg) sends packed messages;
    three real sites (the ClientApp handler) split them with their own models, train and record their release, and
    reply one array per tensor in their model's order; the wrapper clips against its per-tensor global arrays and
    releases the round."""
    from flwr.app import Context
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app
    from common.privacy.ledger import Ledger
    from common.records import CENTRAL_NOISE_MULTIPLIER
    from tests.client.test_central_round import VIRTUAL20

    run_config = app_defaults() | {"scenario-file": str(VIRTUAL20), "out-dir": str(tmp_path / "out"),
                                   "privacy-mode": "central", "fusion": "late", "hidden-dim": 16}
    run = parse_run_config(run_config)
    initial = initial_trainable_state(build_model(run.model, scenario=load_scenario(VIRTUAL20), seed=0))
    glob = ArrayRecord(initial)
    strategy = _central_strategy(tmp_path / "server")
    config = ConfigRecord({"federation-id": "fed", "num-server-rounds": 3, CENTRAL_NOISE_MULTIPLIER: 1.0})
    replies = []
    for msg in strategy.configure_train(1, glob, config, FakeGrid([1, 2, 3])):
        node = msg.metadata.dst_node_id
        assert all(k in BRANCHES for k in msg.content[ARRAYS])  # packed
        TaskIdentity.node_id = node
        reply = app(msg, Context(run_id=1, node_id=node, node_config={"partition-id": node - 1, "num-partitions": 20},
                                 state=RecordDict(), run_config=run_config))
        reply.metadata.__dict__["_src_node_id"] = node  # as Flower's transport sets it  # noqa: SLF001
        assert reply.content[PRIVACY]["status"] == "trained", dict(reply.content[PRIVACY])
        assert list(reply.content[ARRAYS]) == list(initial)  # per tensor, in the server's (= the model's) order
        replies.append(reply)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and strategy.accountant.num_releases == 1
    assert list(arrays) == list(initial)
    assert all(arrays[k].numpy().shape == tuple(v.shape) for k, v in initial.items())
    for site in ("virtual-00", "virtual-01", "virtual-02"):
        events = [e.event for e in Ledger(tmp_path / "out" / "sites" / site / "ledger.sqlite").entries()]
        assert events == ["reserve", "confirm"], (site, events)
