"""Server-side aggregation throughput and memory, and bytes per site per round, against their floors.

    .venv/bin/python benchmarks/aggregation.py [--replies 1000] [--resnet-replies 24] [--repeats 3] [--no-bytes]

1. **Throughput**: N replies of the default hospitals model (18 trainable tensors, 18,915 float32) and of a
   ResNet-18-GN-sized one (tabular + ResNet-18-GN image, 11.2 M float32), in the layouts sites send
   (``common.packing.REPLY_LAYOUTS``): packed, one flat array per branch (sample mode, the default), and for the
   default model also one array per tensor (central mode). Rows: a plain float32 numpy sum in place over the same
   arrays (the memory-bandwidth floor); reading the arrays (``Array.numpy()``, zero-copy ``npy_view``);
   ``merge_weighted`` alone; ours: each reply's arrays read and checked by the strategy's own code
   (``server.replies``: dtypes, shapes, whole branches, finiteness, the update norm against the default
   ``max-update-norm``) and merged (privacy record, signature and digest untimed: ``aggregate_train.py``); Flower's
   ``FedAvg.aggregate_train`` on the same messages. Median of ``--repeats``; GB/s = the arrays' bytes / time.
2. **Memory growth**: the peak memory that ``aggregate_train`` allocates on top of the reply messages (which
   Flower holds anyway; packed ResNet-sized replies), for growing numbers of replies (tracemalloc: numpy too).
3. **Bytes per site per round**: one real train round of one hospital (the ClientApp's own handler, in this
   process, DP-SGD and folded evaluation included); the reply and the server's train message (packed per branch as
   ``server/downlink.py`` sends it, and one array per tensor as Flower's FedAvg builds it) serialized the way
   Flower ships them (its inflatable objects: message, records, array chunks), against the bytes of the trainable
   tensors they carry, with the same reply re-encoded one array per tensor (the layout before issue 15's packing,
   ``common/packing.py``) beside it, and where the bytes go (per Flower object kind, per record). The frozen
   MiniLM (22.7 M parameters) is never part of the model and never sent.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.models.params import branch_of
from common.records import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, PRIVACY
from server.aggregation import Update, merge_weighted

try:  # absent before issue 15: the script also runs on older commits, for a before/after
    from common.packing import REPLY_LAYOUTS  # the layouts sites send
    from server.array_io import npy_view
except ImportError:
    npy_view, REPLY_LAYOUTS = None, {"central": dict}
LAYOUTS = {f"{how} ({mode})": REPLY_LAYOUTS[mode]
           for mode, how in (("sample", "packed"), ("central", "per tensor")) if mode in REPLY_LAYOUTS}

REPO = Path(__file__).resolve().parents[1]
MAX_UPDATE_NORM = 100.0  # pyproject.toml's default max-update-norm: the strategy checks every update's norm


# ------------------------------------------------------------------------------------------ inputs
def model_arrays(kind: str) -> dict[str, np.ndarray]:
    """The trainable tensors (float32) of the default hospitals model, or of tabular + ResNet-18-GN."""
    from common.config import app_defaults, load_scenario, parse_run_config
    from common.factory import build_model, initial_trainable_state
    from common.models import FusionModel
    from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig

    if kind == "default":
        run = parse_run_config(app_defaults())
        model = build_model(run.model, scenario=load_scenario(REPO / "simulations" / "scenarios" / "hospitals.toml"),
                            seed=0)
    else:
        model = FusionModel(FusionConfig(modalities=("tabular", "image"), fusion="attention",
                                         tabular=TabularEncoderConfig(in_features=7),
                                         image=ImageEncoderConfig(kind="resnet18-gn")))
    return {k: v.numpy().astype(np.float32) for k, v in initial_trainable_state(model).items()}


def replies_for(global_arrays: dict[str, np.ndarray], n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{k: (v + rng.standard_normal(v.shape, dtype=np.float32) * 0.01) for k, v in global_arrays.items()}
            for _ in range(n)]


def reply_messages(global_arrays: dict[str, np.ndarray], replies: list[dict[str, np.ndarray]],
                   layout: Callable = next(iter(LAYOUTS.values()))) -> list[Message]:
    """Flower train replies as our sites send them: ARRAYS (in ``layout``), METRICS (num-examples), PRIVACY."""
    out = []
    for i, arrays in enumerate(replies):
        ask = Message(RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in global_arrays.items()}),
                                  CONFIG: ConfigRecord({"server-round": 1})}), dst_node_id=i + 1, message_type="train")
        content = RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in layout(arrays).items()}),
                              METRICS: MetricRecord({NUM_EXAMPLES: float(50 + i % 200)}),
                              PRIVACY: ConfigRecord({"status": "trained", "site": f"site-{i:04d}"})})
        out.append(Message(content, reply_to=ask))
    return out


# ------------------------------------------------------------------------------------ aggregators
def numpy_sum(global_arrays, replies, weights) -> dict[str, np.ndarray]:
    """The floor: add the same arrays up, float32, in place (no weights, no checks)."""
    acc = {k: np.zeros_like(v) for k, v in global_arrays.items()}
    for r in replies:
        for k, v in r.items():
            acc[k] += v
    return acc


def ours_merge(global_arrays, replies, weights):
    return merge_weighted(global_arrays, [Update(f"s{i}", r, w) for i, (r, w) in enumerate(zip(replies, weights))])


def strategy_ours(global_arrays: dict[str, np.ndarray], weights: list[float],
                  max_update_norm: float = MAX_UPDATE_NORM) -> Callable[[list[Message]], object]:
    """What ModalityFedAvg does with the arrays of each reply, by its own code: ``server.replies``' array checks
    (records read, dtypes, shapes, whole branches, finiteness, the update norm against the default
    ``max-update-norm``), one round's rules, and the per-branch merge. Not timed: the privacy record, the signature
    and the digest (``aggregate_train.py`` times the whole)."""
    from server import replies
    from server.identity import RegisteredSite, SiteRegistry

    site = RegisteredSite("site", tuple(sorted({branch_of(k) for k in global_arrays} - {"head"})), None)
    registry = SiteRegistry((site,), source="benchmark")
    content = getattr(replies, "_Content", None)  # the records read once (issue 15); before it, the message

    def aggregate(msgs: list[Message]) -> object:
        rules = replies.ReplyRules(registry=registry, global_arrays=global_arrays, max_update_norm=max_update_norm,
                                   weighting="max-records", batch_size=32, local_epochs=1)
        reads = [replies._arrays(content.of(m) if content else m, site, rules) for m in msgs]
        parts = [r if isinstance(r, tuple) else (r, {}) for r in reads]  # (tensors, packed) since the packed path
        return merge_weighted(global_arrays, [Update(f"s{i:04d}", t, w, *([p] if p else []))
                                              for i, ((t, p), w) in enumerate(zip(parts, weights, strict=True))])

    return aggregate


def strategy_flower() -> Callable[[list[Message]], object]:
    from flwr.serverapp.strategy import FedAvg

    strategy = FedAvg(fraction_train=1.0, min_available_nodes=1, min_train_nodes=1)
    return lambda msgs: strategy.aggregate_train(1, msgs)


# ------------------------------------------------------------------------------------- measuring
def timed(fn: Callable[[], object], repeats: int) -> float:
    out = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def added_peak(fn: Callable[[], object]) -> float:
    """MB that ``fn`` allocates at its peak, on top of what exists before (tracemalloc: Python and numpy buffers)."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return (peak - base) / 2**20


