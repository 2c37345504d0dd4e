"""Count what the ledger asks of SQLite: every connection opened through ``sqlite3.connect`` while the counter is
installed reports its statements (``Connection.set_trace_callback``), so a test can pin how many write
transactions, reads and commits one operation costs."""

from __future__ import annotations

import sqlite3
from collections import Counter

import pytest

__all__ = ["SqlCounter"]


class SqlCounter:
    """Install with ``SqlCounter(monkeypatch)``; ``writes`` = BEGIN IMMEDIATE, ``reads`` = BEGIN DEFERRED."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        self.statements: list[str] = []
        real = sqlite3.connect

        def connect(*args, **kwargs):
            conn = real(*args, **kwargs)
            self.counts["connect"] += 1
            conn.set_trace_callback(self._trace)
            return conn

        monkeypatch.setattr(sqlite3, "connect", connect)

    def _trace(self, statement: str) -> None:
        self.statements.append(statement)
        words = statement.split()
        if words and words[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.counts[" ".join(w.upper() for w in words[:2])] += 1

    def reset(self) -> None:
        self.counts.clear()
        self.statements.clear()

    @property
    def writes(self) -> int:
        return self.counts["BEGIN IMMEDIATE"]

    @property
    def reads(self) -> int:
        return self.counts["BEGIN DEFERRED"]

    @property
    def commits(self) -> int:
        return self.counts["COMMIT"]

    @property
    def rollbacks(self) -> int:
        return self.counts["ROLLBACK"]
