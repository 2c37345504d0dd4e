"""The final evaluation asks ``fraction-evaluate`` of the sites, also when the rounds fold evaluation.

Before, ``ModalityFedAvg.evaluate_final`` sent an evaluate message to every connected node: a 1000-site run at
``fraction-evaluate = 0.1`` evaluated all 1000 sites after its last round (most of them never sampled, so each read
its data first). It now samples as Flower's ``FedAvg.configure_evaluate`` does.
"""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord, MessageType

from common.config import AggregationSettings
from server.identity import RegisteredSite, SiteRegistry
from server.strategy import ModalityFedAvg

pytestmark = pytest.mark.usefixtures("flower_task_identity")  # Messages take their run id from it (conftest)

N = 20
SITES = tuple(RegisteredSite(f"site-{i:02d}", ("tabular",), 100) for i in range(N))
NODES = {i + 1: s.name for i, s in enumerate(SITES)}


class _Grid:
    """Flower's Grid as the strategy uses it: the connected nodes, and one send-and-receive."""

    def __init__(self) -> None:
        self.sent: list = []

    def get_node_ids(self) -> list[int]:
        return list(NODES)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ARG002 (Flower's signature)
        self.sent.extend(messages)
        return []


def _strategy(fraction: float, *, offset: int = 0) -> ModalityFedAvg:
    return ModalityFedAvg(registry=SiteRegistry(SITES, source="test", nodes=NODES),
                          aggregation=AggregationSettings("weighted-mean", 0, "max-records", 100.0),
                          batch_size=32, local_epochs=1, fold_evaluation=True, round_offset=offset,
                          fraction_train=0.1, min_train_nodes=2, fraction_evaluate=fraction, min_evaluate_nodes=2,
                          min_available_nodes=N)


@pytest.mark.parametrize(("fraction", "asked"), [(0.25, 5), (0.05, 2), (1.0, N)])
def test_the_final_evaluation_asks_the_configured_share_of_the_sites(fraction, asked):
    strategy, grid = _strategy(fraction), _Grid()
    strategy.evaluate_final(grid, ArrayRecord(), ConfigRecord({"federation-id": "f"}), server_round=3, timeout=1.0)
    assert len(grid.sent) == asked  # 0.05 x 20 = 1, raised to min_evaluate_nodes = 2
    asked_nodes = {m.metadata.dst_node_id for m in grid.sent}
    assert len(asked_nodes) == asked and asked_nodes <= set(NODES)
    assert all(m.metadata.message_type == MessageType.EVALUATE for m in grid.sent)
    assert all(m.content["config"]["server-round"] == 3 for m in grid.sent)
    assert strategy.fraction_evaluate == 0.0  # the rounds still fold evaluation into the train replies


def test_a_resumed_run_labels_the_final_evaluation_with_the_absolute_round():
    strategy, grid = _strategy(0.25, offset=2), _Grid()
    strategy.evaluate_final(grid, ArrayRecord(), ConfigRecord({"federation-id": "f"}), server_round=5, timeout=1.0)
    assert {m.content["config"]["server-round"] for m in grid.sent} == {5}