def throughput(label: str, kind: str, n: int, repeats: int, layouts: list[str]) -> None:
    """Part 1's rows for each reply layout in ``layouts`` (keys of :data:`LAYOUTS`), against one floor."""
    global_arrays = model_arrays(kind)
    values = sum(v.size for v in global_arrays.values())
    replies = replies_for(global_arrays, n)
    weights = [float(50 + i % 200) for i in range(n)]
    gb = n * values * 4 / 1e9
    print(f"\n{label}: {n} replies x {len(global_arrays)} tensors, {values:,} float32 = {gb:.2f} GB of arrays")
    print(f"  {'aggregator':<40s} {'s':>8s} {'GB/s':>7s} {'x floor':>8s}")
    rows: list[tuple[str, Callable[[], object]]] = [
        ("numpy sum (floor)", lambda: numpy_sum(global_arrays, replies, weights)),
        ("merge_weighted (per-tensor arrays)", lambda: ours_merge(global_arrays, replies, weights))]
    for layout in layouts:
        msgs = reply_messages(global_arrays, replies, LAYOUTS[layout])
        ours, flower = strategy_ours(global_arrays, weights), strategy_flower()
        records = [m.content.array_records[ARRAYS] for m in msgs]
        sent = [{k: v.numpy() for k, v in r.items()} for r in records]  # the floor over the arrays as they travel
        rows += [(f"{layout}: numpy sum of these", lambda a=sent: numpy_sum(a[0], a, weights)),
                 (f"{layout}: read Array.numpy()", lambda r=records: [{k: v.numpy() for k, v in x.items()} for x in r]),
                 *([(f"{layout}: read npy_view", lambda r=records: [
                     {k: npy_view(v.data, dtype=v.dtype, shape=v.shape) for k, v in x.items()} for x in r])]
                   if npy_view else []),
                 (f"{layout}: ours: read + merge", lambda o=ours, m=msgs: o(m)),
                 (f"{layout}: Flower FedAvg", lambda f=flower, m=msgs: f(m))]
    floor = None
    for name, fn in rows:
        t = timed(fn, repeats)
        floor = floor or t
        print(f"  {name:<40s} {t:>8.3f} {gb / t:>7.2f} {t / floor:>8.2f}", flush=True)


