"""Issue 12: a site sampled for a round that never answers (timeout, crash, disconnect) still gets a server row.

"The server ledger is written once per round ... never missing a round that sites spent." A site may reserve and
spend a round, then time out before its reply arrives: Flower's grid then returns no Message for it at all (a
crashed ClientApp returns an error Message, which was already recorded as ``failed``). The strategy remembers whom
``configure_train`` sampled and records a ``no-reply`` row for every sampled node without a reply, in the round's
single ledger transaction. The audit then sees the site's reservation against a server row (a WARN: spent without
a result) instead of a round the server never heard of (a FAIL).

Replies are CONSTRUCTED as in ``test_hostile_replies.py`` (honest, signed, accountant-consistent).
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from common.privacy.ledger import Ledger
from common.privacy.entry import LedgerEntry
from server.audit.compare import compare_site_server
from server.audit.model import FAIL, WARN
from tests.server.test_hostile_replies import GLOBAL, SITES, FakeGrid, _honest, _message, _rows, _strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture(scope="module")
def keys():
    from cryptography.hazmat.primitives.asymmetric import ec

    return {s.name: ec.generate_private_key(ec.SECP384R1()) for s in SITES}


def _silent_round(strategy, keys, rnd: int, silent: set[int]):
    """One round in which the nodes in ``silent`` never answer (the grid returns nothing for them)."""
    msgs = sorted(strategy.configure_train(rnd, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}),
                                           ConfigRecord(), FakeGrid([1, 2, 3])), key=lambda m: m.metadata.dst_node_id)
    replies = [_message(m, *_honest(SITES[m.metadata.dst_node_id - 1], keys[SITES[m.metadata.dst_node_id - 1].name],
                                    rnd))
               for m in msgs if m.metadata.dst_node_id not in silent]
    return strategy.aggregate_train(rnd, replies)


def test_a_sampled_site_that_never_replies_gets_a_no_reply_row_and_the_round_goes_on(tmp_path, keys):
    strategy = _strategy(tmp_path)
    arrays, _ = _silent_round(strategy, keys, 1, silent={3})
    assert arrays is not None  # the two sites that answered are merged
    np.testing.assert_allclose(arrays["head.b"].numpy(), GLOBAL["head.b"] + 0.01, rtol=1e-5)
    rows = _rows(tmp_path, 1)
    assert sorted((s, e.event) for (s, _), e in rows.items()) == [
        ("cleveland", "trained"), ("hungary", "trained"), ("va_long_beach", "no-reply")]
    assert "may have spent this round" in rows[("va_long_beach", 1)].reason
    assert Ledger(tmp_path / "ledger.sqlite").verify() == []
    assert strategy.recorder.sites["va_long_beach"]["rounds_no_reply"] == 1


def test_a_round_with_no_reply_at_all_is_still_recorded_for_every_sampled_site(tmp_path, keys):
    strategy = _strategy(tmp_path)
    arrays, _ = _silent_round(strategy, keys, 1, silent={1, 2, 3})
    assert arrays is None  # nothing to merge: the loop keeps the global model
    assert {(s, e.event) for (s, _), e in _rows(tmp_path, 1).items()} == {
        ("cleveland", "no-reply"), ("hungary", "no-reply"), ("va_long_beach", "no-reply")}


def test_only_sampled_nodes_get_a_row(tmp_path, keys):
    """A node that was not sampled this round owes the server nothing: no row for it."""
    strategy = _strategy(tmp_path)
    strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes = 0.5, 1, 1
    msgs = list(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(),
                                         FakeGrid([1, 2, 3])))
    sampled = {SITES[m.metadata.dst_node_id - 1].name for m in msgs}
    assert 0 < len(sampled) < 3
    strategy.aggregate_train(1, [])
    assert {s for s, _ in _rows(tmp_path, 1)} == sampled


def test_the_audit_sees_a_spent_round_without_reply_as_a_warning_not_a_missing_row(tmp_path, keys):
    strategy = _strategy(tmp_path)
    _silent_round(strategy, keys, 1, silent={3})
    server_rows = Ledger(tmp_path / "ledger.sqlite").entries()
    reserve = LedgerEntry(site="va_long_beach", round=1, event="reserve", federation_id="fed", run_id="1",
                          noise_multiplier=1.1, sample_rate=0.25, steps=4, max_grad_norm=1.0, delta=1e-3,
                          accountant="prv", epsilon=0.9, epsilon_rdp=1.0, target_epsilon=4.0)
    findings = compare_site_server("va_long_beach", [reserve], server_rows)
    assert [f.level for f in findings] == [WARN] and "no reply" in findings[0].message
    assert FAIL not in {f.level for f in findings}


def test_an_error_the_superlink_writes_for_a_vanished_node_is_that_sites_failure(tmp_path, keys):
    """A node that vanishes mid-round gets an error reply written by the SuperLink itself: its source is the
    SuperLink's node id, and it answers the message sent to the site (``reply_to_message_id``). It is recorded as
    that site's ``failed`` row: not as an unknown node's, and not as a second, ``no-reply`` row for the site
    (found by tests/integration/test_deploy.py, which kills a SuperNode in round 1)."""
    from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

    strategy = _strategy(tmp_path)
    msgs = sorted(strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}), ConfigRecord(),
                                           FakeGrid([1, 2, 3])), key=lambda m: m.metadata.dst_node_id)
    for m in msgs:  # what Flower's grid does when it pushes them
        m.metadata.__dict__["_message_id"] = m.object_id
    error = create_message_error_unavailable_res_message(msgs[2].metadata, "node_unavail")  # the SuperLink's own
    replies = [_message(m, *_honest(SITES[m.metadata.dst_node_id - 1], keys[SITES[m.metadata.dst_node_id - 1].name], 1))
               for m in msgs[:2]] + [error]
    strategy.aggregate_train(1, replies)
    rows = _rows(tmp_path, 1)
    assert sorted((s, e.event) for (s, _), e in rows.items()) == [
        ("cleveland", "trained"), ("hungary", "trained"), ("va_long_beach", "failed")]
