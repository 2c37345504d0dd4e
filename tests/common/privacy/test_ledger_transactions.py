"""Issue 15: what the ledger asks of SQLite, and that doing less of it kept every guarantee.

A file's schema is checked once per process per file (by inode: a replaced file is another one) and inside every
write transaction against SQLite's schema cookie; a confirm or decline and its signed head are one transaction.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from common.privacy import ledger as ledger_module
from common.privacy import ledger_schema
from common.privacy.ledger import Ledger, LedgerIntegrityError
from tests.common.privacy.sql_trace import SqlCounter
from tests.common.privacy.test_privacy_ledger import reserve, tamper

KEY = ec.generate_private_key(ec.SECP384R1())


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(str(path))
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('kind', 'something-else')")
    conn.commit()
    conn.close()


def _update_refused(path: Path) -> bool:
    conn = sqlite3.connect(str(path), isolation_level=None)
    try:
        conn.execute("UPDATE entries SET epsilon = 0")
    except sqlite3.DatabaseError as err:
        return "append-only: UPDATE refused" in str(err)
    finally:
        conn.close()
    return False


def _triggers(path: Path) -> set[str]:
    conn = sqlite3.connect(str(path))
    try:
        return {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    finally:
        conn.close()


TRIGGERS = {"entries_no_update", "entries_no_delete", "heads_no_update", "heads_no_delete"}


# ------------------------------------------------------------------------------------------- the schema check
def test_a_new_file_is_read_then_created_and_a_second_open_costs_nothing(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    sql = SqlCounter(monkeypatch)
    Ledger(path)
    assert (sql.reads, sql.writes, sql.commits) == (1, 1, 2)  # the read finds nothing; one write creates it all
    sql.reset()
    Ledger(path)
    assert sql.counts["connect"] == 0 and sql.statements == []


def test_a_complete_file_new_to_this_process_is_checked_by_one_read(tmp_path, monkeypatch):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).append(reserve())
    monkeypatch.setattr(ledger_schema, "_KNOWN", {})  # as in another process (a Ray actor new to this site)
    sql = SqlCounter(monkeypatch)
    Ledger(path)
    assert (sql.reads, sql.writes, sql.commits) == (1, 0, 1)


def test_a_ledger_replaced_between_messages_is_checked_again(tmp_path):
    path, other = tmp_path / "ledger.sqlite", tmp_path / "other.sqlite"
    Ledger(path).append(reserve())
    _foreign(other)
    os.replace(other, path)  # another inode at the same path
    with pytest.raises(LedgerIntegrityError, match="something-else"):
        Ledger(path)


def test_a_replacement_without_the_append_only_triggers_gets_them_back_when_opened(tmp_path):
    path, copy = tmp_path / "ledger.sqlite", tmp_path / "copy.sqlite"
    Ledger(path).append(reserve())
    shutil.copy(path, copy)
    tamper(copy)  # drops the entries triggers
    assert not _update_refused(copy) and _triggers(copy) == TRIGGERS - {"entries_no_update", "entries_no_delete"}
    os.replace(copy, path)
    Ledger(path)  # no write: the open alone must put them back
    assert _update_refused(path) and _triggers(path) == TRIGGERS


def test_a_deleted_ledger_is_created_again_not_trusted_from_the_memo(tmp_path):
    path = tmp_path / "ledger.sqlite"
    Ledger(path).append(reserve())
    path.unlink()
    ledger = Ledger(path)  # a new file (its inode number may be the old one's): created and checked
    assert ledger.entries() == [] and ledger.verify() == []
    assert _triggers(path) == TRIGGERS


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_an_open_ledger_never_writes_to_another_file_at_its_path(tmp_path, how):
    """Between the guard's check and the reservation, the file is deleted or replaced: the write is refused (a
    reservation in a fresh or foreign file would be accounted against the wrong history)."""
    path, other = tmp_path / "ledger.sqlite", tmp_path / "other.sqlite"
    ledger = Ledger(path)
    ledger.append(reserve())
    if how == "deleted":
        path.unlink()
    else:
        Ledger(other).append(reserve(site="x"))  # a valid ledger, another history
        os.replace(other, path)
    with pytest.raises(LedgerIntegrityError, match="(not the file this ledger opened|lost its table)"):
        ledger.append(reserve(round=2))
    assert [e.site for e in Ledger(path).entries()] == ([] if how == "deleted" else ["x"])


def test_a_write_refuses_a_file_that_lost_its_entries_table_in_place(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.append(reserve())
    tamper(path, "DROP TABLE entries")  # same inode: only the schema cookie tells
    with pytest.raises(LedgerIntegrityError, match="lost its table entries"):
        ledger.append(reserve(round=2))
    conn = sqlite3.connect(str(path))
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'entries'").fetchall() == []  # not re-created
    conn.close()


def test_triggers_dropped_in_place_are_back_before_the_next_write(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.append(reserve())
    tamper(path)  # same inode: the memo knows this file
    ledger.append(reserve(round=2))  # the write transaction sees the schema cookie changed
    assert _update_refused(path)
    assert [e.round for e in ledger.entries()] == [1, 2] and ledger.verify() == []


def test_a_write_refuses_a_file_whose_meta_was_changed_in_place(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.append(reserve())
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="schema_version='2'"):
        ledger.append(reserve(round=2))
    assert [e.round for e in ledger.entries()] == [1]


def test_the_ledger_keeps_sqlites_durable_settings(tmp_path):
    # rollback journal + synchronous=FULL: a COMMIT returns after the journal and the file are synced. Lowering
    # either (synchronous=NORMAL, or OFF, or a memory journal) would let a power cut lose a committed reservation.
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append(reserve())
    with ledger._connect() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


# ------------------------------------------------------------------------------ a row and its head, one commit
def test_append_signed_is_one_write_transaction_holding_the_row_and_its_head(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append(reserve())
    sql = SqlCounter(monkeypatch)
    row, head = ledger.append_signed(reserve(event="confirm"), KEY, secure_mode=False, epsilon_budget=3.0)
    assert (sql.writes, sql.reads, sql.commits, sql.rollbacks) == (1, 0, 1, 0)
    assert (head.head_seq, head.head_hash) == (row.seq, row.hash) == ledger.head() == (2, row.hash)
    assert (head.site, head.round, head.run_id, head.secure_mode, head.epsilon_budget) == (
        "cleveland", 1, "run-1", False, 3.0)
    assert head.valid() and ledger.verify() == [] and ledger.verify_heads() == []
    assert [(h.seq, h.head_seq) for h in ledger.heads()] == [(1, 2)]


def test_a_failure_while_signing_leaves_neither_the_row_nor_its_head(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.append(reserve())

    def broken(*args, **kwargs):
        raise RuntimeError("the key is unusable")

    monkeypatch.setattr(ledger_module.SignedHead, "sign", broken)
    with pytest.raises(RuntimeError, match="unusable"):
        ledger.append_signed(reserve(event="confirm"), KEY)
    assert [e.event for e in ledger.entries()] == ["reserve"] and ledger.heads() == []


def _reserve_then_die_while_confirming(path: str) -> None:
    ledger = Ledger(Path(path))
    ledger.append(reserve())

    def die(*args, **kwargs):
        os._exit(9)  # a crash inside the confirm's write transaction, after its row was inserted

    ledger_module.SignedHead.sign = die
    ledger.append_signed(reserve(event="confirm"), KEY)


def test_a_crash_inside_the_confirm_leaves_the_reservation_counted_as_spent(tmp_path):
    path = tmp_path / "ledger.sqlite"
    child = multiprocessing.get_context("fork").Process(target=_reserve_then_die_while_confirming, args=(str(path),))
    child.start()
    child.join(60)
    assert child.exitcode == 9
    ledger = Ledger(path)
    assert [e.event for e in ledger.entries()] == ["reserve"] and ledger.heads() == []
    assert ledger.verify() == [] and ledger.mechanism_history(site="cleveland") == [(1.1, 0.02, 7)]
    row, head = ledger.append_signed(reserve(round=2, event="confirm"), KEY)  # the lock died with the process
    assert (row.seq, head.head_seq) == (2, 2)
