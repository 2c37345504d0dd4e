"""The fast array check on PACKED replies (``common/packing.py``: one flat float32 array per branch, what a
sample-mode site sends): the same verdicts and the same words as the exact checks of server/reply_arrays.py, and
a merge of packed updates bit for bit Flower's FedAvg of the same tensors."""

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.models.params import branch_of
from common.packing import pack_branches
from common.records import ARRAYS, METRICS, NUM_EXAMPLES, PRIVACY
from server import replies
from server.aggregation import Update, merge
from server.flat_arrays import MARGIN, ReplyLayout
from tests.server.test_flat_arrays import SHAPES, SITE, VALUE_FAULTS, _flower_mean, _random, _same_bits

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _plain(data: bytes, dtype: str, shape: tuple[int, ...]) -> Array:
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=data)


def _fault(name: str, arrays: dict) -> dict[str, Array]:
    """The packed reply of ``arrays`` (name -> values), altered the way ``name`` says."""
    if name in VALUE_FAULTS:
        VALUE_FAULTS[name](arrays)
    elif name == "missing":  # the packed tabular branch one tensor short
        del arrays["encoders.tabular.s"]
    packed = pack_branches(arrays)
    if name == "dtype":
        packed["tabular"] = packed["tabular"].astype(np.float64)
    elif name == "shape":
        packed["head"] = packed["head"].reshape(7, 1)
    elif name == "short":
        packed["head"] = packed["head"][:-1]
    elif name == "no-head":
        del packed["head"]
    record = {key: Array(np.ascontiguousarray(v)) for key, v in packed.items()}
    tab = record["tabular"]
    if name == "extra":
        record["head.extra"] = Array(np.zeros(2, np.float32))
    elif name == "branch":  # a branch the site does not hold and the model has not
        record["image"] = Array(np.zeros(2, np.float32))
    elif name == "twice":  # a tensor sent packed and on its own
        record["encoders.tabular.w"] = Array(arrays["encoders.tabular.w"])
    elif name == "mixed":  # the text branch one array per tensor, the others packed: valid
        del record["text"]
        record.update({key: Array(v) for key, v in arrays.items() if key.startswith("projections.text")})
    elif name == "header-v2":  # a valid .npy that np.save would not write: the exact path reads it
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tab.shape})
        record["tabular"] = _plain(buf.getvalue() + packed["tabular"].tobytes(), "float32", tab.shape)
    elif name == "declared-dtype":
        record["tabular"] = _plain(tab.data, "float64", tab.shape)
    elif name == "truncated":
        record["tabular"] = _plain(tab.data[:-4], "float32", tab.shape)
    return record


FAULTS = ["none", "nan", "inf", "huge", "norm-at-bound", "dtype", "shape", "short", "extra", "missing", "branch",
          "no-head", "twice", "header-v2", "declared-dtype", "truncated"]
ACCEPTED = ["none", "mixed"]


def _reply(fault: str, seed: int, scale: float):
    rng = np.random.default_rng(seed)
    glob = _random(SHAPES, rng)
    arrays = {k: np.asarray(v + rng.standard_normal(v.shape) * scale, dtype=np.float32) for k, v in glob.items()}
    content = RecordDict({ARRAYS: ArrayRecord(_fault(fault, arrays)), METRICS: MetricRecord({NUM_EXAMPLES: 100.0}),
                          PRIVACY: ConfigRecord({"status": "trained"})})
    return glob, Message(content, dst_node_id=1, message_type="train")


def _verdict(glob, msg, max_update_norm, exact_only=False):
    rules = replies.ReplyRules(registry=replies.SiteRegistry((SITE,), source="test"), global_arrays=glob,
                               max_update_norm=max_update_norm, weighting="max-records", batch_size=10,
                               local_epochs=1)
    with pytest.MonkeyPatch.context() as patch:
        if exact_only:
            patch.setattr(ReplyLayout, "read", lambda *a, **k: None)  # the exact checks alone
        try:
            return replies._arrays(replies._Content.of(msg), SITE, rules)
        except replies.Rejected as err:
            return str(err)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(fault=st.sampled_from(FAULTS + ["mixed"]), seed=st.integers(0, 2**16),
       scale=st.sampled_from([0.0, 1e-3, 0.1]), bound=st.sampled_from([0.0, 100.0, 0.5]))
def test_packed_fast_checks_change_no_verdict_and_no_reason(fault, seed, scale, bound):
    glob, msg = _reply(fault, seed, scale)
    fast, exact = _verdict(glob, msg, bound), _verdict(glob, msg, bound, exact_only=True)
    if isinstance(exact, str):
        assert fast == exact
    else:
        assert isinstance(fast, replies.ReadArrays) and list(fast.tensors) == list(exact.tensors)
        assert all(_same_bits(fast.tensors[k], exact.tensors[k]) for k in exact.tensors)
        assert list(fast.packed) == list(exact.packed) and all(
            _same_bits(fast.packed[b], exact.packed[b]) for b in exact.packed)


