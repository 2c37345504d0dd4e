"""A site's first read of its own data, before/after, side by side in one invocation (issue 15).

Builds each site's data the way a message does (``client.site_data.load_site``, as ``client/round.py`` calls it) for
sites of the 1000-site Fashion-MNIST scenario (``simulations/scenarios/fashion1000.toml``; the data written by
``data/fashion-mnist/prepare.py --scenario 1000``), in a fresh process per code version: site 0 first (imports, the
pooled CSV read and validated, the partition cut: once per actor), then ``--sites`` others, each a site the process
has not seen (what almost every message of the 10 %-a-round scenario is). The "before" code is ``git archive`` of
``--before``; "after" is this working tree, measured three ways: its decoded-image cache off (``feature-cache``
false), its first run (empty cache folder: decode and write) and a later run (the cache written by the first).
Every site's image files are read once beforehand, so that all variants find them in the page cache. Repeats
alternate the versions; medians of ms per site, and ratios to "before".

    .venv/bin/python benchmarks/site_read.py --before 289e0f0 --sites 40 --repeats 3
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


def _worker(sites: list[int], cache_root: str, variants: list[str]) -> dict[str, float]:
    from client import site_data
    from common.data import sources
    from common.config import app_defaults, load_scenario, parse_run_config, resolve_site

    run = parse_run_config(app_defaults() | {"scenario-file": str(SCENARIO), "site-cache-root": cache_root,
                                             "site-state-root": str(Path(cache_root) / "state")})
    scen = load_scenario(SCENARIO)

    def load(i: int, *, cache: bool) -> object:
        site = resolve_site({"partition-id": i}, run)
        site = site if cache else dataclasses.replace(site, feature_cache=False)
        return site_data.load_site(site, model_modalities=scen.modalities, text_encoder="minilm-frozen",
                                   schema=scen.schema)

    load(0, cache=True)
    memos = [getattr(module, name) for module, name in ((site_data, "_MEMO"), (sources, "_SITE_TABLES"))
             if hasattr(module, name)]  # the per-site memos (not the pooled file's): each site is one not seen yet
    out = dict.fromkeys(variants, 0.0)
    for i in sites:  # the variants interleaved site by site: the machine's load drifts alike for all
        for variant in variants:
            for memo in memos:
                memo.clear()
            start = time.perf_counter()
            load(i, cache=variant != "no-cache")
            out[variant] += time.perf_counter() - start
    return {variant: total / len(sites) * 1e3 for variant, total in out.items()}


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


def _run(code: Path, sites: list[int], cache_root: str, variants: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(code))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "site_read.py"), "--worker", json.dumps([sites, cache_root,
                                                                                              variants])]
    done = subprocess.run(cmd, env=env, cwd=code, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the worker for {code} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", help="git revision of the code to compare with (required)")
    ap.add_argument("--sites", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*json.loads(args.worker))))
        return 0
    if not args.before:
        ap.error("--before is required: the git revision to compare the working tree with")
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="site-read-") as tmp:
        before = Path(tmp) / "before"
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive.stdout, check=True)
        for rep in range(args.repeats):
            sites = [1 + (rep * args.sites + k) * 7 % 999 for k in range(args.sites)]
            _warm_page_cache(sites, str(Path(tmp) / "state"))
            runs = [("before", before, ["before"]), ("after", ROOT, ["no-cache", "first run", "later run"])]
            for _, code, variants in runs if rep % 2 == 0 else runs[::-1]:
                got = _run(code, sites, str(Path(tmp) / f"cache-{rep}"), variants)
                for name, ms in got.items():
                    results.setdefault(name, []).append(ms)
    base = statistics.median(results["before"])
    print(f"{args.sites} sites not seen before x {args.repeats} repeats, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':<22}{'ms/site (median)':>18}{'runs':>28}{'ratio':>8}")
    for name, values in results.items():
        label = name if name == "before" else f"after, {name}"
        runs = " ".join(f"{v:.1f}" for v in values)
        print(f"{label:<22}{statistics.median(values):>18.1f}{runs:>28}{statistics.median(values) / base:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
