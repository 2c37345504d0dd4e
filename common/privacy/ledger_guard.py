"""A site's ledger fails closed: one process at a time, and never an account from a ledger that lost history.

The ledger is the only record of what a site's data has spent. A missing, emptied, truncated or rewritten ledger
would let the site train again from ε = 0, so before it plans a round the site checks (:func:`check_site_ledger`):

* **history evidence without a ledger**: the state folder shows that the site released before (its reply cache
  ``replay/``, or its newest signed head ``signed-head.json``: both are written only after a ledger row), but
  ``ledger.sqlite`` is missing or holds no row;
* **a ledger shorter than its last signed head**: ``signed-head.json`` (written beside the ledger after every
  signature, :func:`write_signed_head`) names a row the ledger no longer has, or a row with another hash;
* **a broken chain**: :meth:`~common.privacy.ledger.Ledger.verify` finds a problem;
* **its own heads table**: the ``heads`` table's hash chain is broken, a signed head names a row the ledger no
  longer has (or has with another hash), or a signature does not verify.

Any of these raises :class:`~common.privacy.ledger.LedgerIntegrityError` saying how to restore the ledger; the
site replies with the code ``ledger-integrity`` and spends nothing. :func:`site_lock` serialises a site's rounds
across processes (two SuperNodes or runs on one state folder): an exclusive ``flock`` on ``ledger.lock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from common.privacy.ledger import Ledger, LedgerIntegrityError
from common.privacy.signing import HeadRecord, verify_head
from common.storage import atomic_write_text

__all__ = ["HEAD_MARK_FILE", "LEDGER_FILE", "LOCK_FILE", "LedgerBusy", "check_site_ledger", "history_evidence",
           "private_state_dir", "site_lock", "write_signed_head"]

LEDGER_FILE = "ledger.sqlite"
HEAD_MARK_FILE = "signed-head.json"  # the newest head this site signed, outside the ledger file
LOCK_FILE = "ledger.lock"


class LedgerBusy(RuntimeError):
    """Another process holds the site's ledger lock for longer than the wait allows."""


def private_state_dir(state_dir: Path) -> Path:
    """Create ``state_dir`` if needed and make it private to this user (0700), as ``site init`` does."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    return state_dir


_HELD: dict[str, list] = {}  # lock file -> [this process's re-entrant lock, depth, descriptor]
_GUARD = threading.Lock()


@contextlib.contextmanager
def site_lock(state_dir: Path, *, timeout: float = 900.0) -> Iterator[None]:
    """Hold the site's exclusive ledger lock (``<state-dir>/ledger.lock``) for the block; wait up to ``timeout`` s.

    Across processes: an exclusive ``flock``. Within a process: re-entrant for the thread that holds it (the
    handler holds it for a round; the round's ``SitePrivacy`` takes it again to check and open the ledger), and
    exclusive between threads.
    """
    private_state_dir(state_dir)
    path = str((state_dir / LOCK_FILE).resolve())
    with _GUARD:
        held = _HELD.setdefault(path, [threading.RLock(), 0, -1])
    busy = LedgerBusy(f"{path}: another process has held this site's ledger for over {timeout:.0f}s (two "
                      "SuperNodes or runs on one state folder?)")
    if not held[0].acquire(timeout=timeout):
        raise busy
    try:
        if held[1] == 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise busy from None
                    time.sleep(0.1)
            held[2] = fd
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
            if held[1] == 0:
                os.close(held[2])  # closing the descriptor releases the lock
                held[2] = -1
    finally:
        held[0].release()


def history_evidence(state_dir: Path) -> list[str]:
    """What in ``state_dir`` (besides the ledger) shows that this site released before."""
    found = []
    replay = state_dir / "replay"
    if replay.is_dir() and any(p.is_file() for p in replay.rglob("*.safetensors")):
        found.append(f"its reply cache {replay}")
    if (state_dir / HEAD_MARK_FILE).is_file():
        found.append(f"its last signed ledger head {state_dir / HEAD_MARK_FILE}")
    return found


def write_signed_head(state_dir: Path, head: HeadRecord) -> None:
    """Keep the newest signed head beside the ledger (atomic): a later, shorter ledger is then refused."""
    atomic_write_text(state_dir / HEAD_MARK_FILE, json.dumps(
        {"site": head.site, "seq": head.head_seq, "hash": head.head_hash, "signature": head.signature,
         "public-key": head.public_key}, indent=1, sort_keys=True))


#: a site checks every head of its ledger before every round; a signature's check is a pure function of the key,
#: the signature and the head, so each one is verified once per process (0.4 ms of ECDSA P-384 a head, per message)
_verified_head = functools.lru_cache(maxsize=4096)(verify_head)


def _refuse(state_dir: Path, problem: str) -> LedgerIntegrityError:
    return LedgerIntegrityError(
        f"{state_dir / LEDGER_FILE}: {problem}. This site refuses to train: an account from this ledger could "
        f"under-count what its data has spent. Restore the state folder {state_dir} (ledger.sqlite with it) from "
        "your backup and check it with `fedfusion audit STATE-DIR`; never delete, edit or replace the ledger of a "
        "dataset that has been trained on (DEPLOY.md section 6). A new dataset gets a new, empty state folder.",
        problems=[problem])


def _head_mismatch(rows: dict[int, str], seq: int, head_hash: str, what: str) -> str:
    if seq == 0:
        return ""
    if seq not in rows:
        return f"{what} covers row {seq}, but the ledger has {max(rows, default=0)} rows (it was truncated)"
    if rows[seq] != head_hash:
        return f"row {seq} is not the row {what} covers (it was rewritten)"
    return ""


def check_site_ledger(state_dir: Path, *, site: str) -> None:
    """Refuse a ledger that lost history (see the module docstring); a fresh state folder passes.

    Raises
    ------
    LedgerIntegrityError
        Naming what is wrong and how to restore it.
    """
    path = state_dir / LEDGER_FILE
    evidence = history_evidence(state_dir)
    rows: dict[int, str] = {}
    if path.is_file():
        problems, head_problems, entries, heads = Ledger(path, read_only=True).verified()  # one snapshot
        if problems:
            raise _refuse(state_dir, f"its hash chain does not verify ({len(problems)} problem(s); first: "
                                     f"{problems[0]})")
        if head_problems:
            raise _refuse(state_dir, f"its heads table does not verify: {head_problems[0]}")
        rows = {e.seq: e.hash for e in entries if e.seq is not None}
        for head in (h for h in heads if h.site == site):
            problem = _head_mismatch(rows, head.head_seq, head.head_hash, f"its signed head of round {head.round}")
            if not problem and not _verified_head(head.public_key, head.signature, kind=head.kind, site=site,
                                                  seq=head.head_seq, head_hash=head.head_hash):
                problem = f"the signature of its head of round {head.round} (row {head.head_seq}) does not verify"
            if problem:
                raise _refuse(state_dir, problem)
    if not rows and evidence:
        raise _refuse(state_dir, f"the ledger is {'empty' if path.is_file() else 'missing'}, but the state folder "
                                 f"shows that this site trained before: {'; '.join(evidence)}")
    mark = state_dir / HEAD_MARK_FILE
    if mark.is_file():
        try:
            last = json.loads(mark.read_text())
            seq, head_hash = int(last["seq"]), str(last["hash"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise _refuse(state_dir, f"its last signed head {mark} is unreadable ({err})") from err
        problem = _head_mismatch(rows, seq, head_hash, f"its last signed head ({mark.name})")
        if problem:
            raise _refuse(state_dir, problem)
