"""One row of the privacy ledger, its validation, and the canonical bytes its hash covers.

The same format serves a site's ledger and the server's (see :mod:`common.privacy.ledger`).

Events
------
Site (``SITE_EVENTS``):

* ``"reserve"``: written BEFORE any DP step of a round; the round's mechanism (σ, q, steps,
  C, δ, accountant) and the cumulative ε the site will have reached after it. A reservation
  counts as spent whether or not it is confirmed (conservative).
* ``"confirm"``: the round's steps ran.
* ``"decline"``: the round would exceed the budget, or the site refused the run's request
  (``reason`` says which); mechanism fields of the refused round may be filled, ``epsilon`` =
  what was already spent.

A row's ``reason`` may open with a ``mode=...`` statement (:func:`statement_mode`): ``mode=central``
(site-level DP by the server, see :mod:`common.privacy.central`) or ``mode=none``: a release
WITHOUT differential privacy that the site's own file allowed (``dp = false``): a reserve row
with no mechanism and ``epsilon = inf``; every later ε of that site is ∞.

Server (``SERVER_EVENTS``): ``"trained"``, ``"declined"``, ``"failed"`` — what a site reported; ``"no-reply"`` —
a site sampled for the round never answered (it may have spent the round).

Hash
----
``hash = sha256(canonical_json(entry without "hash"))``, hex. Canonical JSON: keys sorted,
no whitespace, ASCII only, floats written by ``repr`` (shortest exact round trip; ``inf``
as ``Infinity``, NaN refused), ints as ints. Field types are normalised in
``__post_init__`` (an int σ becomes a float), so an entry read back from SQLite hashes to
the same bytes as the one written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from common.privacy.accountant import ACCOUNTANTS, Mechanism

__all__ = [
    "EVENTS",
    "GENESIS_HASH",
    "NO_DP",
    "NO_DP_STATEMENT",
    "SITE_RECORD_STATEMENT",
    "SERVER_EVENTS",
    "SITE_EVENTS",
    "LedgerEntry",
    "canonical_json",
    "copies_statement",
    "entry_hash",
    "mechanism_history_of",
    "statement_copies",
    "statement_mode",
]

SITE_EVENTS: tuple[str, ...] = ("reserve", "confirm", "decline")
SERVER_EVENTS: tuple[str, ...] = ("trained", "declined", "failed", "no-reply")
EVENTS: tuple[str, ...] = SITE_EVENTS + SERVER_EVENTS
GENESIS_HASH = "0" * 64  # prev_hash of the first row
NO_DP = "none"  # statement_mode of a release without DP (ε = ∞)
_COPIES = "max-copies="  # copies_statement: the largest number of training records that are copies of one another
#: the ``reason`` of a release without DP, in the site's ledger and the server's (``mode=none``: ε = ∞)
NO_DP_STATEMENT = f"mode={NO_DP}; release=without-dp; allowed-by=the site's own file (dp = false); epsilon=inf"
#: the ``reason`` of a site's OWN ledger row of its central participation (record-level: the server's σ/2;
#: common/privacy/central.py)
SITE_RECORD_STATEMENT = ("mode=central; unit=record; relation=add-or-remove-one-record; sampling=no-amplification; "
                         "noise=the server's sigma/2 (it clips this site's whole update to C: sensitivity 2C); "
                         "trusted-curator=the server sees this site's raw update")


def copies_statement(copies: int) -> str:
    """The statement a site's release rows carry when its own file allows records that are copies of one another
    in content (``duplicate-records = "allow"``; common/data/duplicates.py): the largest number of copies."""
    return (f"duplicate-records=allow; {_COPIES}{copies}; group-privacy=a person whose record appears {copies} times "
            f"is protected as a group of {copies} records, not by the stated epsilon")


def statement_copies(reason: str) -> int:
    """The largest number of copies a row's ``reason`` states (:func:`copies_statement`); 1 if it states none."""
    for part in str(reason or "").split(";"):
        part = part.strip()
        if part.startswith(_COPIES) and part[len(_COPIES):].isdigit():
            return int(part[len(_COPIES):])
    return 1


