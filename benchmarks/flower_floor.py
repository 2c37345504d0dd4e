"""Flower's floor: the same simulation pipeline as ``fedfusion simulate`` with a numpy-only app, side by side with ours.

    .venv/bin/python benchmarks/flower_floor.py                      # the floor: 4x8, 1000x3@0.1, 1000x3@1.0
    .venv/bin/python benchmarks/flower_floor.py --shape 4x8 --ours   # + `fedfusion simulate` of the same shape
    .venv/bin/python benchmarks/flower_floor.py --shape 4x8 --ours --ours-again   # + ours' next run (caches warm)
    .venv/bin/python benchmarks/flower_floor.py --shape 1000x3@0.1 --ours --ours-scenario S.toml

The floor app (``benchmarks/floor_app``) sends our default model's trainable arrays (same names and shapes, float32)
to the sampled nodes with Flower's stock FedAvg, train messages only; each node unpacks them to numpy and sends
them back. It runs through ``simulations/engine.py`` (the code ``fedfusion simulate`` runs): a
``flower-superlink --simulation`` on a free port, ``FLWR_HOME`` in a temporary folder, ``flwr run --stream``, one
CPU per simulated node. ``--ours`` then runs ``fedfusion simulate`` of the same shape in a subprocess (the whole
command, as a user runs it: report and plot included), and the table gives ours / floor for: the whole run; the time
outside the training rounds (processes, app loading, final evaluation, report); round 1 (Ray and its actors start
during it, and our sites load their data); the median of the later rounds. Peak RSS is the largest sum of resident memory over this process's whole process tree, sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common.runtime.processes import descendants
from simulations.engine import AppRun, run_app

FLOOR_APP = Path(__file__).resolve().parent / "floor_app"
REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHAPES = ("4x8", "1000x3@0.1", "1000x3@1.0")
_SHAPE = re.compile(r"^(\d+)x(\d+)(?:@([0-9.]+))?$")


@dataclass(frozen=True)
class Shape:
    nodes: int
    rounds: int
    fraction: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "Shape":
        m = _SHAPE.match(text)
        if not m:
            raise SystemExit(f"--shape {text!r}: expected NODESxROUNDS[@FRACTION], e.g. 4x8 or 1000x3@0.1")
        fraction = float(m.group(3) or 1.0)
        if not 0 < fraction <= 1:
            raise SystemExit(f"--shape {text!r}: the fraction of nodes per round must lie in (0, 1]")
        return cls(int(m.group(1)), int(m.group(2)), fraction)

    def __str__(self) -> str:
        return f"{self.nodes} nodes x {self.rounds} rounds @ {self.fraction:.0%}"


@dataclass
class Result:
    total_s: float  # the whole command / pipeline, process start-up and shutdown included
    round_s: list[float]  # wall time of each training round at the server (sampling to aggregate)
    peak_rss_gb: float
    per_round: int  # train messages per round
    compute_s: list[float] = field(default_factory=list)  # ours: each round's slowest site's compute (train + eval)

    @property
    def first_round_s(self) -> float:  # Ray and its actors start during round 1 (and our sites load their data)
        return self.round_s[0]

    @property
    def median_round_s(self) -> float:  # rounds 2.. (round 1 when there is only one)
        return statistics.median(self.round_s[1:] or self.round_s)

    @property
    def outside_s(self) -> float:  # everything but the training rounds: processes, app loading, final evaluation, report
        return self.total_s - sum(self.round_s)


class TreeRSS:
    """Peak of the summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._rss(p) for p in [me, *descendants(me)]))
            self._stop.wait(self.interval)

    def __enter__(self) -> "TreeRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def model_shapes(scenario: str = "hospitals") -> dict[str, tuple[int, ...]]:
    """Names and shapes of our default model's trainable tensors (what a site sends) for ``scenario``."""
    from common.config import app_defaults, load_scenario, parse_run_config
    from common.factory import build_model, initial_trainable_state
    from simulations.driver import scenario_path

    run = parse_run_config(app_defaults())
    model = build_model(run.model, scenario=load_scenario(scenario_path(scenario)), seed=0)
    return {k: tuple(v.shape) for k, v in initial_trainable_state(model).items()}


