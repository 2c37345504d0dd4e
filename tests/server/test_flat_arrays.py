"""Flat segments (server/flat_arrays.py): FedAvg's weighted mean bit for bit as Flower computes it, and a fast array
check that accepts only what the exact, tensor-by-tensor checks of server/replies.py accept, with their words."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY
from server import replies
from server.aggregation import Update, merge
from server.flat_arrays import MARGIN, SEGMENT, ReplyLayout, segments, weighted_mean
from server.identity import RegisteredSite, SiteRegistry

SHAPES = {"encoders.tabular.w": (3, 4), "encoders.tabular.big": (SEGMENT + 4464,), "encoders.tabular.s": (),
          "encoders.tabular.empty": (5, 0), "projections.text.w": (300, 250), "head.b": (7,)}
SITE = RegisteredSite("site", ("tabular", "text"), 100)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _random(shapes, rng, scale=1.0):
    return {k: np.asarray(rng.standard_normal(s) * scale, dtype=np.float32) for k, s in shapes.items()}


def _flower_mean(group, weights):
    records = [RecordDict({"a": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                           "m": MetricRecord({"num-examples": w})}) for arrays, w in zip(group, weights)]
    return {k: v.numpy() for k, v in aggregate_arrayrecords(records, "num-examples").items()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_segments_cut_runs_of_small_tensors_and_slices_of_large_ones():
    cut = segments([("a", 3), ("b", 10), ("c", 2), ("d", 4)], limit=5)
    assert [(s.keys, s.offset, s.size, s.start) for s in cut] == [
        (("a",), 0, 3, -1), (("b",), 3, 5, 0), (("b",), 8, 5, 5), (("c",), 13, 2, -1), (("d",), 15, 4, -1)]
    cut = segments([("a", 2), ("b", 2), ("c", 2)], limit=5)
    assert [(s.keys, s.size) for s in cut] == [(("a", "b"), 4), (("c",), 2)]


def test_weighted_mean_is_flowers_fedavg_bit_for_bit():
    rng = np.random.default_rng(7)
    group = [_random(SHAPES, rng) for _ in range(5)]
    weights = [float(w) for w in rng.integers(1, 1000, 5)]
    ours = weighted_mean(group, weights, SHAPES)
    flower = _flower_mean(group, weights)
    assert all(_same_bits(ours[k], flower[k]) for k in SHAPES)


def test_merge_combines_branches_with_the_same_holders_and_equals_flower_per_branch():
    rng = np.random.default_rng(3)
    glob = _random(SHAPES, rng)
    text = [k for k in SHAPES if k.startswith("projections.text")]
    updates = [Update(name, _random({k: s for k, s in SHAPES.items() if holds_text or k not in text}, rng),
                      float(w)) for name, holds_text, w in (("c", True, 250), ("a", True, 50), ("b", False, 160))]
    result = merge(glob, updates)
    by_site = sorted(updates, key=lambda u: u.site)
    for keys, holders in (([k for k in SHAPES if k not in text], by_site),
                          (text, [u for u in by_site if text[0] in u.arrays])):
        flower = _flower_mean([{k: u.arrays[k] for k in keys} for u in holders], [u.weight for u in holders])
        assert all(_same_bits(result.arrays[k], flower[k]) for k in keys)
    assert result.used == {"head": ["a", "b", "c"], "tabular": ["a", "b", "c"], "text": ["a", "c"]}


def test_float32_mean_stays_within_float32_rounding_of_a_float64_mean():
    rng = np.random.default_rng(11)
    shapes = {"head.w": (4000,)}
    group = [_random(shapes, rng) for _ in range(1000)]
    weights = [float(w) for w in rng.integers(1, 500, 1000)]
    ours = weighted_mean(group, weights, shapes)["head.w"]
    stack = np.stack([g["head.w"] for g in group]).astype(np.float64)
    exact = (np.asarray(weights)[:, None] * stack).sum(axis=0) / sum(weights)
    scale = np.abs(stack).max()
    assert np.max(np.abs(ours - exact)) < 1000 * np.finfo(np.float32).eps * scale  # sum-order bound, loose


# ------------------------------------------------------------------------------------------ the fast check
def _record(arrays) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def test_fast_read_gives_read_only_views_of_flowers_bytes():
    rng = np.random.default_rng(0)
    glob = _random(SHAPES, rng)
    new = {k: np.asarray(v + np.float32(0.01)) for k, v in glob.items()}
    record = _record(new)
    read = ReplyLayout(glob).read(record.items(), SITE.branches, 100.0)
    assert read is not None
    views, packed = read
    assert list(views) == list(SHAPES) and packed == {}
    for k, array in record.items():
        assert _same_bits(views[k], array.numpy()) and not views[k].flags.writeable
        if views[k].size:
            assert np.shares_memory(views[k], np.frombuffer(array.data, np.uint8))


def _npy(a, **kw) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False, **kw)
    return buf.getvalue()


#: faults in the values themselves, the same for either reply layout (test_packed_fast_path.py uses them too)
VALUE_FAULTS = {
    "nan": lambda a: a["encoders.tabular.w"].__setitem__((0, 0), np.nan),
    "inf": lambda a: a["head.b"].__setitem__(3, -np.inf),
    "huge": lambda a: a["encoders.tabular.w"].__setitem__((1, 1), 3e38),  # squares overflow float32: exact decides
    "norm-at-bound": lambda a: a["head.b"].__setitem__(0, a["head.b"][0] + np.float32(100.0)),
}


def _fault(name: str, arrays: dict, record: dict) -> None:
    """Alter a reply (``arrays``: values; ``record``: name -> Array) the way ``name`` says."""
    k = "encoders.tabular.w"
    if name in VALUE_FAULTS:
        VALUE_FAULTS[name](arrays)
    elif name == "dtype":
        arrays[k] = arrays[k].astype(np.float64)
    elif name == "shape":
        arrays[k] = arrays[k].reshape(4, 3)
    elif name == "extra":
        arrays["head.extra"] = np.zeros(2, np.float32)
    elif name == "missing":
        del arrays["encoders.tabular.s"]
    elif name == "branch":
        arrays["encoders.image.w"] = np.zeros(2, np.float32)
    elif name == "no-head":
        del arrays["head.b"]
    record.update({key: Array(v) for key, v in arrays.items()})
    if name == "fortran":
        record[k] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray",
                          data=_npy(np.asfortranarray(arrays[k])))
    elif name == "header-v2":  # a valid .npy (version 2.0 header) that np.save would not write: the exact path reads it
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (3, 4)})
        record[k] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray",
                          data=buf.getvalue() + arrays[k].tobytes())
    elif name == "declared-dtype":
        record[k] = Array(dtype="float64", shape=(3, 4), stype="numpy.ndarray", data=record[k].data)
    elif name == "truncated":
        record[k] = Array(dtype="float32", shape=(3, 4), stype="numpy.ndarray", data=record[k].data[:-4])


FAULTS = ["none", "nan", "inf", "huge", "norm-at-bound", "dtype", "shape", "extra", "missing", "branch", "no-head",
          "fortran", "header-v2", "declared-dtype", "truncated"]


def _reply(fault: str, seed: int, scale: float):
    rng = np.random.default_rng(seed)
    glob = _random(SHAPES, rng)
    arrays = {k: np.asarray(v + rng.standard_normal(v.shape) * scale, dtype=np.float32) for k, v in glob.items()}
    record: dict[str, Array] = {}
    _fault(fault, arrays, record)
    content = RecordDict({ARRAYS: ArrayRecord(record), METRICS: MetricRecord({NUM_EXAMPLES: 100.0}),
                          PRIVACY: ConfigRecord({"status": "trained"})})
    return glob, Message(content, dst_node_id=1, message_type="train")


def _verdict(glob, msg, max_update_norm):
    rules = replies.ReplyRules(registry=SiteRegistry((SITE,), source="test"), global_arrays=glob,
                               max_update_norm=max_update_norm, weighting="max-records", batch_size=10,
                               local_epochs=1)
    try:
        return replies._arrays(replies._Content.of(msg), SITE, rules)
    except replies.Rejected as err:
        return str(err)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(FAULTS), seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 1e-3, 0.1]),
       bound=st.sampled_from([0.0, 100.0, 0.5]))
def test_fast_checks_change_no_verdict_and_no_reason(fault, seed, scale, bound):
    glob, msg = _reply(fault, seed, scale)
    fast = _verdict(glob, msg, bound)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ReplyLayout, "read", lambda *a, **k: None)  # the exact checks alone, as before issue 15
        exact = _verdict(glob, msg, bound)
    if isinstance(exact, str):
        assert fast == exact
    else:
        assert isinstance(fast, replies.ReadArrays) and list(fast.tensors) == list(exact.tensors)
        assert all(_same_bits(fast.tensors[k], exact.tensors[k]) for k in exact.tensors)
        assert fast.packed == exact.packed == {}


@pytest.mark.parametrize("fault", FAULTS[1:])
def test_the_fast_path_declines_every_fault(fault):
    glob, msg = _reply(fault, 1, 1e-3)
    record = msg.content.array_records[ARRAYS]
    assert ReplyLayout(glob).read(record.items(), SITE.branches, 100.0) is None


def test_the_fast_path_takes_honest_replies_and_declines_a_norm_within_its_margin_of_the_bound():
    rng = np.random.default_rng(5)
    glob = _random(SHAPES, rng)
    layout = ReplyLayout(glob)
    new = {k: v.copy() for k, v in glob.items()}
    new["head.b"][0] += np.float32(1.0)  # norm 1 (to float32 rounding)
    items = _record(new).items()
    assert layout.read(items, SITE.branches, 0.0) is not None  # no bound
    assert layout.read(items, SITE.branches, 1.0 / (1 - MARGIN / 2)) is None  # within the margin: exact check
    assert layout.read(items, SITE.branches, 1.0 / (1 - 2 * MARGIN)) is not None
    assert layout.read(items, ("tabular", "head"), 100.0) is None  # a branch the site does not hold


def test_a_model_not_all_float32_leaves_every_reply_to_the_exact_checks():
    glob = {"head.b": np.zeros(2, np.float64), "encoders.tabular.w": np.zeros(3, np.float32)}
    layout = ReplyLayout(glob)
    assert not layout.enabled
    assert layout.read(_record(glob).items(), SITE.branches, 0.0) is None
