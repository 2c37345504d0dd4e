"""Where a simulation's time goes: py-spy on the sites' Ray actors and on the ServerApp's process, in one table.

    .venv/bin/python -m pip install py-spy==0.4.3      # a profiling tool, not a dependency of fedfusion
    .venv/bin/python benchmarks/profile_simulate.py [--scenario hospitals] [--rounds 8] [--rate 50]

It runs ``fedfusion simulate`` (quiet), attaches ``py-spy record`` to every ``ray::ClientAppActor`` process (the
virtual sites: each actor runs one site's message at a time) and to the ``flwr-simulation`` process (the ServerApp
and Ray's driver) as soon as they appear, and sorts every sample into one category: the first of
:data:`SITE_CATEGORIES` / :data:`SERVER_CATEGORIES` whose pattern matches a frame of its stack. py-spy samples only
threads that run (``--idle`` off); a sample whose innermost frame still waits (a lock, a selector, Ray's ``get``,
the ServerApp's reply poll) counts as idle. Seconds = samples / rate,
summed over the processes of a kind. (``py-spy record --subprocesses`` on the whole command does not see the actors:
Ray's raylet starts them.) The run's own per-round figures from ``summary.json`` are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from common.runtime.processes import descendants

REPO = Path(__file__).resolve().parents[1]
SITE_CATEGORIES: tuple[tuple[str, str], ...] = (
    # (category, regex over one frame "function (file:line)")
    ("privacy accounting (ε over the ledger's history, σ calibration)", r"\(common/privacy/accountant\.py"),
    ("site data + frozen-MiniLM text features", r"load_site \(client/site_data\.py"),
    ("DP-SGD steps (forward, backward, clip, noise)", r"run_epochs \(client/train\.py"),
    ("Opacus make_private + model build", r"make_private|SiteRound\.model \(client/round\.py"),
    ("evaluation (folded + missing-modality checks)", r"evaluate \(client/train\.py"),
    ("ledger writes + signed head", r"\(common/privacy/(ledger|signing)\.py"),
    ("imports on the first message (torch, transformers, sklearn, ...)", r"_find_and_load"),
    ("rest of the handler (records, replay cache, ...)", r"\(client/"),
)
SERVER_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("imports (Flower, Ray, torch, our server)", r"_find_and_load"),
    ("Ray start-up (ray.init)", r"init_ray|ray/_private/worker\.py.*\binit\b|connect \(ray"),
    ("recording (ledger, metrics, checkpoint)", r"\(server/(recorder|checkpoint)\.py|\(common/privacy/"),
    ("aggregation (read replies, check, merge)", r"aggregate_train \(server/strategy\.py"),
    ("other ServerApp work", r"\(server/"),
    ("Flower's simulation engine (message routing)", r"\(flwr/"),
)
IDLE_FUNCTIONS = frozenset({
    # innermost Python frames that wait (a lock, a selector, a sleep, Ray's object fetch, Flower's reply poll)
    "wait", "_wait", "_wait_for_tstate_lock", "select", "sleep", "poll", "accept", "recv", "read", "readline",
    "get_objects", "main_loop", "monitor", "_log_uploader", "listen_error_messages", "print_logs", "_worker",
    "run_forever", "_run_once", "send_and_receive", "_stream_logs"})
_PATH = re.compile(r" \(.*/(site-packages|" + re.escape(REPO.name) + r")/")


def _frames(stack: str) -> list[str]:
    return [_PATH.sub(" (", f) for f in stack.split(";") if f.strip() and not f.startswith(("process ", "thread "))]


def categorise(files: list[Path], categories: tuple[tuple[str, str], ...], *, handler: str) -> Counter:
    """Samples per category (and "idle") over py-spy raw files; ``handler`` marks frames of message handling."""
    compiled = [(name, re.compile(pattern)) for name, pattern in categories]
    busy_marker = re.compile(handler)
    out: Counter = Counter()
    for path in files:
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = _frames(stack)
            if not frames:
                out["native code (no Python frame: Ray's core worker)"] += int(count)
                continue
            in_handler = any(busy_marker.search(f) for f in frames)
            leaf = frames[-1].split(" (", 1)[0].rsplit(".", 1)[-1]
            if leaf in IDLE_FUNCTIONS and not (in_handler and leaf not in {"send_and_receive"}):
                out["idle"] += int(count)
                continue
            name = next((n for n, rx in compiled if any(rx.search(f) for f in frames)), "other")
            out[name] += int(count)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def profile(args: argparse.Namespace, work: Path) -> tuple[dict[str, list[Path]], Path, float]:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: `.venv/bin/python -m pip install py-spy==0.4.3` (a dev tool only)")
    out = work / "run"
    cmd = [str(Path(sys.executable).parent / "fedfusion"), "simulate", "--scenario", args.scenario, "--out", str(out),
           "--quiet", "--rounds", str(args.rounds), *(f"--set={kv}" for kv in args.set)]
    if args.no_site_check:
        cmd.append("--no-site-check")
    t0 = time.monotonic()
    run = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=(work / "simulate.log").open("w"))
    attached: dict[int, tuple[str, subprocess.Popen, Path]] = {}
    while run.poll() is None:
        for pid in descendants(run.pid):
            if pid in attached:
                continue
            cmdline = _cmdline(pid)
            kind = "site" if cmdline.startswith("ray::ClientAppActor") else \
                "server" if "flwr-simulation" in cmdline else None
            if kind:
                raw = work / f"{kind}-{pid}.txt"
                spy_proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(args.rate),
                                             "--format", "raw", "-o", str(raw)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                attached[pid] = (kind, spy_proc, raw)
        time.sleep(0.2)
    wall = time.monotonic() - t0
    files: dict[str, list[Path]] = {"site": [], "server": []}
    for kind, spy_proc, raw in attached.values():
        spy_proc.wait(timeout=120)
        if raw.exists():
            files[kind].append(raw)
    if run.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed; see {work / 'simulate.log'}")
    return files, out, wall


def _table(title: str, counts: Counter, rate: int, processes: int) -> None:
    total = sum(counts.values())
    busy = total - counts.get("idle", 0)
    print(f"\n{title}: {processes} process(es), {total / rate:.1f} s sampled, {busy / rate:.1f} s busy")
    print(f"  {'category':<66s} {'s':>7s} {'% busy':>7s}")
    for name, n in counts.most_common():
        if name != "idle":
            print(f"  {name:<66s} {n / rate:>7.1f} {100 * n / max(busy, 1):>6.1f}%")
    print(f"  {'idle (waiting for a message, a reply, a lock)':<66s} {counts.get('idle', 0) / rate:>7.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="hospitals")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `fedfusion simulate --set` (e.g. fraction-train=0.05)")
    ap.add_argument("--no-site-check", action="store_true", help="passed to `fedfusion simulate`")
    ap.add_argument("--keep", action="store_true", help="keep the run folder and the raw profiles (printed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ff-profile-"))
    print(f"load average {os.getloadavg()[0]:.2f} at the start")
    files, out, wall = profile(args, work)
    print(f"`fedfusion simulate --scenario {args.scenario} --rounds {args.rounds}`: {wall:.1f} s wall")
    site = categorise(files["site"], SITE_CATEGORIES, handler=r"\(client/app\.py")
    server = categorise(files["server"], SERVER_CATEGORIES, handler=r"\(server/")
    _table("sites (Ray actors)", site, args.rate, len(files["site"]))
    _table("ServerApp + Ray driver (flwr-simulation)", server, args.rate, len(files["server"]))
    summary = json.loads((out / "summary.json").read_text())
    print("\nper round, from summary.json (wall at the server; slowest site's compute = its handler minus setup):")
    for r, row in sorted(summary["rounds"].items(), key=lambda kv: int(kv[0])):
        for phase, t in sorted((row or {}).get("timing", {}).items()):
            print(f"  round {r} {phase:<8s} wall {t['wall_s']:>7.2f} s, slowest site compute "
                  f"{t['slowest_site_compute_s']:>6.2f} s, last site's setup {t.get('last_site_setup_s', 0):>6.2f} s")
    print(f"load average {os.getloadavg()[0]:.2f} at the end; "
          f"{'kept in ' + str(work) if args.keep else 'run folder and profiles removed'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
