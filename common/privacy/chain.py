"""The hash-chain recipe shared by a ledger's two tables (``entries`` and ``heads``): append and verify."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from common.privacy.entry import GENESIS_HASH, LedgerEntry, entry_hash

__all__ = ["chain_append", "chain_problems", "row_where"]


def chain_append(conn: sqlite3.Connection, table: str, row: Any, hash_of: Callable[[Any], str], insert_sql: str,
                  fields: Sequence[str]) -> Any:
    """Append ``row`` to hash-chained ``table`` (``entries`` or ``heads``) inside the caller's transaction.

    The one chaining recipe: seq = last + 1, prev_hash = the last row's hash (genesis for the first), a UTC
    timestamp, then the row's own hash over all of that. Returns the row as stored.
    """
    last = conn.execute(f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
    seq, prev_hash = (int(last[0]) + 1, str(last[1])) if last else (1, GENESIS_HASH)
    ts = datetime.now(timezone.utc).isoformat(timespec="microseconds")
    chained = dataclasses.replace(row, seq=seq, ts=ts, prev_hash=prev_hash)
    chained = dataclasses.replace(chained, hash=hash_of(chained))
    conn.execute(insert_sql, [getattr(chained, n) for n in fields])
    return chained


def row_where(row: dict[str, Any]) -> str:
    return f"seq={row.get('seq')!r} (site={row.get('site')!r}, round={row.get('round')!r})"


def chain_problems(rows: Sequence[dict[str, Any]], *, record: Any = LedgerEntry, hasher: Any = entry_hash,
                    what: str = "ledger entry", prefix: str = "") -> list[str]:
    """Problems of the hash chain ``rows`` (raw column dicts, in seq order) of ``record`` rows."""
    problems: list[str] = []
    expected_seq, prev_hash, prev_where = 1, GENESIS_HASH, "the start (genesis)"
    for row in rows:
        where = prefix + row_where(row)
        if row["seq"] != expected_seq:
            problems.append(f"{where}: expected seq {expected_seq} — rows deleted, inserted or reordered")
        if row["prev_hash"] != prev_hash:
            problems.append(f"{where}: prev_hash does not match the hash of {prev_where} — "
                            "a row before it was deleted, inserted, reordered or rewritten")
        try:
            entry = record(**row)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where}: not a valid {what} ({exc})")
        else:
            if hasher(entry) != row["hash"]:
                problems.append(f"{where}: hash does not match its content — row edited, or forged with a bad hash")
        expected_seq = row["seq"] + 1 if isinstance(row["seq"], int) else expected_seq + 1
        prev_hash, prev_where = row["hash"], where
    return problems
