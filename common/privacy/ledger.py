"""Append-only, hash-chained SQLite privacy ledger, shared by sites and the server.

A site's ledger is the source of truth for what its dataset has spent, across rounds and
runs (Flower's ``context.state`` only lives for one run). The server keeps one in the same
format for what sites reported. Rows are :class:`~common.privacy.entry.LedgerEntry`.

Guarantees
----------
* Append-only: this module issues no UPDATE or DELETE, and triggers in the file refuse them.
* Atomic appends: one ``BEGIN IMMEDIATE`` transaction reads the chain head and inserts the row (a server's
  whole round, rows and heads: :meth:`Ledger.append_round`); concurrent writers wait up to ``BUSY_TIMEOUT_S``
  for the lock. :meth:`Ledger.append_decided` reads the whole ledger and appends what a decision over it
  returns in that same transaction: a site's budget check and its reservation are one step;
  :meth:`Ledger.append_signed` appends a row and signs the head it becomes in one (one commit, not two).
* Durable: SQLite's defaults, rollback journal and ``synchronous=FULL`` (nothing here lowers them): a COMMIT returns
  once the journal and the file are synced; a reservation committed before a release is on disk, whatever follows.
* Schema: checked once per process per file (another inode is another file), and inside every write
  transaction against the schema cookie (:mod:`common.privacy.ledger_schema`).
* Private: the file is created, and kept, mode 0600 (a site's ledger in a simulation too).
* Hash chain: row ``seq`` stores ``prev_hash`` = hash of row ``seq-1`` (``GENESIS_HASH`` for
  the first) and ``hash`` = sha256 over the canonical JSON of all its other fields (see
  :mod:`common.privacy.entry`). :meth:`Ledger.verify` detects an edited field, a deleted or
  inserted row (seq gap / prev_hash mismatch), reordered rows, a forged row with a bad hash.
* Not detected by the chain alone: truncation of the newest rows, and a rewrite that recomputes
  every hash after the edit. Signed heads catch both: :meth:`Ledger.sign_head` signs
  :meth:`Ledger.head` (:mod:`common.privacy.signing`) and keeps the signature in the file's
  second table, ``heads`` (append-only, with a hash chain of its own); the server records
  the heads sites send it in the same table of its ledger file (:meth:`Ledger.append_head`).
  ``fedfusion audit`` (``server/audit.py``) checks a ledger against those heads.
* A file written before the ``heads`` table gains an empty one when first opened for writing;
  ``Ledger(path, read_only=True)`` (the audit) never writes.

Accounting from the ledger (:meth:`Ledger.mechanism_history`, :meth:`Ledger.spent`) refuses
a ledger that fails :meth:`Ledger.verify`: an ε computed from tampered rows could be too low.
ε values mean what :mod:`common.privacy.accountant` says (sample-level, add/remove-one, at
the δ passed).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from common.privacy.accountant import Mechanism, epsilon_from_history
from common.privacy.chain import chain_append, chain_problems, row_where
from common.privacy.entry import (GENESIS_HASH, NO_DP, LedgerEntry, entry_hash, mechanism_history_of,
                                  statement_mode)
from common.privacy.ledger_schema import (FIELDS, HEAD_FIELDS, INSERT, INSERT_HEAD, LEDGER_KIND, SCHEMA_VERSION,
                                          SELECT, SELECT_HEADS, LedgerIntegrityError, ensure_schema, file_identity,
                                          meta_problems, read_schema, recheck_schema, remember_schema, schema_cookie,
                                          schema_known)
from common.privacy.signing import HeadRecord, SignedHead, head_record_hash
from common.storage import create_private_file

__all__ = ["BUSY_TIMEOUT_S", "LEDGER_KIND", "SCHEMA_VERSION", "HeadRecord", "Ledger", "LedgerEntry",
           "LedgerIntegrityError", "mechanism_history_of"]

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another writer's lock
_HEAD_CHAIN: dict[str, Any] = dict(record=HeadRecord, hasher=head_record_hash, what="head record", prefix="heads ")


class Ledger:
    """An append-only, hash-chained privacy ledger in one SQLite file.

    Parameters
    ----------
    path : Path
        The SQLite file; it and its parent folders are created if absent. An existing file
        must be a ledger of this kind and schema version.
    read_only : bool
        Open an existing file without ever writing to it (no table is created): for audits.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path, self.read_only, self._identity = Path(path), read_only, None
        if read_only:
            if not self.path.is_file():
                raise LedgerIntegrityError(f"{self.path}: no such ledger file")
            if meta_problems(meta := self._snapshot()[0]):
                raise LedgerIntegrityError(f"{self.path}: {meta_problems(meta)[0]}")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = create_private_file(self.path)
        os.chmod(self.path, 0o600)  # and kept private (a file an older version wrote 0644); chmod takes no lock
        self._identity = file_identity(self.path)  # every write refuses another file at this path
        if created or schema_known(self._identity) is None or not self.path.stat().st_size:  # see ledger_schema
            self._check_schema(self._identity)

    def _check_schema(self, identity: tuple[str, int, int]) -> None:
        """Read what the file lacks; only a file that lacks something gets a write transaction that creates it."""
        with self._transaction("DEFERRED") as conn:
            cookie, missing, meta = read_schema(conn)
        if meta and meta_problems(meta):
            raise LedgerIntegrityError(f"{self.path}: {meta_problems(meta)[0]}")
        if missing or not meta:
            with self._transaction("IMMEDIATE") as conn:
                cookie = ensure_schema(conn, self.path)
        remember_schema(self.path, identity, cookie)

    # ------------------------------------------------------------ connection
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if getattr(self, "read_only", False):
            uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
            conn = sqlite3.connect(uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, uri=True)
        else:
            conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction: IMMEDIATE takes the write lock at once (writers), DEFERRED reads a snapshot."""
        with self._connect() as conn:
            conn.execute(f"BEGIN {mode}")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that first checks, inside itself, the file, its schema and meta (module ledger_schema).

        Raises
        ------
        LedgerIntegrityError
            If the file's meta names another kind of file or schema version, or the file at this path is not
            the one opened (deleted or replaced since): nothing is written.
        """
        with self._transaction("IMMEDIATE") as conn:
            if self.read_only:  # opened mode=ro: SQLite itself refuses the write
                yield conn
                return
            identity = file_identity(self.path)
            if identity != self._identity:
                raise LedgerIntegrityError(f"{self.path}: this is not the file this ledger opened (it was deleted or "
                                           "replaced since: another inode); nothing is written to it. Open the "
                                           "ledger again, so that the file is checked first")
            cookie = schema_cookie(conn)
            if schema_known(identity) != cookie:
                cookie = recheck_schema(conn, self.path)
            elif problems := meta_problems(dict(conn.execute("SELECT key, value FROM meta").fetchall())):
                raise LedgerIntegrityError(f"{self.path}: {problems[0]}", problems=problems)
            yield conn
        remember_schema(self.path, identity, cookie)

    def _rows(self, conn: sqlite3.Connection, site: str | None = None) -> list[dict[str, Any]]:
        sql, args = (SELECT + " ORDER BY seq", ()) if site is None else (
            SELECT + " WHERE site = ? ORDER BY seq", (site,))
        return [dict(zip(FIELDS, r)) for r in conn.execute(sql, args).fetchall()]

    def _snapshot(self, *, heads: bool = False) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
        """Meta, all rows and (``heads``) all heads rows, read in one transaction (a consistent snapshot)."""
        with self._transaction("DEFERRED") as conn:
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if has_meta else {}
            return meta, (self._rows(conn) if has_meta else []), (self._head_rows(conn) if heads else [])

    # ----------------------------------------------------------------- write
    def append(self, entry: LedgerEntry) -> LedgerEntry:
        """Append ``entry`` atomically and return it with ``seq``, ``ts``, ``prev_hash``, ``hash`` set.

        Raises
        ------
        ValueError
            If the entry already carries chain fields (they are assigned here, never by the caller).
        """
        self._refuse_chained(entry, "append()")
        with self._write() as conn:
            return chain_append(conn, "entries", entry, entry_hash, INSERT, FIELDS)

    def append_signed(self, entry: LedgerEntry, key: Any, *, secure_mode: bool | None = None,
                      epsilon_budget: float | None = None) -> tuple[LedgerEntry, HeadRecord]:
        """Append ``entry`` and sign the head it becomes (for its site, round and run), in ONE write transaction:
        the row and its signed head are committed together or not at all (one commit, not two).

        Returns the row as stored and the heads row (see :meth:`sign_head`).

        Raises
        ------
        ValueError
            If the entry already carries chain fields.
        """
        self._refuse_chained(entry, "append_signed()")
        with self._write() as conn:
            row = chain_append(conn, "entries", entry, entry_hash, INSERT, FIELDS)
            return row, self._sign_newest(conn, key, site=entry.site, round=entry.round, run_id=entry.run_id,
                                          secure_mode=secure_mode, epsilon_budget=epsilon_budget)

    def _refuse_chained(self, entry: LedgerEntry, what: str) -> None:
        if entry.seq is not None or entry.ts or entry.prev_hash or entry.hash:
            raise ValueError(f"{self.path}: {what} assigns seq/ts/prev_hash/hash; got an entry that already has "
                             f"seq={entry.seq!r}, ts={entry.ts!r} (site={entry.site!r}, round={entry.round})")

    def append_decided(self, decide: Callable[[list[LedgerEntry]], LedgerEntry]) -> LedgerEntry:
        """Append ``decide(rows)`` where ``rows`` is the verified ledger, in ONE write transaction.

        The write lock is held from the read to the insert: no other writer (thread or process) can append in
        between, so a decision (a budget check) and its row (a reservation, or a decline) cannot be separated.

        Raises
        ------
        LedgerIntegrityError
            If the ledger fails verification (nothing is appended).
        """
        with self._write() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            rows = self._rows(conn)
            problems = meta_problems(meta) + chain_problems(rows)
            if problems:
                raise LedgerIntegrityError(
                    f"{self.path}: refusing to decide from a ledger that fails verification "
                    f"({len(problems)} problem(s)); first: {problems[0]}", problems=problems)
            entry = decide([LedgerEntry(**r) for r in rows])
            if entry.seq is not None or entry.ts or entry.prev_hash or entry.hash:
                raise ValueError(f"{self.path}: append_decided() assigns seq/ts/prev_hash/hash")
            return chain_append(conn, "entries", entry, entry_hash, INSERT, FIELDS)

    def append_round(self, entries: Sequence[LedgerEntry], heads: Sequence[HeadRecord] = ()) -> None:
        """Append ``entries``, then ``heads``, in ONE write transaction: a round is recorded whole or not at all."""
        with self._write() as conn:
            for entry in entries:
                if entry.seq is not None or entry.hash:
                    raise ValueError(f"{self.path}: append_round() assigns seq/ts/prev_hash/hash (site={entry.site!r})")
                chain_append(conn, "entries", entry, entry_hash, INSERT, FIELDS)
            for record in heads:
                self._append_head(conn, record)

    # ------------------------------------------------------------------ read
    def entries(self, *, site: str | None = None) -> list[LedgerEntry]:
        """Rows in seq order (only ``site``'s if given). Does not verify the chain: see :meth:`verify`.

        Raises
        ------
        LedgerIntegrityError
            If a row is not a valid entry (e.g. a value of the wrong type was written into the file).
        """
        with self._transaction("DEFERRED") as conn:
            rows = self._rows(conn, site)
        out = []
        for row in rows:
            try:
                out.append(LedgerEntry(**row))
            except (TypeError, ValueError) as exc:
                raise LedgerIntegrityError(f"{self.path}: {row_where(row)} is not a valid ledger entry: {exc}") from exc
        return out

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest row; ``(0, GENESIS_HASH)`` when empty (what a signature will cover)."""
        with self._transaction("DEFERRED") as conn:
            last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)

    def verify(self) -> list[str]:
        """Problems with the file's meta and hash chain; ``[]`` means intact (up to truncation).

        Each problem names the row's seq, site and round.
        """
        meta, rows, _ = self._snapshot()
        return meta_problems(meta) + chain_problems(rows)

    def verified(self) -> tuple[list[str], list[str], list[LedgerEntry], list[HeadRecord]]:
        """From ONE snapshot: the problems of :meth:`verify` and of :meth:`verify_heads`, and when there are none,
        every row and every heads row (what a site checks before each round, in one read)."""
        meta, rows, heads = self._snapshot(heads=True)
        problems, head_problems = meta_problems(meta) + chain_problems(rows), chain_problems(heads, **_HEAD_CHAIN)
        if problems or head_problems:
            return problems, head_problems, [], []
        return [], [], [LedgerEntry(**r) for r in rows], [HeadRecord(**h) for h in heads]

    # ------------------------------------------------------------ accounting
    def mechanism_history(self, *, site: str, dataset_id: str = "") -> list[Mechanism]:
        """The site's DP-SGD history ``[(σ, q, steps), ...]`` from its "reserve" rows, in seq order.

        A reservation counts as spent whether or not it was confirmed (conservative). A release
        without DP (``mode=none``) is no mechanism: its ε is ∞, which no history can express, so
        this raises rather than leave it out (check :meth:`released_without_dp` first).
        ``dataset_id=""`` means ALL of the site's reservations (never "only rows without an id");
        a non-empty ``dataset_id`` keeps only that dataset's. Runs and federations are not
        filtered: a dataset's budget spans all of them.

        Raises
        ------
        LedgerIntegrityError
            If :meth:`verify` finds any problem: ε from a tampered ledger could be too low.
        ValueError
            If the site released without DP (its ε is ∞).
        """
        meta, rows, _ = self._snapshot()  # verify and account from the same snapshot
        problems = meta_problems(meta) + chain_problems(rows)
        if problems:
            raise LedgerIntegrityError(
                f"{self.path}: refusing to account from a ledger that fails verification "
                f"({len(problems)} problem(s)); first: {problems[0]}", problems=problems)
        return mechanism_history_of([LedgerEntry(**row) for row in rows], site=site, dataset_id=dataset_id,
                                    where=str(self.path))

    def released_without_dp(self, *, site: str, entries: Sequence[LedgerEntry] | None = None) -> list[LedgerEntry]:
        """The site's reserve rows of releases without DP (``mode=none``): after any of them its ε is ∞."""
        rows = self.entries(site=site) if entries is None else [e for e in entries if e.site == site]
        return [e for e in rows if e.event == "reserve" and statement_mode(e.reason) == NO_DP]

    def spent(self, *, site: str, delta: float, accountant: str = "prv", dataset_id: str = "") -> float:
        """ε the site has spent (all its reservations, or one dataset's) at ``delta`` by ``accountant``.

        Raises
        ------
        LedgerIntegrityError
            If the ledger fails verification.
        """
        if self.released_without_dp(site=site):
            return float("inf")
        history = self.mechanism_history(site=site, dataset_id=dataset_id)
        return epsilon_from_history(history, delta=delta, accountant=accountant)

    # ---------------------------------------------------------- signed heads
    def _head_rows(self, conn: sqlite3.Connection, site: str | None = None) -> list[dict[str, Any]]:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='heads'").fetchone():
            return []  # a file written before signed heads, opened read-only
        sql, args = (SELECT_HEADS + " ORDER BY seq", ()) if site is None else (
            SELECT_HEADS + " WHERE site = ? ORDER BY seq", (site,))
        return [dict(zip(HEAD_FIELDS, r)) for r in conn.execute(sql, args).fetchall()]

    def _append_head(self, conn: sqlite3.Connection, record: HeadRecord) -> HeadRecord:
        if record.seq is not None or record.ts or record.prev_hash or record.hash:
            raise ValueError(f"{self.path}: append_head() assigns seq/ts/prev_hash/hash (site={record.site!r})")
        return chain_append(conn, "heads", record, head_record_hash, INSERT_HEAD, HEAD_FIELDS)

    def append_head(self, record: HeadRecord) -> HeadRecord:
        """Append a signed head (e.g. one a site sent the server) to the ``heads`` table, atomically."""
        with self._write() as conn:
            return self._append_head(conn, record)

    def sign_head(self, key: Any, *, site: str, round: int, run_id: str = "", secure_mode: bool | None = None,
                  epsilon_budget: float | None = None) -> HeadRecord:
        """Sign this ledger's newest row with ``key`` and keep the signature in ``heads``, in one transaction.

        Returns the heads row: its ``head_seq``/``head_hash``/``public_key``/``signature`` are
        what the site sends the server.
        """
        with self._write() as conn:
            return self._sign_newest(conn, key, site=site, round=round, run_id=run_id, secure_mode=secure_mode,
                                     epsilon_budget=epsilon_budget)

    def _sign_newest(self, conn: sqlite3.Connection, key: Any, *, site: str, round: int, run_id: str,
                     secure_mode: bool | None, epsilon_budget: float | None) -> HeadRecord:
        """Sign the newest row as the caller's write transaction sees it and append that head to ``heads``."""
        last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        head_seq, head_hash = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
        signed = SignedHead.sign(key, kind="site-ledger", site=site, seq=head_seq, head_hash=head_hash)
        return self._append_head(conn, HeadRecord(
            kind=signed.kind, site=site, round=round, run_id=run_id, head_seq=head_seq, head_hash=head_hash,
            public_key=signed.public_key, signature=signed.signature, secure_mode=secure_mode,
            epsilon_budget=epsilon_budget))

    def sign_state(self, key: Any, *, signer: str = "server") -> tuple[SignedHead, SignedHead]:
        """Signed heads of the ``entries`` chain and of the ``heads`` chain, read in one snapshot.

        The server's own anchor (``ledger-head.json``): truncating or rewriting either table
        after it was signed is detected.
        """
        with self._transaction("DEFERRED") as conn:
            last = conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            heads = self._head_rows(conn)
        e_seq, e_hash = (int(last[0]), str(last[1])) if last else (0, GENESIS_HASH)
        h_seq, h_hash = (int(heads[-1]["seq"]), str(heads[-1]["hash"])) if heads else (0, GENESIS_HASH)
        return (SignedHead.sign(key, kind="server-ledger", site=signer, seq=e_seq, head_hash=e_hash),
                SignedHead.sign(key, kind="server-heads", site=signer, seq=h_seq, head_hash=h_hash))

    def heads(self, *, site: str | None = None) -> list[HeadRecord]:
        """Rows of the ``heads`` table in seq order (only ``site``'s if given); not verified (LedgerIntegrityError:
        a row that is not a valid head record)."""
        with self._transaction("DEFERRED") as conn:
            rows = self._head_rows(conn, site)
        try:
            return [HeadRecord(**row) for row in rows]
        except (TypeError, ValueError) as exc:
            raise LedgerIntegrityError(f"{self.path}: a heads row is not a valid head record: {exc}") from exc

    def heads_head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest ``heads`` row; ``(0, GENESIS_HASH)`` when none."""
        with self._transaction("DEFERRED") as conn:
            rows = self._head_rows(conn)
        return (int(rows[-1]["seq"]), str(rows[-1]["hash"])) if rows else (0, GENESIS_HASH)

    def verify_heads(self) -> list[str]:
        """Problems of the ``heads`` table's own hash chain (not of the signatures: see the audit)."""
        with self._transaction("DEFERRED") as conn:
            rows = self._head_rows(conn)
        return chain_problems(rows, **_HEAD_CHAIN)