def run_floor(shape: Shape, shapes: dict[str, tuple[int, ...]], work: Path) -> Result:
    out = work / f"floor-{shape.nodes}x{shape.rounds}-{shape.fraction:g}"
    out_file = out / "floor.json"
    cfg = {"num-server-rounds": shape.rounds, "fraction-train": shape.fraction, "min-available-nodes": shape.nodes,
           "shapes": ",".join(f"{k}:{'x'.join(map(str, s))}" for k, s in shapes.items()), "out-file": str(out_file)}
    with TreeRSS() as rss:
        times = run_app(AppRun(app_dir=FLOOR_APP, run_config=cfg, num_supernodes=shape.nodes, out=out,
                               total_rounds=shape.rounds, progress=False, timeout=3600))
    rec = json.loads(out_file.read_text())
    per_round = max(1, round(shape.nodes * shape.fraction))
    return Result(times.total_s, rec["round_s"], rss.peak / 2**30, per_round)


def run_ours(shape: Shape, scenario: str, work: Path, *, site_check: bool = True, tag: str = "",
             settings: tuple[str, ...] = ()) -> Result:
    """``fedfusion simulate`` of ``shape`` in a new run folder under ``work`` (site cache: ``work/.site-cache``)."""
    out = work / f"ours-{shape.nodes}x{shape.rounds}-{shape.fraction:g}{tag}"
    cmd = [str(Path(sys.executable).parent / "fedfusion"), "simulate", "--scenario", scenario, "--out", str(out),
           "--quiet", "--rounds", str(shape.rounds), "--set", f"fraction-train={shape.fraction}"]
    if shape.nodes > 4:  # the hospitals defaults (min-available-nodes = 2) stand for `make run`
        cmd += ["--set", f"min-available-nodes={shape.nodes}"]
    if shape.fraction < 1:  # the final evaluation (outside the rounds) asks the same share of the sites
        cmd += ["--set", f"fraction-evaluate={shape.fraction}"]
    for kv in settings:  # e.g. missing-modality-evaluation=false for the scale runs
        cmd += ["--set", kv]
    if not site_check:  # start-up without the check of every site's data (time it with simulations/preflight.py)
        cmd += ["--no-site-check"]
    t0 = time.monotonic()
    with TreeRSS() as rss:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    total = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    if not 0 < len(summary["sites"]) <= shape.nodes:  # the sites that took part (sampled at least once)
        raise SystemExit(f"scenario {scenario}: {len(summary['sites'])} sites took part, the shape has {shape.nodes} "
                         "nodes")
    timed = [r["timing"]["train"] for _, r in sorted(summary["rounds"].items(), key=lambda kv: int(kv[0]))
             if r and "train" in r.get("timing", {})]
    return Result(total, [t["wall_s"] for t in timed], rss.peak / 2**30, max(1, round(shape.nodes * shape.fraction)),
                  [t.get("slowest_site_compute_s", 0.0) for t in timed])


COLUMNS = ("total s", "outside", "round 1", "round 2+", "ms/msg 2+", "peak GB")


UCI_PATIENTS = 920  # rows the uci-heart-virtual source pools (the four hospitals)


def virtual_scenario(nodes: int, folder: Path) -> Path:
    """A scenario of ``nodes`` VIRTUAL tabular sites cut from the pooled UCI patients (for --ours-virtual)."""
    per_site = UCI_PATIENTS // nodes
    if per_site < 4:
        raise SystemExit(f"--ours-virtual: {UCI_PATIENTS} UCI patients give {nodes} virtual sites fewer than 4 rows "
                         "each (a train and a test split need some); the 1000-site scenario is issue 15's per-site "
                         "caching work (a larger dataset); give --ours-scenario instead")
    min_size = max(4, min(20, per_site - 2))
    part = f'kind = "quantity", alpha = 1000.0, num-sites = {nodes}, seed = 0, min-size = {min_size}'
    text = [f'[[sites]]\nname = "virtual-{i:04d}"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
            f'partition = {{ {part}, part = {i} }}\nmodalities = ["tabular"]\nprivacy = {{ max-records = {per_site} }}\n'
            for i in range(nodes)]
    text += [f'[scenario]\nname = "virtual{nodes}"\ndescription = "VIRTUAL: the pooled UCI Heart Disease patients cut '
             f'into {nodes} virtual sites (tabular only), for benchmarks/flower_floor.py"\n'
             f'schema = "{REPO / "data" / "schemas" / "heart.toml"}"\ndata-dir = "{REPO / "data"}"\n']
    path = folder / f"virtual{nodes}.toml"
    path.write_text("\n".join(text))
    return path


def _row(name: str, r: Result) -> str:
    return (f"{name:<22s} {r.total_s:>9.1f} {r.outside_s:>9.1f} {r.first_round_s:>9.2f} {r.median_round_s:>9.2f} "
            f"{1e3 * r.median_round_s / r.per_round:>9.1f} {r.peak_rss_gb:>9.2f}")


