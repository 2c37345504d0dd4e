"""Issue 15: a site's train message costs two ledger write transactions (it cost five).

The message as ``client/app.py`` handles it: under the site's lock, the reply cache's look-up, then the round. A DP
round writes its reservation (committed before training: nothing is released before it is on disk), then its
confirmation together with the signed head; a decline writes its row together with its head. Reads (the guard's
check, the plan, the report) take no write lock and sync nothing.
"""

from __future__ import annotations

import re

import pytest

from client.replay import ReplayCache, state_digest
from common.privacy import ledger_schema
from common.privacy.ledger import Ledger
from common.privacy.ledger_guard import site_lock
from common.records import STATUS_DECLINED, STATUS_TRAINED
from tests.common.privacy.sql_trace import SqlCounter


def _message(job, state):
    """client/app.py's train handler without Flower: reply cache, then the round, under the site's lock."""
    cache, digest = ReplayCache(job.site.state_dir, site=job.site.spec.name), state_digest(state)
    with site_lock(job.site.state_dir):
        outcome = cache.get(job.federation_id, job.server_round, digest, report=job.decline_report)
        assert outcome is None
        return job.train(state)


def _write_transactions(statements: list[str]) -> list[list[str]]:
    """The tables each write transaction inserted into, in order."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for s in statements:
        if s.upper().startswith("BEGIN IMMEDIATE"):
            current = []
        elif current is not None and (m := re.match(r"INSERT INTO (\w+)", s)):
            current.append(m.group(1))
        elif current is not None and s.upper().startswith(("COMMIT", "ROLLBACK")):
            out.append(current if s.upper().startswith("COMMIT") else ["rolled back", *current])
            current = None
    return out


@pytest.mark.parametrize("new_to_this_process", [False, True], ids=["same-process", "new-process"])
def test_a_dp_train_message_writes_the_reservation_then_the_confirmation_with_its_head(
        make_job, initial_state, monkeypatch, new_to_this_process):
    first = make_job(round_=1, run_id="r1")
    state = initial_state(first)
    assert _message(first, state).privacy["status"] == STATUS_TRAINED  # creates the ledger and the site's key
    if new_to_this_process:  # a Ray actor that has not seen this site yet: the schema is checked by a read
        monkeypatch.setattr(ledger_schema, "_KNOWN", {})
    sql = SqlCounter(monkeypatch)
    out = _message(make_job(round_=2, run_id="r1"), state)
    assert out.privacy["status"] == STATUS_TRAINED
    assert _write_transactions(sql.statements) == [["entries"], ["entries", "heads"]]
    assert (sql.writes, sql.rollbacks) == (2, 0) and sql.commits == sql.writes + sql.reads
    monkeypatch.undo()
    ledger = Ledger(first.site.state_dir / "ledger.sqlite")
    rows, heads = ledger.entries(), ledger.heads()
    assert [(e.round, e.event) for e in rows] == [(1, "reserve"), (1, "confirm"), (2, "reserve"), (2, "confirm")]
    assert [(h.round, h.head_seq) for h in heads] == [(1, 2), (2, 4)]
    assert out.privacy["ledger-head-seq"] == 4 and out.privacy["ledger-head-hash"] == rows[-1].hash
    assert out.privacy["ledger-head-signature"] == heads[-1].signature and heads[-1].valid()


def test_a_declined_message_writes_its_row_with_its_head_in_one_transaction(make_job, initial_state, monkeypatch):
    first = make_job(round_=1, run_id="r1")
    state = initial_state(first)
    _message(first, state)
    sql = SqlCounter(monkeypatch)
    out = _message(make_job(round_=2, run_id="r1", dp=False), state)  # the run asks for less privacy: declined
    assert out.privacy["status"] == STATUS_DECLINED and out.privacy["code"] == "privacy-request"
    assert _write_transactions(sql.statements) == [["entries", "heads"]] and sql.writes == 1
    monkeypatch.undo()
    ledger = Ledger(first.site.state_dir / "ledger.sqlite")
    assert [e.event for e in ledger.entries()][-1] == "decline"
    assert out.privacy["ledger-head-seq"] == 3 == ledger.heads()[-1].head_seq
