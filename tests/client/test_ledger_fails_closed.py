"""Issue 12: a site's ledger fails closed (cases 24, 25, 27), is private, and is held by one process at a time.

The site's state is real (a SitePrivacy with its ledger, signing key and signed heads); the tampering is what the
probe did to the files: delete or empty the ledger, delete its newest rows with the append-only triggers dropped,
edit its heads table.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from common.config import PrivacySettings
from common.privacy.entry import LedgerEntry
from common.privacy.ledger import Ledger, LedgerIntegrityError
from common.privacy.ledger_guard import HEAD_MARK_FILE, LedgerBusy, site_lock

SITE, DELTA = "alpha", 1e-5


def _privacy(state: Path):
    from client.privacy import SitePrivacy

    settings = PrivacySettings(enabled=True, target_epsilon=5.0, epsilon_budget=10.0, delta=DELTA, max_grad_norm=1.0,
                               accountant="prv", secure_mode=False, max_records=1000)
    return SitePrivacy(site=SITE, dataset_id="alpha-data", settings=settings, num_examples=1000, state_dir=state)


def _train_rounds(state: Path, rounds: int = 2) -> None:
    """What a site's rounds leave behind: reserve + confirm rows, then a signed head, per round."""
    sp = _privacy(state)
    for rnd in range(1, rounds + 1):
        ids = dict(site=SITE, round=rnd, federation_id="fed", run_id="r", dataset_id=sp.dataset_id,
                   noise_multiplier=1.0, sample_rate=0.1, max_grad_norm=1.0, delta=DELTA, accountant="prv",
                   target_epsilon=5.0)
        for event in ("reserve", "confirm"):
            sp.ledger.append(LedgerEntry(event=event, steps=10, epsilon=0.5 * rnd, epsilon_rdp=0.6 * rnd, **ids))
        sp.sign_head(round=rnd, run_id="r")


def _raw_sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(str(path), isolation_level=None)
    for name in ("entries_no_update", "entries_no_delete", "heads_no_update", "heads_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {name}")
    for s in statements:
        conn.execute(s)
    conn.close()


@pytest.fixture
def state(tmp_path) -> Path:
    s = tmp_path / "sites" / SITE
    _train_rounds(s)
    return s


def test_an_intact_ledger_and_a_fresh_state_folder_open(state, tmp_path):
    _privacy(state)  # no false alarm after honest rounds
    _privacy(tmp_path / "fresh")  # nothing there yet: a new dataset


def test_state_folder_and_ledger_are_private_in_simulation_too(state):
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "ledger.sqlite").stat().st_mode) == 0o600


def test_a_ledger_written_0644_by_an_older_version_is_made_private(state):
    (state / "ledger.sqlite").chmod(0o644)
    _privacy(state)
    assert stat.S_IMODE((state / "ledger.sqlite").stat().st_mode) == 0o600


def test_case24_a_deleted_ledger_with_history_in_the_state_folder_refuses_to_train(state):
    (state / "ledger.sqlite").unlink()
    with pytest.raises(LedgerIntegrityError, match="ledger is missing, but the state folder shows that this site "
                                                   "trained before.*Restore the state folder"):
        _privacy(state)
    assert not (state / "ledger.sqlite").exists()  # nothing was created that would start from ε = 0 next time


def test_case25_an_emptied_ledger_refuses_to_train(state):
    (state / "ledger.sqlite").unlink()
    Ledger(state / "ledger.sqlite")  # a new, empty ledger file in its place
    with pytest.raises(LedgerIntegrityError, match="ledger is empty"):
        _privacy(state)


def test_case27_newest_rows_deleted_with_the_triggers_dropped_refuses_to_train(state):
    _raw_sql(state / "ledger.sqlite", "DELETE FROM entries WHERE seq > 2", "DELETE FROM heads WHERE seq > 1")
    assert Ledger(state / "ledger.sqlite", read_only=True).verify() == []  # the shorter chain verifies by itself
    with pytest.raises(LedgerIntegrityError, match="covers row 4, but the ledger has 2 rows"):
        _privacy(state)


def test_case27_its_own_heads_table_is_checked_on_open(state):
    _raw_sql(state / "ledger.sqlite", "UPDATE heads SET head_seq = 1 WHERE seq = 2")
    with pytest.raises(LedgerIntegrityError, match="heads table does not verify"):
        _privacy(state)


def test_a_broken_chain_refuses_to_train(state):
    _raw_sql(state / "ledger.sqlite", "UPDATE entries SET epsilon = 0.001 WHERE seq = 4")
    with pytest.raises(LedgerIntegrityError, match="hash chain does not verify"):
        _privacy(state)


def test_an_unreadable_last_signed_head_refuses_to_train(state):
    (state / HEAD_MARK_FILE).write_text("{")
    with pytest.raises(LedgerIntegrityError, match="unreadable"):
        _privacy(state)


def test_one_holder_at_a_time_holds_a_sites_ledger(tmp_path):
    """Another process (or thread) waits; the holder's own thread may take it again (the round, then its ledger)."""
    import subprocess
    import sys
    import threading

    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            with site_lock(tmp_path / "s", timeout=0.2):
                pass
        except LedgerBusy as err:
            errors.append(err)

    with site_lock(tmp_path / "s"):
        with site_lock(tmp_path / "s", timeout=0.2):  # re-entrant in the holding thread
            pass
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        code = ("import sys; from pathlib import Path; from common.privacy.ledger_guard import site_lock, LedgerBusy\n"
                "try:\n    with site_lock(Path(sys.argv[1]), timeout=0.2): sys.exit(0)\n"
                "except LedgerBusy: sys.exit(3)")
        other = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], cwd=Path(__file__).parents[2])
    assert len(errors) == 1 and "another process has held this site's ledger" in str(errors[0])
    assert other.returncode == 3, other
    with site_lock(tmp_path / "s", timeout=0.2):  # released when the first block ends
        pass


def test_a_head_whose_signature_does_not_verify_refuses_to_train_after_good_ones_were_checked(state):
    """The guard remembers signatures it verified (per process): a rewritten one is a new check, and fails."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric import ec

    from common.privacy.signing import head_record_hash, sign_head

    _privacy(state)  # both heads verified (and remembered) in this process
    last = Ledger(state / "ledger.sqlite", read_only=True).heads()[-1]
    forged = sign_head(ec.generate_private_key(ec.SECP384R1()), kind=last.kind, site=last.site, seq=last.head_seq,
                       head_hash=last.head_hash)  # another key's signature, under the site's public key
    rehashed = head_record_hash(dataclasses.replace(last, signature=forged, hash=""))  # the heads chain still holds
    conn = sqlite3.connect(str(state / "ledger.sqlite"), isolation_level=None)
    conn.execute("DROP TRIGGER heads_no_update")
    conn.execute("UPDATE heads SET signature = ?, hash = ? WHERE seq = ?", (forged, rehashed, last.seq))
    conn.close()
    assert Ledger(state / "ledger.sqlite", read_only=True).verify_heads() == []
    with pytest.raises(LedgerIntegrityError, match="signature of its head of round 2 .row 4. does not verify"):
        _privacy(state)
