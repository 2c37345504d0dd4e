"""The per-process memo of file reads: a hit while the files are unchanged, a miss as soon as one is rewritten."""

from __future__ import annotations

import os

from common.config import load_scenario
from common.file_memo import FileMemo


def test_a_result_is_reused_while_the_file_is_unchanged_and_recomputed_after_a_rewrite(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("one")
    memo: FileMemo[str] = FileMemo(size=2)
    calls = []

    def read() -> str:
        calls.append(1)
        return f.read_text()

    assert memo.get((f,), "x", read) == "one" and memo.get((f,), "x", read) == "one"
    assert len(calls) == 1
    tmp = tmp_path / "a.tmp"  # an atomic replace with the same size and the same mtime: a new inode
    tmp.write_text("two")
    st = os.stat(f)
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, f)
    assert memo.get((f,), "x", read) == "two" and len(calls) == 2
    assert memo.get((f,), "y", read) == "two" and len(calls) == 3  # another key: its own entry


def test_a_missing_file_is_never_memoised(tmp_path):
    memo: FileMemo[int] = FileMemo()
    calls = []
    for _ in range(2):
        memo.get((tmp_path / "nope",), None, lambda: calls.append(1) or 0)
    assert len(calls) == 2


def test_the_oldest_result_is_dropped_beyond_the_size(tmp_path):
    f = tmp_path / "a"
    f.write_text("a")
    memo: FileMemo[int] = FileMemo(size=1)
    calls = []
    memo.get((f,), 1, lambda: calls.append(1) or 1)
    memo.get((f,), 2, lambda: calls.append(2) or 2)
    memo.get((f,), 1, lambda: calls.append(1) or 1)
    assert calls == [1, 2, 1]


def test_a_rewritten_scenario_is_read_again(tmp_path):
    schema = tmp_path / "s.toml"
    schema.write_text("")
    site = '[[sites]]\nname = "{}"\nsource = "mapped"\nmapping = "m.toml"\nmodalities = ["tabular"]\n'
    path = tmp_path / "scen.toml"
    path.write_text(site.format("aa") + '[scenario]\nschema = "s.toml"\n')
    first = load_scenario(path)
    assert load_scenario(path) is first
    path.write_text(site.format("bb") + '[scenario]\nschema = "s.toml"\n')  # same size
    assert [s.name for s in load_scenario(path).sites] == ["bb"]
