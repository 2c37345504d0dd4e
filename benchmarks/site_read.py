"""A site's first read of its own data, before/after, side by side in one invocation (issue 15).

Builds each site's data the way a message does (``client.site_data.load_site``, as ``client/round.py`` calls it) for
sites of the 1000-site Fashion-MNIST scenario (``simulations/scenarios/fashion1000.toml``; the data written by
``data/fashion-mnist/prepare.py --scenario 1000``), in a fresh process per code version: site 0 first (imports, the
pooled CSV read and validated, the partition cut: once per actor), then ``--sites`` others, each a site the process
has not seen (what almost every message of the 10 %-a-round scenario is). The "before" code is ``git archive`` of
``--before``; "after" is this working tree, measured three ways: its decoded-image cache off (``feature-cache``
false), its first run (empty cache folder: decode and write) and a later run (the cache written by the first).
Every site's image files are read once beforehand, so that all variants find them in the page cache. The two
processes stay up and take turns site by site, so that the machine's load falls alike on all; medians of ms per
site, and their ratios to "before".

    .venv/bin/python benchmarks/site_read.py --before 289e0f0 --sites 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "simulations" / "scenarios" / "fashion1000.toml"


def _worker(cache_root: str) -> None:
    """Serve requests on stdin, one JSON line ``[site, variant]`` each; answer the ms the site's data took."""
    from client import site_data
    from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
    from common.data import sources

    run = parse_run_config(app_defaults() | {"scenario-file": str(SCENARIO), "site-cache-root": cache_root,
                                             "site-state-root": str(Path(cache_root) / "state")})
    scen = load_scenario(SCENARIO)
    memos = [getattr(module, name) for module, name in ((site_data, "_MEMO"), (sources, "_SITE_TABLES"))
             if hasattr(module, name)]  # the per-site memos (not the pooled file's): each site is one not seen yet

    def load(i: int, *, cache: bool) -> object:
        site = resolve_site({"partition-id": i}, run)
        site = site if cache else dataclasses.replace(site, feature_cache=False)
        return site_data.load_site(site, model_modalities=scen.modalities, text_encoder="minilm-frozen",
                                   schema=scen.schema)

    load(0, cache=True)  # imports, the pooled file read and validated, the partition cut: once per actor
    print("ready", flush=True)
    for line in sys.stdin:
        i, variant = json.loads(line)
        for memo in memos:
            memo.clear()
        start = time.perf_counter()
        load(i, cache=variant != "no-cache")
        print(json.dumps((time.perf_counter() - start) * 1e3), flush=True)


def _warm_page_cache(sites: list[int], state_root: str) -> None:
    sys.path.insert(0, str(ROOT))
    from common.config import app_defaults, parse_run_config, resolve_site
    from common.data.sources import site_files

    run = parse_run_config(app_defaults() | {"scenario-file": str(SCENARIO), "site-state-root": state_root})
    for i in [0, *sites]:
        site = resolve_site({"partition-id": i}, run)
        for path in site_files(site.spec.source, site.spec.source_args, data_dir=site.data_dir,
                               modalities=site.spec.modalities):
            Path(path).read_bytes()


class _Worker:
    def __init__(self, code: Path, cache_root: str) -> None:
        cmd = [sys.executable, str(ROOT / "benchmarks" / "site_read.py"), "--worker", cache_root]
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(code)), cwd=code, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the worker for {code} did not start (its error is above)")

    def load(self, site: int, variant: str) -> float:
        self.proc.stdin.write(json.dumps([site, variant]) + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="git revision of the code to compare with (required)")
    ap.add_argument("--sites", type=int, default=100)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if not args.before:
        ap.error("--before is required: the git revision to compare the working tree with")
    times: dict[str, list[float]] = {name: [] for name in ("before", "no-cache", "first run", "later run")}
    with tempfile.TemporaryDirectory(prefix="site-read-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        sites = [1 + k * 7 % 999 for k in range(args.sites)]
        _warm_page_cache(sites, str(Path(tmp) / "state"))
        old, new = _Worker(before, str(Path(tmp) / "cache-before")), _Worker(ROOT, str(Path(tmp) / "cache-after"))
        try:
            for k, site in enumerate(sites):  # site by site, the order alternating: load drifts alike for all
                steps = [(old, "before"), (new, "no-cache"), (new, "first run"), (new, "later run")]
                if k % 2:
                    steps = [steps[1], steps[2], steps[3], steps[0]]
                for worker, variant in steps:
                    times[variant].append(worker.load(site, variant))
        finally:
            old.close()
            new.close()
    base = statistics.median(times["before"])
    print(f"{args.sites} sites, each one its process had not seen; load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<22}{'median ms/site':>16}{'mean':>8}{'ratio (medians)':>17}")
    for name, values in times.items():
        label = name if name == "before" else f"after, {name}"
        median = statistics.median(values)
        print(f"{label:<22}{median:>16.1f}{statistics.fmean(values):>8.1f}{median / base:>17.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