def memory_growth(kind: str, counts: list[int]) -> None:
    global_arrays = model_arrays(kind)
    mb = sum(v.nbytes for v in global_arrays.values()) / 2**20
    print(f"\nmemory the aggregation adds on top of the reply messages ({kind} model, {mb:.1f} MB per reply)")
    print(f"  {'replies':>8s} {'messages MB':>12s} {'ours +MB':>9s} {'Flower +MB':>11s}")
    for n in counts:
        msgs = reply_messages(global_arrays, replies_for(global_arrays, n))
        ours, flower = strategy_ours(global_arrays, [1.0] * n), strategy_flower()
        print(f"  {n:>8d} {n * mb:>12.1f} {added_peak(lambda: ours(msgs)):>9.1f} "
              f"{added_peak(lambda: flower(msgs)):>11.1f}", flush=True)
        del msgs
        gc.collect()


def wire_bytes(message: Message) -> int:
    """Bytes of every object Flower ships for ``message`` (message, records, arrays, array chunks)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def wire_breakdown(message: Message) -> str:
    """Wire bytes per kind of Flower object, and per record, of ``message`` (one line each)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    kinds: dict[str, list[int]] = {}
    for obj in get_all_nested_objects(message).values():
        row = kinds.setdefault(type(obj).__name__, [0, 0])
        row[0], row[1] = row[0] + 1, row[1] + len(obj.deflate())
    records = ", ".join(f"{name} {len(rec.deflate()):,}" for name, rec in message.content.items())
    return ("      objects: " + ", ".join(f"{k} x{n} {b:,}" for k, (n, b) in kinds.items())
            + f"\n      records (own object only): {records}")


def as_per_tensor(reply: Message, shapes: dict) -> Message:
    """The same reply with its arrays one per tensor (Flower's own layout, as sent before issue 15's packing)."""
    from common.models.params import BRANCHES
    from common.packing import unpack_branch

    arrays: dict[str, np.ndarray] = {}
    for k, a in reply.content.array_records[ARRAYS].items():
        arrays.update(unpack_branch(k, a.numpy(), shapes) if k in BRANCHES else {k: a.numpy()})
    content = RecordDict({k: v for k, v in reply.content.items() if k != ARRAYS})
    content[ARRAYS] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=reply.metadata.src_node_id,
                                             message_type="train"))


