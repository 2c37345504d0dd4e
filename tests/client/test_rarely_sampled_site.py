"""A site sampled in rounds 1 and 3 only (as in a 1000-site run at 10% per round): its ledger holds exactly those two rounds
and its ε is that of the two-round history, computed here independently by dp_accounting's PLD.

The messages go through the ClientApp object as a simulation's Ray actor calls it, one actor serving two sites in
turn: the per-process memos (scenario, pooled table, partition, site data, ε of a history) are in play.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.app import app
from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.privacy.accountant import epsilon_from_history
from common.privacy.ledger import Ledger
from common.privacy.reference import epsilon_pld
from common.records import ARRAYS, CONFIG, PRIVACY

DATA = Path(__file__).resolve().parents[2] / "data"
SITE = """
[[sites]]
name = "virtual-{i}"
source = "mapped"
mapping = "mappings/uci-heart.toml"
partition = {{ kind = "quantity", alpha = 100.0, num-sites = 4, seed = 0, min-size = 20, part = {i} }}
modalities = ["tabular"]
privacy = {{ max-records = 200 }}
"""


@pytest.fixture
def task_identity():
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def test_a_site_sampled_in_rounds_1_and_3_has_exactly_those_rounds_and_their_epsilon(tmp_path, task_identity):
    scenario = tmp_path / "three.toml"
    scenario.write_text("".join(SITE.format(i=i) for i in range(2)) + f"""
[scenario]
name = "three"
schema = "{DATA / 'schemas' / 'heart.toml'}"
data-dir = "{DATA}"
""")
    config = app_defaults() | {"scenario-file": str(scenario), "out-dir": str(tmp_path / "out"),
                               "num-server-rounds": 3}
    run = parse_run_config(config)
    arrays = ArrayRecord(initial_trainable_state(build_model(run.model, scenario=load_scenario(scenario), seed=0)))
    contexts = [Context(run_id=1, node_id=10 + i, node_config={"partition-id": i, "num-partitions": 2},
                        state=RecordDict(), run_config=config) for i in range(2)]
    sampled = {1: (0,), 2: (1,), 3: (0,)}  # site 0 sits out round 2, site 1 is sampled in round 2 only
    replies = {}
    for rnd, sites in sampled.items():
        for i in sites:
            msg = Message(RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord({
                "server-round": rnd, "federation-id": "fed-rare", "num-server-rounds": 3})}),
                dst_node_id=10 + i, message_type="train")
            replies[rnd, i] = dict(app(message=msg, context=contexts[i]).content[PRIVACY])
            assert replies[rnd, i]["status"] == "trained", replies[rnd, i]

    ledger = Ledger(tmp_path / "out" / "sites" / "virtual-0" / "ledger.sqlite")
    rows = ledger.entries(site="virtual-0")
    assert sorted({r.round for r in rows}) == [1, 3]
    assert [r.round for r in rows if r.event == "reserve"] == [1, 3]
    history = ledger.mechanism_history(site="virtual-0")
    assert len(history) == 2 and history[0] == history[1]  # same σ, q and steps both rounds
    last = replies[3, 0]
    assert last["total-steps"] == 2 * history[0][2]
    assert last["epsilon"] == pytest.approx(epsilon_from_history(history, delta=last["delta"],
                                                                 accountant=last["accountant"]), rel=1e-9)
    assert last["epsilon"] == pytest.approx(epsilon_pld(history, delta=last["delta"]), rel=0.02)
    # not the ε of three rounds (what a stale memo of the round count would give), and more than one round's
    three = epsilon_from_history([history[0]] * 3, delta=last["delta"], accountant=last["accountant"])
    assert replies[1, 0]["epsilon"] < last["epsilon"] < three
    # the site the same process served in round 2 has its own round only
    assert sorted({r.round for r in Ledger(tmp_path / "out" / "sites" / "virtual-1" / "ledger.sqlite")
                   .entries(site="virtual-1")}) == [2]
