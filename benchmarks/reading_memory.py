"""Peak memory of reading and cleaning one site file, as a multiple of the file's size (issue 12: at most 3x).

It writes a CSV of about ``--mb`` MB by repeating the rows of Cleveland's export (UCI format: 14 numeric columns,
``?`` for missing; the Cleveland mapping numbers the ids), then, in a fresh Python process per measurement, maps it
with ``common.data.cleaning.load_mapped``:

* ``tracemalloc`` peak: every Python and numpy allocation made while loading (the data's own footprint);
* ``ru_maxrss`` growth: the process's resident peak minus its resident size just before loading (what the machine
  sees, allocator slack included).

``--root DIR`` measures the code in another checkout (e.g. an export of the base commit) with the same file::

    .venv/bin/python benchmarks/reading_memory.py --mb 16
    git archive d954fa0 | tar -x -C /tmp/base && .venv/bin/python benchmarks/reading_memory.py --mb 16 --root /tmp/base
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPORT = ROOT / "data" / "uci-heart-disease" / "exports" / "processed.cleveland.data"
MAPPING = ROOT / "data" / "mappings" / "cleveland.toml"

_PROBE = textwrap.dedent("""
    import gc, json, resource, sys, time, tracemalloc
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from common.data.cleaning import load_mapped
    mapping, data, trace = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
    small = data.with_name("small.data")  # warm up: modules imported lazily while loading are not the data's
    small.write_text("".join(data.open().readline() for _ in range(1)))
    load_mapped(mapping, data_file=small)
    gc.collect()
    def rss_kib():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    before = rss_kib()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    table = load_mapped(mapping, data_file=data).table
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    print(json.dumps({"rows": len(table), "seconds": seconds, "traced_peak": peak,
                      "rss_growth": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before * 1024,
                      "table_bytes": int(table.memory_usage(deep=False).sum())}))
""")


def _write(target_mb: float, folder: Path) -> Path:
    rows = EXPORT.read_text().splitlines()
    path = folder / "big.cleveland.data"
    size, target = 0, int(target_mb * 1024**2)
    with path.open("w") as out:
        while size < target:
            for row in rows:
                out.write(row + "\n")
                size += len(row) + 1
    return path


def _measure(root: Path, data: Path, *, trace: bool) -> dict:
    mapping = data.parent / "big.toml"  # the Cleveland mapping with its schema path made absolute
    text = MAPPING.read_text().replace('"../schemas/heart.toml"', json.dumps(str(root / "data/schemas/heart.toml")))
    limit = "\nmax_bytes = 4_000_000_000\n" if (root / "common/data/readers").is_dir() else "\n"
    mapping.write_text(text.replace('missing = ["?"]\n', 'missing = ["?"]' + limit, 1))
    out = subprocess.run([sys.executable, "-c", _PROBE, str(root), str(mapping), str(data), "1" if trace else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=16.0, help="size of the generated CSV in MB (default 16)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose code is measured (default: this one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = _write(args.mb, Path(folder))
        size = data.stat().st_size
        traced = _measure(args.root.resolve(), data, trace=True)
        plain = _measure(args.root.resolve(), data, trace=False)
    print(f"code: {args.root.resolve()}\nfile: {size / 1024**2:.1f} MiB, {traced['rows']} rows x 14 columns (CSV)")
    print(f"tracemalloc peak while loading: {traced['traced_peak'] / 1024**2:8.1f} MiB = "
          f"{traced['traced_peak'] / size:.2f}x the file")
    print(f"resident-set growth (no tracing): {plain['rss_growth'] / 1024**2:8.1f} MiB = "
          f"{plain['rss_growth'] / size:.2f}x the file")
    print(f"the cleaned table's arrays:      {plain['table_bytes'] / 1024**2:8.1f} MiB = "
          f"{plain['table_bytes'] / size:.2f}x the file (words are shared objects: 8 bytes a cell)")
    print(f"load time (no tracing): {plain['seconds']:.1f} s")


if __name__ == "__main__":
    main()
