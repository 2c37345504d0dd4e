"""The ledger file's schema (tables, append-only triggers, meta) and the check that a file has it.

A site opens its ledger several times a message (the reply cache, its privacy state). Checking the schema with
``CREATE ... IF NOT EXISTS`` under the write lock every time cost a write transaction per open. Instead:

* **once per process per file**: :func:`schema_known` remembers, per file identity ``(path, st_dev, st_ino)``,
  the schema cookie (``PRAGMA schema_version``, which SQLite bumps on any CREATE/DROP/ALTER) seen when the file
  was last checked. A file deleted or replaced (another inode) is not known, so it is checked again, and so is
  an empty file (created again at the path by someone else: it may have the deleted file's inode number);
* **a read first**: :func:`read_schema` lists what of the schema and meta a file lacks in one read transaction
  (no write lock, no journal); only a file that lacks something gets the write transaction that creates it;
* **every write transaction** refuses a file other than the one its ``Ledger`` opened (another inode), compares the
  file's cookie with the remembered one inside its own transaction and re-creates what can be dropped in place (a
  trigger is back before the write), refuses a file that lost its tables (:func:`recheck_schema`), and checks
  meta: ``Ledger._write``. So the guarantees of the old per-open check hold at every write, not only at open.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from common.privacy.entry import LedgerEntry
from common.privacy.signing import HeadRecord

__all__ = ["FIELDS", "HEAD_FIELDS", "INSERT", "INSERT_HEAD", "LEDGER_KIND", "SCHEMA_VERSION", "SELECT", "SELECT_HEADS",
           "LedgerIntegrityError", "ensure_schema", "file_identity", "meta_problems", "read_schema", "recheck_schema",
           "remember_schema", "schema_cookie", "schema_known"]

LEDGER_KIND = "fedfusion-privacy-ledger"  # meta.kind: refuses to treat another SQLite file as a ledger
SCHEMA_VERSION = "1"  # meta.schema_version: bump on any change of columns or hashing

FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(LedgerEntry))
_SQL_TYPE = {"str": "TEXT NOT NULL", "int": "INTEGER NOT NULL", "int | None": "INTEGER",
             "float | None": "REAL"}
_COLUMNS = ",\n  ".join(
    '"seq" INTEGER PRIMARY KEY' if f.name == "seq" else f'"{f.name}" {_SQL_TYPE[f.type]}'
    for f in dataclasses.fields(LedgerEntry)
)
_SCHEMA: tuple[str, ...] = (  # one statement each: executescript() would COMMIT our open transaction
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS entries (\n  {_COLUMNS}\n)",
    "CREATE INDEX IF NOT EXISTS entries_by_site ON entries (site, seq)",
    "CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries "
    "BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS entries_no_delete BEFORE DELETE ON entries "
    "BEGIN SELECT RAISE(ABORT, 'privacy ledger is append-only: DELETE refused'); END",
)
HEAD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(HeadRecord))
_HEAD_SQL = {"str": "TEXT NOT NULL", "int": "INTEGER NOT NULL", "int | None": "INTEGER",
             "bool | None": "INTEGER", "float | None": "REAL"}
_HEADS_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS heads (\n  " + ",\n  ".join(
        '"seq" INTEGER PRIMARY KEY' if f.name == "seq" else f'"{f.name}" {_HEAD_SQL[f.type]}'
        for f in dataclasses.fields(HeadRecord)) + "\n)",
    "CREATE TRIGGER IF NOT EXISTS heads_no_update BEFORE UPDATE ON heads "
    "BEGIN SELECT RAISE(ABORT, 'privacy ledger heads are append-only: UPDATE refused'); END",
    "CREATE TRIGGER IF NOT EXISTS heads_no_delete BEFORE DELETE ON heads "
    "BEGIN SELECT RAISE(ABORT, 'privacy ledger heads are append-only: DELETE refused'); END",
)
#: (type, name) of every object the statements above create: what a complete file has in sqlite_master
_OBJECTS: frozenset[tuple[str, str]] = frozenset(
    (s.split()[1].lower(), s.split()[5]) for s in (*_SCHEMA, *_HEADS_SCHEMA))


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f'"{n}"' for n in names)


SELECT_HEADS = f"SELECT {_quoted(HEAD_FIELDS)} FROM heads"
INSERT_HEAD = f"INSERT INTO heads ({_quoted(HEAD_FIELDS)}) VALUES ({', '.join('?' for _ in HEAD_FIELDS)})"
SELECT = f"SELECT {_quoted(FIELDS)} FROM entries"
INSERT = f"INSERT INTO entries ({_quoted(FIELDS)}) VALUES ({', '.join('?' for _ in FIELDS)})"


class LedgerIntegrityError(ValueError):
    """The ledger file fails verification (or is not a ledger); ``problems`` lists why."""

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def meta_problems(meta: dict[str, str]) -> list[str]:
    if (meta.get("kind"), meta.get("schema_version")) == (LEDGER_KIND, SCHEMA_VERSION):
        return []
    return [f"meta: kind={meta.get('kind')!r}, schema_version={meta.get('schema_version')!r}; expected "
            f"{LEDGER_KIND!r}, {SCHEMA_VERSION!r} (not a fedfusion ledger, or another schema version)"]


# ------------------------------------------------------------ what this process has checked
_KNOWN: dict[tuple[str, int, int], int] = {}  # file identity -> schema cookie when last checked
_KNOWN_LOCK = threading.Lock()


def file_identity(path: Path) -> tuple[str, int, int]:
    """``(absolute path, st_dev, st_ino)``: another file at the same path (deleted, replaced) has another one."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_dev, st.st_ino)


