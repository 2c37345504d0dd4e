"""Atomic file writes (a reader sees the old file or the new one, never half of either), and the
digest of a set of named arrays that the server and the sites both compute."""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "arrays_digest", "create_private_file"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@functools.lru_cache(maxsize=64)
def _dtype_text(dtype: np.dtype) -> bytes:
    return str(dtype).encode()  # numpy builds the name anew on every str(): once per dtype here


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order (same on server and sites)."""
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode())
        h.update(_dtype_text(a.dtype))
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def create_private_file(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 if it does not exist yet; never open an existing one. True: created.

    Closing any descriptor of a file drops every POSIX lock this process holds on it, SQLite's included (its
    other connections in other threads): opening and closing an existing ledger made concurrent writers
    fail with "disk I/O error". A file that does not exist yet has no locks to lose.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True
