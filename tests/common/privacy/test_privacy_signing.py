"""Signed ledger heads: keys, the signed message, the heads table of a ledger file."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from common.privacy.entry import GENESIS_HASH, LedgerEntry
from common.privacy.ledger import Ledger
from common.privacy.signing import (
    SignedHead,
    fingerprint,
    head_message,
    load_or_create_key,
    public_key_line,
    read_signed_heads,
    sign_head,
    verify_head,
    write_signed_heads,
)


def test_a_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "state" / "site_key")
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "site_key").st_mode) == 0o600
    assert key.curve.name == "secp384r1"
    pub = (tmp_path / "state" / "site_key.pub").read_text()
    assert pub.startswith("ecdsa-sha2-nistp384 ") and public_key_line(key) in pub
    again = load_or_create_key(tmp_path / "state" / "site_key")
    assert public_key_line(again) == public_key_line(key)
    assert not [p for p in (tmp_path / "state").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen not installed")
def test_a_supernode_auth_key_from_ssh_keygen_is_used_as_is(tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-t", "ecdsa", "-b", "384", "-N", "", "-q", "-f", str(tmp_path / "k")], check=True)
    key = load_or_create_key(tmp_path / "k")
    pub = (tmp_path / "k.pub").read_text()
    assert public_key_line(key) in pub
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True, text=True,
                            check=True).stdout
    assert fingerprint(pub) in listed


def test_the_signed_message_is_pinned() -> None:
    assert head_message(kind="site-ledger", site="cleveland", seq=4, head_hash="ab" * 32) == (
        b'{"domain":"fedfusion/ledger-head/v1","head_hash":"' + b"ab" * 32
        + b'","kind":"site-ledger","seq":4,"site":"cleveland"}')
    with pytest.raises(ValueError, match="head kind"):
        head_message(kind="other", site="s", seq=1, head_hash="0")


def test_a_signature_covers_kind_site_seq_and_hash(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "k")
    pub, head = public_key_line(key), dict(kind="site-ledger", site="cleveland", seq=4, head_hash="ab" * 32)
    sig = sign_head(key, **head)
    assert verify_head(pub, sig, **head)
    for change in (dict(seq=3), dict(site="hungary"), dict(head_hash="cd" * 32), dict(kind="server-ledger")):
        assert not verify_head(pub, sig, **(head | change))
    other = public_key_line(load_or_create_key(tmp_path / "other"))
    assert not verify_head(other, sig, **head)
    assert not verify_head(pub, "not base64!", **head) and not verify_head("garbage", sig, **head)


def test_ledger_heads_are_signed_atomically_chained_and_append_only(tmp_path: Path) -> None:
    ledger, key = Ledger(tmp_path / "l.sqlite"), load_or_create_key(tmp_path / "k")
    empty = ledger.sign_head(key, site="s", round=0)
    assert (empty.head_seq, empty.head_hash) == (0, GENESIS_HASH) and empty.valid()
    ledger.append(LedgerEntry(site="s", round=1, event="decline", epsilon=0.0))
    head = ledger.sign_head(key, site="s", round=1, run_id="r", secure_mode=True, epsilon_budget=8)
    assert (head.head_seq, head.head_hash) == ledger.head() and head.valid()
    assert ledger.heads() == [empty, head] and ledger.heads(site="x") == [] and ledger.verify_heads() == []
    assert head.secure_mode is True and head.epsilon_budget == 8.0 and ledger.heads_head() == (2, head.hash)
    conn = sqlite3.connect(str(ledger.path))
    with pytest.raises(sqlite3.DatabaseError, match="append-only: UPDATE"):
        conn.execute("UPDATE heads SET round = 5 WHERE seq = 2")
    conn.execute("DROP TRIGGER heads_no_update")
    conn.execute("UPDATE heads SET epsilon_budget = 80 WHERE seq = 2")
    conn.commit()
    conn.close()
    problems = ledger.verify_heads()
    assert len(problems) == 1 and problems[0].startswith("heads seq=2 (site='s', round=1)")


def test_the_server_signs_both_of_its_tables(tmp_path: Path) -> None:
    ledger, key = Ledger(tmp_path / "l.sqlite"), load_or_create_key(tmp_path / "k")
    ledger.append(LedgerEntry(site="s", round=1, event="failed"))
    rows, heads = ledger.sign_state(key)
    assert (rows.kind, rows.seq, rows.head_hash) == ("server-ledger", 1, ledger.head()[1]) and rows.valid()
    assert (heads.kind, heads.seq) == ("server-heads", 0) and heads.valid()
    write_signed_heads(tmp_path / "ledger-head.json", (rows, heads))
    assert read_signed_heads(tmp_path / "ledger-head.json") == [rows, heads]
    forged = SignedHead(**(rows.to_dict() | {"seq": 2}))
    assert not forged.valid()


def test_read_only_never_writes_to_an_audited_file(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    Ledger(path).append(LedgerEntry(site="s", round=1, event="failed"))
    conn = sqlite3.connect(str(path))
    conn.execute("DROP TABLE heads")  # as written before signed heads existed
    conn.commit()
    conn.close()
    before = path.read_bytes()
    ro = Ledger(path, read_only=True)
    assert ro.heads() == [] and ro.verify() == [] and ro.verify_heads() == [] and len(ro.entries()) == 1
    assert path.read_bytes() == before
    with pytest.raises(sqlite3.OperationalError):
        ro.append(LedgerEntry(site="s", round=2, event="failed"))
