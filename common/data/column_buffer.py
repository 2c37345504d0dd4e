"""Typed table columns filled chunk by chunk, allocated once at their final size (bounded reading, issue 12).

Cleaning turns each chunk of a site's file into typed column pieces (numpy arrays, pandas extension arrays). Joining
pieces at the end would hold every column twice, and the allocator keeps the freed pieces' pages: the peak would
be twice the table. A :class:`ColumnBuffer` is allocated at the record count, found by a first, cheap pass over the
file (:func:`common.data.readers.count_records`), and each piece is copied into its slice, so memory holds the
table plus one chunk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ColumnBuffer", "as_series", "compact", "take"]


def compact(column: Any) -> Any:
    """A column piece as an array: a list of words or texts becomes an object array (8 bytes a cell)."""
    if isinstance(column, list):
        array = np.empty(len(column), dtype=object)
        array[:] = column
        return array
    return column


def as_series(column: Any) -> Any:
    """A column for a DataFrame built without a copy (pandas scans and copies a bare object array to infer its type)."""
    column = compact(column)
    return pd.Series(column, dtype=object, copy=False) if getattr(column, "dtype", None) == object else column


def take(column: Any, order: np.ndarray) -> Any:
    """``column`` (an array or a list) reordered by ``order``."""
    return compact(column)[order]


class ColumnBuffer:
    """One column of ``size`` rows, allocated on its first piece with that piece's type, filled in order."""

    def __init__(self, size: int) -> None:
        self.size, self.filled = size, 0
        self.values: Any = None

    def add(self, piece: Any) -> None:
        """Copy the next piece (a numpy array or pandas extension array) into place."""
        piece = compact(piece)
        if self.values is None:
            if isinstance(piece, np.ndarray):
                self.values = np.empty(self.size, dtype=piece.dtype)
            else:  # an extension array (boolean, datetime): all missing, then overwritten
                self.values = piece.take(np.full(self.size, -1, dtype=np.intp), allow_fill=True)
        end = self.filled + len(piece)
        assert end <= self.size, "the caller checks the record count"
        self.values[self.filled : end] = piece
        self.filled = end

    def column(self) -> Any:
        """The filled column (an empty one if no piece came)."""
        assert self.filled == self.size, "the caller checks the record count"
        return self.values if self.values is not None else np.empty(0)