@pytest.mark.parametrize("fault", FAULTS)
def test_exact_verdicts_on_packed_replies(fault):
    glob, msg = _reply(fault, 2, 1e-3)
    verdict = _verdict(glob, msg, 100.0)
    expected = {"none": None, "nan": "packed branch 'tabular' contains NaN or inf",
                "inf": "packed branch 'head' contains NaN or inf",
                "huge": "exceeds max-update-norm 100", "norm-at-bound": "exceeds max-update-norm 100",
                "dtype": "packed branch 'tabular' is float64 (70013,); expected exactly float32 (70013,), as sent",
                "shape": "packed branch 'head' is float32 (7, 1); expected exactly float32 (7,), as sent",
                "short": "packed branch 'head' is float32 (6,); expected exactly float32 (7,), as sent",
                "extra": "tensor 'head.extra' is not part of the global model",
                "missing": "packed branch 'tabular' is float32 (70012,); expected exactly float32 (70013,), as sent",
                "branch": "packed branch 'image' belongs to the image branch, which site 'site' does not hold",
                "no-head": "the update carries no tensor of the shared head",
                "twice": "tensors ['encoders.tabular.w'] are sent twice (packed and on their own)",
                "header-v2": None,
                "declared-dtype": "packed branch 'tabular' is float64 (70013,); expected exactly float32",
                "truncated": "packed branch 'tabular' cannot be read as a numpy array"}[fault]
    if expected is None:
        assert isinstance(verdict, replies.ReadArrays) and sorted(verdict.packed) == ["head", "tabular", "text"]
    else:
        assert isinstance(verdict, str) and expected in verdict


@pytest.mark.parametrize("fault", [f for f in FAULTS if f not in ACCEPTED])
def test_the_fast_path_declines_every_packed_fault(fault):
    glob, msg = _reply(fault, 1, 1e-3)
    assert ReplyLayout(glob).read(msg.content.array_records[ARRAYS].items(), SITE.branches, 100.0) is None


def test_the_fast_path_takes_a_packed_reply_whole_and_declines_a_norm_within_its_margin():
    rng = np.random.default_rng(5)
    glob = _random(SHAPES, rng)
    layout = ReplyLayout(glob)
    new = {k: v.copy() for k, v in glob.items()}
    new["head.b"][0] += np.float32(1.0)  # norm 1 (to float32 rounding)
    items = list(ArrayRecord({k: Array(v) for k, v in pack_branches(new).items()}).items())
    read = layout.read(items, SITE.branches, 0.0)
    assert read is not None
    tensors, packed = read
    assert sorted(packed) == ["head", "tabular", "text"] and sorted(tensors) == sorted(SHAPES)
    assert not any(vector.flags.writeable for vector in packed.values())  # views over Flower's bytes
    for k in SHAPES:  # each tensor a view of its branch's vector
        assert tensors[k].size == 0 or np.shares_memory(tensors[k], packed[branch_of(k)])
    assert all(_same_bits(tensors[k], new[k]) for k in SHAPES)
    assert layout.read(items, SITE.branches, 1.0 / (1 - MARGIN / 2)) is None  # within the margin: exact check
    assert layout.read(items, SITE.branches, 1.0 / (1 - 2 * MARGIN)) is not None


def test_a_merge_of_packed_updates_is_flowers_fedavg_of_their_tensors_bit_for_bit():
    rng = np.random.default_rng(9)
    glob = _random(SHAPES, rng)
    rules = replies.ReplyRules(registry=replies.SiteRegistry((SITE,), source="test"), global_arrays=glob,
                               max_update_norm=0.0, weighting="max-records", batch_size=10, local_epochs=1)
    updates = []
    for name, w in (("c", 250.0), ("a", 50.0), ("b", 160.0)):
        new = {k: np.asarray(v + rng.standard_normal(v.shape) * 0.1, dtype=np.float32) for k, v in glob.items()}
        msg = Message(RecordDict({ARRAYS: ArrayRecord({k: Array(v) for k, v in pack_branches(new).items()})}),
                      dst_node_id=1, message_type="train")
        read = replies._arrays(replies._Content.of(msg), SITE, rules)
        assert sorted(read.packed) == ["head", "tabular", "text"]
        updates.append(Update(name, read.tensors, w, read.packed))
    result = merge(glob, updates)
    by_site = sorted(updates, key=lambda u: u.site)
    flower = _flower_mean([dict(u.arrays) for u in by_site], [u.weight for u in by_site])
    assert all(_same_bits(result.arrays[k], flower[k]) for k in SHAPES)
    per_tensor = merge(glob, [Update(u.site, u.arrays, u.weight) for u in updates])  # the per-tensor path
    assert all(_same_bits(result.arrays[k], per_tensor.arrays[k]) for k in SHAPES)
    assert result.used == {"head": ["a", "b", "c"], "tabular": ["a", "b", "c"], "text": ["a", "b", "c"]}
