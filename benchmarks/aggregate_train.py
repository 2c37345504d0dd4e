"""The server's whole ``aggregate_train`` on N train replies, against a numpy sum of the same arrays, in one process.

    .venv/bin/python benchmarks/aggregate_train.py [--replies 1000] [--profile]

N registered sites (each reply: the default hospitals model's 18 trainable tensors, float32) send what an
honest site sends: a real signed ledger head, the ε the accountants give for their mechanism, num-examples = their
public max-records, whole branches of float32 in the layout of their privacy mode (sample mode: packed, one flat
array per branch, ``common/packing.py``) (CONSTRUCTED replies: ``tests/server/honest_site.py``). Timed:
``ModalityFedAvg.aggregate_train`` with every check of ``server/replies.py`` (identity, statuses, privacy record,
signature, ε floor, shapes, dtypes, finiteness, update norm, digest) and the per-branch weighted mean, no recorder
(the ledger write is one SQLite transaction per round, not per reply). The floor: adding the same arrays (as sent:
packed) up in numpy (float32, in place; ``benchmarks/aggregation.py``'s ``numpy_sum``). ``--profile``: cProfile's top rows.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.server.honest_site

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402

from aggregation import model_arrays, numpy_sum  # noqa: E402 - benchmarks/ is sys.path[0] for a script
from common.config import AggregationSettings  # noqa: E402
from common.packing import reply_arrays  # noqa: E402
from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY  # noqa: E402
from server.identity import RegisteredSite, SiteRegistry  # noqa: E402
from server.strategy import ModalityFedAvg  # noqa: E402
from tests.server.honest_site import honest_privacy  # noqa: E402

BATCH, MAX_RECORDS = 32, 250


class _Grid:
    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def replies(n: int) -> tuple[ModalityFedAvg, list[Message], dict[str, np.ndarray]]:
    """A strategy with ``n`` registered sites, and one honest train reply from each."""
    from cryptography.hazmat.primitives.asymmetric import ec

    glob = model_arrays("default")
    sites = tuple(RegisteredSite(f"site-{i:04d}", ("tabular", "text"), MAX_RECORDS) for i in range(n))
    nodes = {i + 1: s.name for i, s in enumerate(sites)}
    strategy = ModalityFedAvg(registry=SiteRegistry(sites, source="benchmark", nodes=nodes),
                              aggregation=AggregationSettings("weighted-mean", 0, "max-records", 100.0),
                              batch_size=BATCH, local_epochs=1, fraction_train=1.0, min_train_nodes=n,
                              min_available_nodes=n, fraction_evaluate=0.0)
    asks = strategy.configure_train(1, ArrayRecord({k: Array(v) for k, v in glob.items()}), ConfigRecord(),
                                    _Grid(list(nodes)))
    key, rng, out = ec.generate_private_key(ec.SECP384R1()), np.random.default_rng(0), []
    for ask in sorted(asks, key=lambda m: m.metadata.dst_node_id):
        site = sites[ask.metadata.dst_node_id - 1]
        arrays = {k: v + rng.standard_normal(v.shape, dtype=np.float32) * 0.01 for k, v in glob.items()}
        privacy = honest_privacy(site.name, MAX_RECORDS, key, 1, batch_size=BATCH, local_epochs=1)
        content = RecordDict({
            METRICS: MetricRecord({NUM_EXAMPLES: float(MAX_RECORDS)}), PRIVACY: ConfigRecord(privacy),
            ARRAYS: ArrayRecord({k: Array(v) for k, v in reply_arrays(arrays, mode=privacy["mode"]).items()})})
        out.append(Message(content=content, reply_to=ask))
    return strategy, out, glob


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=1000)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as in the ServerApp process
    logging.getLogger("flwr").setLevel(logging.WARNING)  # the per-round INFO line names every site
    strategy, msgs, glob = replies(args.replies)
    arrays = [{k: a.numpy() for k, a in m.content.array_records[ARRAYS].items()} for m in msgs]
    floor = min(_timed(lambda: numpy_sum(arrays[0], arrays, None)) for _ in range(3))  # the arrays as sent
    profile = cProfile.Profile() if args.profile else None
    if profile:
        profile.enable()
    took = _timed(lambda: strategy.aggregate_train(1, msgs))
    if profile:
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)
    print(f"{args.replies} replies: numpy sum {floor:.3f} s, aggregate_train {took:.3f} s = {took / floor:.1f}x; "
          f"{took / args.replies * 1e3:.2f} ms a reply; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