def bytes_per_round(site_index: int = 0) -> None:
    """One real train round of one hospital through the ClientApp's handler, in this process."""
    from flwr.app import Context

    from client.app import app
    from common.config import app_defaults, load_scenario, parse_run_config
    from common.factory import build_model, initial_trainable_state
    from common.records import EVALUATE_GLOBAL
    from server.downlink import pack_downlink

    out = Path(tempfile.mkdtemp(prefix="ff-bytes-"))
    scenario_file = REPO / "simulations" / "scenarios" / "hospitals.toml"
    run_config = app_defaults() | {"scenario-file": str(scenario_file), "data-dir": str(REPO / "data"),
                                   "out-dir": str(out)}
    run = parse_run_config(run_config)
    scenario = load_scenario(scenario_file)
    initial = initial_trainable_state(build_model(run.model, scenario=scenario, seed=0))
    trainable = sum(v.numel() * v.element_size() for v in initial.values())
    print(f"\nbytes per site per round (hospitals, default model: {trainable:,} bytes of trainable float32; "
          "the frozen MiniLM's 22.7 M parameters are not in the model)")
    print(f"  {'site':<14s} {'message':<26s} {'tensors':>7s} {'tensor bytes':>13s} {'wire bytes':>11s} "
          f"{'x tensors':>9s} {'x model':>8s}")
    for i, site in enumerate(scenario.sites):
        if site_index >= 0 and i != site_index and i != len(scenario.sites) - 1:
            continue  # the first site (all modalities) and the last (VA: no notes) by default
        def train_message() -> Message:  # what Flower's FedAvg builds: the global arrays one per tensor
            return Message(RecordDict({ARRAYS: ArrayRecord(initial),
                                       CONFIG: ConfigRecord({"server-round": 1, "federation-id": "bytes",
                                                             "num-server-rounds": run.federation.num_rounds,
                                                             EVALUATE_GLOBAL: True})}),
                           dst_node_id=i + 1, message_type="train")

        ask_per_tensor = train_message()
        ask = pack_downlink([train_message()])[0]  # as the strategy sends it (server/downlink.py)
        ctx = Context(run_id=1, node_id=i + 1, node_config={"partition-id": i, "num-partitions": len(scenario.sites)},
                      state=RecordDict(), run_config=run_config)
        reply = app(ask, ctx)
        if reply.has_error() or PRIVACY not in reply.content.config_records or \
                reply.content.config_records[PRIVACY].get("status") != "trained":
            raise SystemExit(f"{site.name}: the round did not train: {reply.error if reply.has_error() else dict(reply.content.config_records[PRIVACY])}")
        sent = reply.content.array_records[ARRAYS]
        before = as_per_tensor(reply, {k: tuple(v.shape) for k, v in initial.items()})
        for name, msg, arrays in (("server -> site, per tensor", ask_per_tensor, ArrayRecord(initial)),
                                  ("server -> site, as sent", ask, ask.content[ARRAYS]),
                                  ("reply, per tensor", before, before.content.array_records[ARRAYS]),
                                  ("reply, as sent", reply, sent)):
            tb = sum(a.numpy().nbytes for a in arrays.values())
            wb = wire_bytes(msg)
            print(f"  {site.name:<14s} {name:<26s} {len(arrays):>7d} {tb:>13,d} {wb:>11,d} {wb / tb:>9.3f} "
                  f"{wb / trainable:>8.3f}", flush=True)
            if msg is not ask_per_tensor:
                print(wire_breakdown(msg))


#: model -> (modalities, text kind, image kind) for the constructed-reply bytes table
BYTES_MODELS = {
    "tabular + image (small CNN)": (("tabular", "image"), None, "small-cnn"),
    "tabular + image (ResNet-18-GN)": (("tabular", "image"), None, "resnet18-gn"),
    "tabular + text (tiny-BERT, fine-tuned)": (("tabular", "text"), "tiny-bert", None),
    "tabular + text (frozen MiniLM)": (("tabular", "text"), "minilm-frozen", None),
}