def _round_goal(ours: Result, floor: Result) -> str:
    """Issue 15's per-round goal, rounds 2..: ours' round <= the floor's round + 1.1 x the slowest site's compute."""
    rounds = list(zip(ours.round_s, floor.round_s, ours.compute_s))[1:]
    if not rounds:
        return ""
    excess = [o - (f + 1.1 * c) for o, f, c in rounds]
    return (f"{'  rounds 2+':<22s} slowest site's compute median {statistics.median(c for *_, c in rounds):.2f} s; "
            f"round - (floor round + 1.1 x compute): median {statistics.median(excess):+.2f} s, "
            f"{sum(e <= 0 for e in excess)}/{len(excess)} rounds within")


def _ratio(ours: Result, floor: Result) -> str:
    pairs = [(ours.total_s, floor.total_s), (ours.outside_s, floor.outside_s), (ours.first_round_s, floor.first_round_s),
             (ours.median_round_s, floor.median_round_s)]
    return f"{'ours / floor':<22s} " + " ".join(f"{a / b:>8.2f}x" for a, b in pairs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", action="append", default=None,
                    help=f"NODESxROUNDS[@FRACTION] (repeatable; default: {' '.join(DEFAULT_SHAPES)})")
    ap.add_argument("--ours", action="store_true", help="also run `fedfusion simulate` of each shape")
    ap.add_argument("--ours-scenario", default="hospitals",
                    help="scenario for --ours (default hospitals: 4 sites; other node counts need a scenario of "
                         "that many sites)")
    ap.add_argument("--ours-virtual", action="store_true",
                    help="for shapes of other than 4 nodes, run ours on that many VIRTUAL tabular sites cut from the "
                         "pooled UCI patients (at most ~200: 920 patients)")
    ap.add_argument("--ours-no-site-check", action="store_true",
                    help="run ours with --no-site-check (the check of every site's data is start-up, not rounds)")
    ap.add_argument("--ours-again", action="store_true",
                    help="run ours a second time, in a new run folder beside the first (new ledgers; the virtual "
                         "sites' cache of text features and σ beside the run folders is then warm): the data "
                         "scientist's next run")
    ap.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                    help="a run setting for ours (`fedfusion simulate --set`), e.g. missing-modality-evaluation=false "
                         "for the 1000-site scenario; repeatable")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the run folders (printed)")
    args = ap.parse_args()
    shapes = [Shape.parse(s) for s in (args.shape or DEFAULT_SHAPES)]
    arrays = model_shapes()
    n_params = sum(int(__import__("math").prod(s)) for s in arrays.values())
    print(f"floor app: {len(arrays)} float32 tensors, {n_params:,} values ({4 * n_params / 1e6:.3f} MB) per message "
          f"= our default model's trainable part; load average {os.getloadavg()[0]:.2f} at the start")
    work = Path(tempfile.mkdtemp(prefix="ff-floor-"))
    print(f"{'run':<22s} " + " ".join(f"{c:>9s}" for c in COLUMNS))
    results: dict[str, dict] = {}
    for shape in shapes:
        print(f"-- {shape}")
        floor = run_floor(shape, arrays, work)
        print(_row("floor (Flower, numpy)", floor), flush=True)
        results[str(shape)] = {"floor": vars(floor)}
        if not args.ours:
            continue
        scenario = args.ours_scenario
        if shape.nodes != 4 and scenario == "hospitals":
            if not args.ours_virtual:
                print(f"{'ours':<22s} skipped: no {shape.nodes}-site scenario given (--ours-scenario, --ours-virtual)")
                continue
            scenario = str(virtual_scenario(shape.nodes, work))
        ours = run_ours(shape, scenario, work, site_check=not args.ours_no_site_check, settings=tuple(args.ours_set))
        print(_row(f"ours ({Path(scenario).stem})"[:22], ours))
        print(_ratio(ours, floor))
        print(_round_goal(ours, floor), flush=True)
        results[str(shape)]["ours"] = vars(ours)
        if args.ours_again:
            again = run_ours(shape, scenario, work, site_check=not args.ours_no_site_check, tag="-again",
                             settings=tuple(args.ours_set))
            print(_row("ours, next run", again))
            print(_ratio(again, floor))
            print(_round_goal(again, floor), flush=True)
            results[str(shape)]["ours-again"] = vars(again)
    print(f"load average {os.getloadavg()[0]:.2f} at the end; run folders: {work if args.keep else '(removed)'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
