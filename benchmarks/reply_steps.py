"""Microseconds a train reply for each step of the server's reading and merging, beside the numpy-sum floor.

    .venv/bin/python benchmarks/reply_steps.py [--replies 1000] [--resnet-replies 24] [--repeats 5]

Packed replies (one flat float32 array per branch, what a sample-mode site sends; ``common/packing.py``) of the
default hospitals model and of a ResNet-18-GN-sized one (``benchmarks/aggregation.py``'s inputs). Rows: the floor
(a float32 numpy sum over the per-tensor arrays); the records read once (``server.replies._Content``); the array
checks by the fast path (``server/flat_arrays.py``), the part of it that proves the update finite and within
``max-update-norm``, and the same checks by the exact path alone (``server/reply_arrays.py`` with the fast path
off: what packed replies got before it read them); the merge of the packed vectors and of the same tensors one by
one (bit-identical results). The best of ``--repeats``, each a pass over all replies, divided by their number.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from aggregation import MAX_UPDATE_NORM, model_arrays, numpy_sum, replies_for, reply_messages, timed
from common.models.params import branch_of
from common.records import ARRAYS
from server import replies
from server.aggregation import Update, merge_weighted
from server.flat_arrays import ReplyLayout
from server.identity import RegisteredSite
from server.reply_arrays import read_arrays


def step_costs(label: str, kind: str, n: int, repeats: int) -> None:
    global_arrays = model_arrays(kind)
    arrays = replies_for(global_arrays, n)
    weights = [float(50 + i % 200) for i in range(n)]
    msgs = reply_messages(global_arrays, arrays)  # packed, as a sample-mode site sends them
    branches = frozenset(branch_of(k) for k in global_arrays)
    site = RegisteredSite("site", tuple(sorted(branches - {"head"})), None)
    layout, off = ReplyLayout(global_arrays), ReplyLayout({})  # off: disabled, every reply to the exact checks
    items = [list(replies._Content.of(m).array_records[ARRAYS].items()) for m in msgs]
    views = [layout.read(i, branches, MAX_UPDATE_NORM) for i in items]  # (tensors, packed branches)
    if any(v is None or not v[1] for v in views):
        raise SystemExit("a packed reply did not take the fast path: the rows below would not measure it")
    packed = [Update(f"s{i:04d}", t, w, p) for i, ((t, p), w) in enumerate(zip(views, weights, strict=True))]
    per_tensor = [Update(u.site, u.arrays, u.weight) for u in packed]
    rows = {"numpy sum (floor)": lambda: numpy_sum(global_arrays, arrays, weights),
            "records read once": lambda: [replies._Content.of(m) for m in msgs],
            "array checks (fast path)": lambda: [layout.read(i, branches, MAX_UPDATE_NORM) for i in items],
            "  of which finite + norm": lambda: [layout._within(t, p, frozenset(), MAX_UPDATE_NORM)
                                                 for t, p in views],
            "array checks (exact only)": lambda: [read_arrays(i, site, global_arrays, off, MAX_UPDATE_NORM)
                                                  for i in items],
            "merge (packed vectors)": lambda: merge_weighted(global_arrays, packed),
            "merge (tensor by tensor)": lambda: merge_weighted(global_arrays, per_tensor)}
    print(f"\n{label}: microseconds a reply, {n} packed replies")
    floor = None
    for name, fn in rows.items():
        t = min(timed(fn, 1) for _ in range(repeats)) / n * 1e6
        floor = floor or t
        print(f"  {name:<28s} {t:>9.1f} {t / floor:>6.2f}x", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=1000, help="replies of the default model")
    ap.add_argument("--resnet-replies", type=int, default=24, help="replies of the ResNet-18-sized model")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as in the ServerApp process
    print(f"load average {os.getloadavg()[0]:.2f} at the start; numpy {np.__version__}")
    step_costs("default model", "default", args.replies, args.repeats)
    step_costs("ResNet-18-GN-sized", "resnet", args.resnet_replies, args.repeats)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