def bytes_of_constructed_replies() -> None:
    """The reply a site of each model sends, CONSTRUCTED (no training): its trainable tensors, num-examples and an
    honest privacy record with a real signature (``tests/server/honest_site.py``), serialized as Flower ships it."""
    import sys

    from cryptography.hazmat.primitives.asymmetric import ec

    from common.factory import initial_trainable_state
    from common.models import FusionModel
    from common.models.config import FusionConfig, ImageEncoderConfig, TabularEncoderConfig, TextEncoderConfig
    from common.packing import pack_branches, per_tensor

    sys.path.insert(0, str(REPO))
    from tests.server.honest_site import honest_privacy

    key = ec.generate_private_key(ec.SECP384R1())
    print("\nbytes of a constructed train reply (the model's trainable tensors + metrics + privacy record) vs its "
          "trainable bytes: arrays one per tensor (before) and packed per branch (common/packing.py, as sent)")
    print(f"  {'model':<40s} {'tensors':>7s} {'trainable bytes':>16s} {'per tensor':>11s} {'x':>7s} "
          f"{'packed':>11s} {'x':>7s} {'frozen params':>13s}")
    for name, (mods, text, image) in BYTES_MODELS.items():
        cfg = FusionConfig(modalities=mods, fusion="attention", tabular=TabularEncoderConfig(in_features=7),
                           text=TextEncoderConfig(kind=text) if text else None,
                           image=ImageEncoderConfig(kind=image) if image else None)
        model = FusionModel(cfg)
        rng = np.random.default_rng(0)  # trained values differ from each other: Flower stores equal chunks once
        state = {k: (v.numpy() + rng.standard_normal(tuple(v.shape)) * 1e-3).astype(np.float32)
                 for k, v in initial_trainable_state(model).items()}
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        ask = Message(RecordDict({CONFIG: ConfigRecord({"server-round": 1})}), dst_node_id=1, message_type="train")
        privacy = honest_privacy("site-0001", 250, key, 1, batch_size=32, local_epochs=1)
        wb = [wire_bytes(Message(RecordDict({
            ARRAYS: ArrayRecord({k: Array(v) for k, v in layout(state).items()}),
            METRICS: MetricRecord({NUM_EXAMPLES: 250.0}), PRIVACY: ConfigRecord(privacy)}), reply_to=ask))
            for layout in (per_tensor, pack_branches)]
        tb = sum(v.nbytes for v in state.values())
        print(f"  {name:<40s} {len(state):>7d} {tb:>16,d} {wb[0]:>11,d} {wb[0] / tb:>7.4f} {wb[1]:>11,d} "
              f"{wb[1] / tb:>7.4f} {frozen:>13,d}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replies", type=int, default=1000, help="replies of the default model")
    ap.add_argument("--resnet-replies", type=int, default=24, help="replies of the ResNet-18-sized model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-counts", default="4,8,16", help="numbers of ResNet-sized replies for the memory table")
    ap.add_argument("--no-bytes", action="store_true", help="skip the real train round (bytes per site)")
    ap.add_argument("--bytes-only", action="store_true", help="only the bytes tables (real round + constructed)")
    args = ap.parse_args()
    import torch
    from flwr.supercore.task_identity import TaskIdentity

    torch.set_num_threads(1)
    # what the ServerApp process has set when it builds messages (a task of run 1 on the SuperLink's node)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    print(f"load average {os.getloadavg()[0]:.2f} at the start; numpy {np.__version__}")
    if not args.bytes_only:
        throughput("default model", "default", args.replies, args.repeats, list(LAYOUTS))
        throughput("ResNet-18-GN-sized", "resnet", args.resnet_replies, args.repeats, list(LAYOUTS)[:1])
        memory_growth("resnet", [int(n) for n in args.memory_counts.split(",")])
    if not args.no_bytes:
        bytes_of_constructed_replies()
        bytes_per_round()
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
