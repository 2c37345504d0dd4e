"""Each record's content digest (duplicates.record_digests) equals the row-by-row reference it replaced, for every
kind of cell a mapped table holds. Tables CONSTRUCTED by the test."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from common.data.duplicates import record_digests


def _reference(table, *, exclude, text, images):
    """The row-by-row digests (the implementation before issue 15's site-read speed-up), kept as the reference."""

    def cell(value):
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return "\x00"
        return repr(value.item() if isinstance(value, np.generic) else value)

    columns = [c for c in table.columns if c not in set(exclude)]
    out = []
    for i, row in enumerate(table[columns].itertuples(index=False, name=None)):
        h = hashlib.sha256("\x1f".join(cell(v) for v in row).encode("utf-8"))
        if text is not None:
            h.update(b"\x1etext\x1e" + text[i].encode("utf-8"))
        if images is not None:
            h.update(b"\x1eimage\x1e" + np.ascontiguousarray(images[i]).tobytes())
        out.append(h.hexdigest())
    return tuple(out)


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    floats = rng.normal(size=n)
    floats[rng.random(n) < 0.2] = np.nan
    words = rng.choice(np.array(["a", "b", "", "ü 7", None], dtype=object), size=n)
    return pd.DataFrame({
        "id": np.arange(n),
        "f": floats,
        "i": pd.array(np.where(rng.random(n) < 0.2, None, rng.integers(-5, 5, n)).tolist(), dtype="Int64"),
        "w": words,
        "b": pd.array(np.where(rng.random(n) < 0.2, None, rng.random(n) < 0.5).tolist(), dtype="boolean"),
        "c": pd.Categorical(rng.choice(["x", "y", None], size=n)),
        "plain_int": rng.integers(0, 3, n),
        "plain_bool": rng.random(n) < 0.5,
    })


def test_digests_equal_the_row_by_row_reference_for_every_kind_of_cell():
    for seed in range(5):
        table = _table(40, seed)
        rng = np.random.default_rng(seed)
        text = tuple(rng.choice(["", "note", "ünïcode"]) for _ in range(40))
        images = rng.random((40, 1, 4, 4)).astype(np.float32)
        for kw in (dict(exclude=["id"], text=None, images=None), dict(exclude=["id", "w"], text=text, images=images),
                   dict(exclude=[c for c in table.columns if c != "c"], text=None, images=images)):
            assert record_digests(table, **kw) == _reference(table, **kw)


def test_equal_content_under_other_ids_gives_equal_digests_and_any_other_cell_does_not():
    table = _table(6, 0)
    copy = table.iloc[[2]].assign(id=99)
    other = table.iloc[[2]].assign(id=98, f=1e9)
    digests = record_digests(pd.concat([table, copy, other], ignore_index=True), exclude=["id"], text=None,
                             images=None)
    assert digests[6] == digests[2] and digests[7] != digests[2]
    assert len(set(digests[:6])) == 6