def statement_mode(reason: str) -> str:
    """The ``mode=`` a row's ``reason`` opens with (``"sample"`` if none: plain DP-SGD rows state nothing)."""
    head = str(reason or "").split(" | ", 1)[0].split(";", 1)[0].strip()
    return head.split("=", 1)[1].strip() if head.startswith("mode=") else "sample"


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    site: str  # site (hospital/bank) slug the row is about
    round: int  # server round (>= 0)
    event: str  # one of EVENTS
    federation_id: str = ""  # federation the round belongs to
    run_id: str = ""  # Flower run the round belongs to
    dataset_id: str = ""  # identity of the site's dataset version ("" = unspecified)
    noise_multiplier: float | None = None  # σ of the round's DP-SGD
    sample_rate: float | None = None  # Poisson sampling rate q = 1/ceil(max-records / batch-size)
    steps: int = 0  # DP-SGD steps of the round
    max_grad_norm: float | None = None  # clipping norm C
    delta: float | None = None  # δ the ε values refer to
    accountant: str = ""  # accountant the ε values come from ("prv" | "rdp")
    epsilon: float | None = None  # cumulative ε (reserve: after the round; decline: already spent)
    epsilon_rdp: float | None = None  # the same by RDP (conservative companion figure)
    target_epsilon: float | None = None  # the ε the site calibrated for
    reason: str = ""  # why (decline / failure), free text
    seq: int | None = None  # position in the chain, assigned by Ledger.append (1, 2, ...)
    ts: str = ""  # UTC ISO-8601 time of append, assigned by Ledger.append
    prev_hash: str = ""  # hash of row seq-1 (GENESIS_HASH for seq 1), assigned by Ledger.append
    hash: str = ""  # sha256 of canonical_json of every other field, assigned by Ledger.append

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _NORMALISE[f.type](value, f.name))
        for name, check, why in _RULES:
            value = getattr(self, name)
            if value is not None and not check(value):
                raise ValueError(f"LedgerEntry.{name}={value!r} (site={self.site!r}, round={self.round}): {why}")
        if self.event not in EVENTS:
            raise ValueError(f"LedgerEntry.event={self.event!r} (site={self.site!r}, round={self.round}): "
                             f"expected one of {EVENTS}")
        if self.event == "reserve" and statement_mode(self.reason) == NO_DP:
            if self.epsilon != math.inf or self.noise_multiplier is not None:
                raise ValueError(f"LedgerEntry (site={self.site!r}, round={self.round}): a release without DP "
                                 f"(reason 'mode={NO_DP}') has no σ and ε = inf; got σ={self.noise_multiplier!r}, "
                                 f"ε={self.epsilon!r}")
            return
        missing = [n for n in _REQUIRED.get(self.event, ()) if getattr(self, n) is None or getattr(self, n) == ""]
        if self.event == "reserve" and self.steps < 1:
            missing.append("steps")
        if missing:
            raise ValueError(f"LedgerEntry event {self.event!r} (site={self.site!r}, round={self.round}) needs "
                             f"{missing}: a {self.event} row must record its mechanism to be accountable")
        if self.event == "reserve" and self.accountant not in ACCOUNTANTS:
            raise ValueError(f"LedgerEntry.accountant={self.accountant!r} (site={self.site!r}, round={self.round}):"
                             f" a reserve row needs one of {ACCOUNTANTS}")


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"LedgerEntry.{name} must be a str, got {type(value).__name__} {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"LedgerEntry.{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def _opt_int(value: Any, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _opt_float(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(float(value)):
        raise ValueError(f"LedgerEntry.{name} must be a number (not NaN) or None, got {value!r}")
    return float(value)


# field type annotation (as written above, a string under `from __future__ import annotations`) -> normaliser
_NORMALISE = {"str": _str, "int": _int, "int | None": _opt_int, "float | None": _opt_float}

_RULES: tuple[tuple[str, Any, str], ...] = (
    ("site", bool, "must be non-empty"),
    ("round", lambda v: v >= 0, "must be >= 0"),
    ("steps", lambda v: v >= 0, "must be >= 0"),
    ("noise_multiplier", lambda v: 0 < v < math.inf, "σ must be finite and > 0"),
    ("sample_rate", lambda v: 0 < v <= 1, "q must be in (0, 1]"),
    ("max_grad_norm", lambda v: 0 < v < math.inf, "C must be finite and > 0"),
    ("delta", lambda v: 0 < v < 1, "δ must be in (0, 1)"),
    ("epsilon", lambda v: v >= 0, "ε must be >= 0"),
    ("epsilon_rdp", lambda v: v >= 0, "ε must be >= 0"),
    ("target_epsilon", lambda v: v > 0, "target ε must be > 0"),
    ("seq", lambda v: v >= 1, "seq starts at 1"),
)

# per event: fields that must be set (not None, not "") for the row to make sense; a reserve also needs steps >= 1
_REQUIRED: dict[str, tuple[str, ...]] = {
    "reserve": ("noise_multiplier", "sample_rate", "delta", "accountant", "epsilon"),
}


def canonical_json(entry: LedgerEntry) -> str:
    """Canonical JSON of every field except ``hash`` (the bytes the hash covers, decoded)."""
    payload = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry) if f.name != "hash"}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def entry_hash(entry: LedgerEntry) -> str:
    """sha256 hex digest of :func:`canonical_json` (UTF-8; ASCII by construction)."""
    return hashlib.sha256(canonical_json(entry).encode("utf-8")).hexdigest()


def mechanism_history_of(entries: Sequence[LedgerEntry], *, site: str, dataset_id: str = "",
                         where: str = "ledger") -> list[Mechanism]:
    """``[(σ, q, steps), ...]`` of ``site``'s reserve rows among ``entries`` (see :meth:`Ledger.mechanism_history`).

    Raises
    ------
    ValueError
        If the site released without DP (``mode=none``): its ε is ∞, which no history can express.
    """
    history: list[Mechanism] = []
    for row in entries:
        if row.event != "reserve" or row.site != site or (dataset_id and row.dataset_id != dataset_id):
            continue
        if statement_mode(row.reason) == NO_DP:
            raise ValueError(f"{where}: site {site!r} released without DP in round {row.round} (seq {row.seq}): "
                             "its ε is infinite, no mechanism history expresses it")
        history.append((float(row.noise_multiplier), float(row.sample_rate), int(row.steps)))
    return history
