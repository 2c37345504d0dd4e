"""Memoise a function of files by the files' identity on disk, within one process.

A simulated site's Ray actor handles message after message, often for many sites of one scenario: without a memo
each message re-parses the scenario TOML (1000 inline site tables) and each site re-reads and re-validates the pooled
mapped file (60,000 rows) that every virtual site of a partition shares. :class:`FileMemo` keeps the result of such a
read keyed by the files' ``(path, device, inode, size, mtime_ns, ctime_ns)``: any rewrite of a file (a new inode by
an atomic replace, or a new size or time) misses, so a changed file is read again. Only for results that are never
mutated (frozen dataclasses, frames that callers copy before changing).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["FileMemo", "file_identity"]

T = TypeVar("T")


def file_identity(path: Path | str) -> tuple | None:
    """``(path, device, inode, size, mtime_ns, ctime_ns)`` of ``path`` (links followed); None if it cannot be stat'ed.

    The device and inode name the file whatever path reaches it (a link re-pointed elsewhere gives another inode),
    so the path is not resolved: one ``stat`` per file, as a site's memo checks each of its image files."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileMemo(Generic[T]):
    """The last ``size`` results of a computation, each kept while the files it read are unchanged.

    Parameters
    ----------
    size
        How many results are kept (least recently used dropped first).
    """

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._items: OrderedDict[tuple, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, files: tuple[Path | str, ...], extra: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, or its earlier result for the same ``extra`` while ``files`` are unchanged.

        A file that cannot be stat'ed is never memoised (``compute`` runs and raises its own clear error).
        """
        ids = tuple(file_identity(f) for f in files)
        if any(i is None for i in ids):
            return compute()
        key = (ids, extra)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every result."""
        with self._lock:
            self._items.clear()
