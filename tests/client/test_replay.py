"""A round asked again is replayed from the cache and never spent twice."""

import numpy as np
import pytest

from client.replay import ReplayCache, state_digest
from common.privacy.ledger import Ledger
from common.records import STATUS_DECLINED, STATUS_REPLAYED, STATUS_TRAINED
from common.storage import arrays_digest
from server.checkpoint import CheckpointError, Checkpoint, load_checkpoint, save_checkpoint



def test_replayed_round_spends_nothing_and_returns_the_same_reply(make_job, initial_state):
    job = make_job(round_=1, run_id="r1")
    state = initial_state(job)
    cache, digest = ReplayCache(job.site.state_dir, site=job.site.spec.name), state_digest(state)
    assert cache.get("fed-test", 1, digest) is None
    first = job.train(state)
    cache.put("fed-test", 1, digest, first)
    ledger = Ledger(job.site.state_dir / "ledger.sqlite")
    rows_before = len(ledger.entries())

    again = cache.get("fed-test", 1, digest)
    assert again is not None and again.privacy["status"] == STATUS_REPLAYED
    assert again.privacy["epsilon"] == first.privacy["epsilon"]
    assert set(again.arrays) == set(first.arrays)
    for k in first.arrays:
        np.testing.assert_array_equal(again.arrays[k].numpy(), first.arrays[k].numpy())
    assert len(ledger.entries()) == rows_before  # no new reservation

    # the reply is lost but the ledger shows the round was reserved: decline, don't spend twice
    for f in (job.site.state_dir / "replay").rglob("*.safetensors"):
        f.unlink()
    lost = cache.get("fed-test", 1, digest)
    assert lost is not None and lost.privacy["status"] == STATUS_DECLINED and "already reserved" in lost.privacy["reason"]
    # another federation / round is not affected
    assert cache.get("fed-test", 2, digest) is None
    assert first.privacy["status"] == STATUS_TRAINED


def test_checkpoint_round_trip_and_refuses_another_federation(tmp_path):
    arrays = {"head.w": np.arange(6, dtype=np.float32).reshape(2, 3), "encoders.tabular.b": np.ones(3, np.float32)}
    save_checkpoint(tmp_path, Checkpoint("fed-a", 3, arrays, arrays_digest(arrays)))
    ck = load_checkpoint(tmp_path, federation_id="fed-a")
    assert ck.round == 3 and ck.digest == arrays_digest(arrays)
    for k in arrays:
        np.testing.assert_array_equal(ck.arrays[k], arrays[k])
    with pytest.raises(CheckpointError, match="belongs to federation 'fed-a'"):
        load_checkpoint(tmp_path, federation_id="fed-b")
    assert load_checkpoint(tmp_path / "none", federation_id="fed-a") is None


def test_site_and_server_digests_agree():
    import torch

    state = {"b": torch.ones(2), "a": torch.arange(4, dtype=torch.float32)}
    assert state_digest(state) == arrays_digest({k: v.numpy() for k, v in state.items()})


def test_a_lost_reply_declines_with_the_epsilon_of_the_whole_history(make_job, initial_state):
    """Before: this decline carried no ε, and the server's summary blanked the site's spent ε."""
    from common.privacy.accountant import epsilon_from_history

    job = make_job(round_=1, run_id="r1")
    state = initial_state(job)
    cache, digest = ReplayCache(job.site.state_dir, site=job.site.spec.name), state_digest(state)
    first = job.train(state)  # reserved and confirmed; its reply is never cached (lost)
    ledger = Ledger(job.site.state_dir / "ledger.sqlite")
    rows_before = len(ledger.entries())
    again = make_job(round_=1, run_id="r1")
    lost = cache.get("fed-test", 1, digest, report=again.decline_report)
    assert lost.arrays is None and lost.privacy["status"] == STATUS_DECLINED
    assert "already reserved" in lost.privacy["reason"]
    history = ledger.mechanism_history(site=job.site.spec.name)
    fresh = epsilon_from_history(history, delta=lost.privacy["delta"], accountant=lost.privacy["accountant"])
    assert lost.privacy["epsilon"] == pytest.approx(fresh, rel=1e-9) == pytest.approx(first.privacy["epsilon"])
    assert lost.privacy["steps"] == 0 and lost.privacy["total-steps"] == first.privacy["total-steps"]
    assert len(ledger.entries()) == rows_before  # a report, not a ledger row
