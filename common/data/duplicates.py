"""Records that are copies of one another in content (issue 12, case 19).

Differential privacy protects one *record*; the guarantee means "one person" only while each person is one record.
Fifty copies of one patient's row under fifty new ids are fifty records to the accountant and one person in truth:
that person's protection is then the group-privacy bound of 50 records, far weaker than ε. A site therefore looks
for training records whose content is identical (every mapped feature but the record id, the note text and the
image a record's own files hold) and, unless its own privacy file says otherwise (``duplicate-records = "allow"``),
refuses to train, naming the file, the ids of the copies, and what to do.

Content that a declared generator derives from the record (template notes, digit images: constructed, and a function
of the row and its id) adds nothing of its own and is left out of the comparison; a copy under a new id would get
another generated note and still be the same person.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["check_copies", "copies", "duplicates_error", "record_digests"]


def _column_cells(column: pd.Series) -> list[str]:
    """The text of each cell of ``column``: "\\x00" where missing (one value, whatever the source wrote), else the
    repr of its value as a Python scalar."""
    missing = column.isna().to_numpy(dtype=bool)
    return ["\x00" if gone else repr(v.item() if isinstance(v, np.generic) else v)
            for v, gone in zip(column.tolist(), missing, strict=True)]


def record_digests(table: pd.DataFrame, *, exclude: Sequence[str], text: Sequence[str] | None,
                   images: np.ndarray | None) -> tuple[str, ...]:
    """One sha256 per record of its content: every column of ``table`` but ``exclude`` (the id, and file paths
    whose content is hashed instead), then its text and its image if given (the site's own, not generated)."""
    columns = [c for c in table.columns if c not in set(exclude)]
    # column by column (a vectorised missing mask, then the values as Python scalars, as iterating a row gives
    # them): the same text per cell as walking the rows and testing each cell, in about half the time
    cells = [_column_cells(table[c]) for c in columns]
    rows = zip(*cells, strict=True) if cells else iter([()] * len(table))
    out = []
    for i, row in enumerate(rows):
        h = hashlib.sha256("\x1f".join(row).encode("utf-8"))
        if text is not None:
            h.update(b"\x1etext\x1e" + text[i].encode("utf-8"))
        if images is not None:
            h.update(b"\x1eimage\x1e" + np.ascontiguousarray(images[i]).tobytes())
        out.append(h.hexdigest())
    return tuple(out)


def copies(ids: np.ndarray, digests: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """Groups of record ids with identical content (each group of 2 or more, ids in file order), largest first."""
    groups: dict[str, list[str]] = defaultdict(list)
    for record, digest in zip(ids, digests, strict=True):
        groups[digest].append(str(record))
    found = [tuple(g) for g in groups.values() if len(g) > 1]
    return tuple(sorted(found, key=len, reverse=True))


def duplicates_error(site: str, groups: tuple[tuple[str, ...], ...], *, file: Path | None, mapping: Path | None):
    """The DataContractError a site raises when it refuses to train on copies (names the ids and what to do)."""
    from common.data.schema import DataContractError

    shown = "; ".join(f"{len(g)} records {', '.join(g[:8])}{', ...' if len(g) > 8 else ''}" for g in groups[:5])
    more = f" (and {len(groups) - 5} more groups)" if len(groups) > 5 else ""
    return DataContractError(
        f"site '{site}': {sum(len(g) for g in groups)} training records are copies of one another in content "
        f"(every mapped feature, note and image but the id): {shown}{more}. Differential privacy protects one "
        "record; if these are one person, that person is protected only as a group of that many records",
        file=file, mapping=mapping,
        expected="one record per person: remove the copies from the export; or, if they are different people "
                 "whose records coincide, set duplicate-records = \"allow\" in the site's own privacy file "
                 "(site.toml [privacy], or the scenario's [sites.privacy]): its ledger then states the largest "
                 "number of copies")


def check_copies(train: object, *, site: str, policy: str, data_dir: Path, source_args: object) -> int:
    """The largest number of training records that are copies of one another (1: none); with ``policy`` "refuse"
    any copy raises the :func:`duplicates_error` naming the site's file, the copies' ids and what to do.

    ``train`` is the site's training :class:`common.data.site_split.SiteSplit`; ``source_args`` its source keys.
    """
    if getattr(train, "content", None) is None:
        return 1
    groups = copies(train.ids, train.content)
    if groups and policy == "refuse":
        from common.data.sources import mapped_table
        from common.data.sources import source_args as parse_args

        mapping = data_dir / parse_args(source_args).mapping
        raise duplicates_error(site, groups, file=mapped_table(mapping).mapping.file.path, mapping=mapping)
    return max((len(g) for g in groups), default=1)
