"""Issue 15 (bytes per site): a reply's branches packed into one flat array each (``common/packing.py``), read by the
real ModalityFedAvg and RunRecorder. Every check the server made per tensor still holds for a packed branch, and an
honest packed reply is merged and recorded exactly as the same update sent one array per tensor.

The replies are CONSTRUCTED, as in ``test_hostile_replies.py`` (whose honest sites and round this file reuses).
"""

from __future__ import annotations

import numpy as np
import pytest

from common.packing import REPLY_LAYOUTS, pack_branches, reply_arrays, unpack_branch
from tests.server.test_hostile_replies import (  # noqa: F401 (keys: the signing keys fixture)
    GLOBAL, _assert_attacker_failed, _round, _rows, _strategy, keys)

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _packed(p, m, a):
    return p, m, pack_branches(a)


def test_pack_then_unpack_is_the_identity_in_sorted_name_order():
    state = {"head.z": np.arange(3, dtype=np.float32), "head.a": np.arange(4, dtype=np.float32).reshape(2, 2),
             "encoders.tabular.w": np.ones(2, dtype=np.float32)}
    packed = pack_branches(state)
    assert list(packed) == ["tabular", "head"]
    np.testing.assert_array_equal(packed["head"], [0, 1, 2, 3, 0, 1, 2])  # head.a before head.z
    for branch, flat in packed.items():
        for name, value in unpack_branch(branch, flat, state).items():
            np.testing.assert_array_equal(value, state[name])
    with pytest.raises(ValueError, match="holds 6 values"):
        unpack_branch("head", packed["head"][:-1], state)
    with pytest.raises(ValueError, match="mixes dtypes"):
        pack_branches(state | {"head.b": np.zeros(1, dtype=np.float64)})


def test_each_privacy_mode_has_its_layout_and_an_unknown_one_is_refused():
    from common.config.terms import MODES

    state = {"head.a": np.ones(2, dtype=np.float32), "encoders.tabular.w": np.zeros(3, dtype=np.float32)}
    assert set(REPLY_LAYOUTS) == set(MODES)  # a new mode must say how its arrays travel
    assert list(reply_arrays(state, mode="sample")) == list(reply_arrays(state, mode="none")) == ["tabular", "head"]
    central = reply_arrays(state, mode="central")  # Flower's FedAvg and DP wrapper pair tensors by name
    assert list(central) == list(state) and all(central[k] is state[k] for k in state)
    with pytest.raises(ValueError, match="privacy mode 'secagg' has no reply layout"):
        reply_arrays(state, mode="secagg")


def test_a_packed_round_merges_and_records_exactly_what_the_per_tensor_round_does(tmp_path, keys):
    per_tensor, _ = _round(_strategy(tmp_path / "a"), keys)
    packed, _ = _round(_strategy(tmp_path / "b"), keys, alter=_packed, node=1)  # node 1 packed, the others not
    assert packed.keys() == per_tensor.keys() == GLOBAL.keys()
    for k in GLOBAL:
        np.testing.assert_array_equal(packed[k], per_tensor[k])
    # the update's digest in the server's ledger is the same whichever way the arrays travelled
    assert [e.reason for e in _rows(tmp_path / "a").values()] == [e.reason for e in _rows(tmp_path / "b").values()]
    assert all(e.event == "trained" for e in _rows(tmp_path / "b").values())


def _shorter(p, m, a):
    packed = pack_branches(a)
    return p, m, packed | {"tabular": packed["tabular"][:-1]}


def _as_matrix(p, m, a):
    packed = pack_branches(a)
    return p, m, packed | {"tabular": packed["tabular"].reshape(2, 2)}


def _float64(p, m, a):
    packed = pack_branches(a)
    return p, m, packed | {"head": packed["head"].astype(np.float64)}


def _nan(p, m, a):
    packed = pack_branches(a)
    return p, m, packed | {"head": np.full_like(packed["head"], np.nan)}


def _branch_not_held(p, m, a):
    return p, m, pack_branches(a) | {"text": np.full(4, 0.11, dtype=np.float32)}


def _twice(p, m, a):
    return p, m, pack_branches(a) | {"head.b": a["head.b"]}


def _huge(p, m, a):
    return p, m, pack_branches({k: (v * np.float32(1e6)).astype(np.float32) for k, v in a.items()})


def _head_missing(p, m, a):
    return p, m, {k: v for k, v in pack_branches(a).items() if k != "head"}


@pytest.mark.parametrize("alter, match", [
    (_shorter, "packed branch 'tabular' is float32 (3,); expected exactly float32 (4,)"),
    (_as_matrix, "packed branch 'tabular' is float32 (2, 2); expected exactly float32 (4,)"),
    (_float64, "packed branch 'head' is float64 (2,); expected exactly float32"),
    (_nan, "packed branch 'head' contains NaN or inf"),
    (_branch_not_held, "packed branch 'text' belongs to the text branch, which site 'va_long_beach' does not hold"),
    (_twice, "tensors ['head.b'] are sent twice"),
    (_huge, "exceeds max-update-norm"),
    (_head_missing, "carries no tensor of the shared head"),
])
def test_every_check_still_holds_for_a_packed_branch(tmp_path, keys, alter, match):
    merged, _ = _round(_strategy(tmp_path), keys, alter=alter)
    _assert_attacker_failed(tmp_path, merged, match=match)