def schema_known(identity: tuple[str, int, int]) -> int | None:
    """The schema cookie this process saw when it last checked the file ``identity``; None: never checked."""
    with _KNOWN_LOCK:
        return _KNOWN.get(identity)


def remember_schema(path: Path, identity: tuple[str, int, int], cookie: int) -> None:
    """Remember that ``identity`` had the whole schema at ``cookie``, unless ``path`` is another file by now."""
    try:
        still = file_identity(path) == identity
    except OSError:
        still = False
    with _KNOWN_LOCK:
        if still:
            _KNOWN[identity] = cookie
        else:
            _KNOWN.pop(identity, None)


# ------------------------------------------------------------------------ the check itself
def schema_cookie(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA schema_version").fetchone()[0])


def read_schema(conn: sqlite3.Connection) -> tuple[int, list[str], dict[str, str]]:
    """``(cookie, missing objects, meta)`` of the file, read inside the caller's transaction (no write)."""
    present = {(t, n) for t, n in conn.execute("SELECT type, name FROM sqlite_master")}
    missing = sorted(f"{t} {n}" for t, n in _OBJECTS - present)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if ("table", "meta") in present else {}
    return schema_cookie(conn), missing, meta


def ensure_schema(conn: sqlite3.Connection, where: Path) -> int:
    """Create what the file lacks and its meta, or refuse another kind of file; inside the caller's WRITE
    transaction. Returns the schema cookie after it.

    Raises
    ------
    LedgerIntegrityError
        If the file's meta names another kind of file or schema version.
    """
    for statement in (*_SCHEMA, *_HEADS_SCHEMA):  # idempotent
        conn.execute(statement)
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if not meta:
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                         [("kind", LEDGER_KIND), ("schema_version", SCHEMA_VERSION)])
    elif meta_problems(meta):
        raise LedgerIntegrityError(f"{where}: {meta_problems(meta)[0]}")
    return schema_cookie(conn)


def recheck_schema(conn: sqlite3.Connection, where: Path) -> int:
    """In a write transaction on a file this process checked, whose schema cookie changed since: put back what can
    be dropped in place (triggers, the index, an older file's heads table) and check meta (:func:`ensure_schema`),
    but refuse a file that lost its meta or entries table: its history is gone, and a fresh chain must never be
    started in it by a write (only an open creates a ledger). Returns the schema cookie after it.

    Raises
    ------
    LedgerIntegrityError
        If the file lacks the meta or entries table, or its meta names another kind of file or version.
    """
    lost = [m for m in read_schema(conn)[1] if m in ("table meta", "table entries")]
    if lost:
        raise LedgerIntegrityError(f"{where}: the file lost its {' and '.join(lost)} since it was opened (deleted "
                                   "and created again?); its history is gone, nothing is written to it", problems=lost)
    return ensure_schema(conn, where)
