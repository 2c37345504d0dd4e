"""Integrity of the ledger files: hash chains, and the signed heads that anchor them.

* :func:`chain_findings`: the ``entries`` chain and the ``heads`` chain of one file
  (:meth:`~common.privacy.ledger.Ledger.verify`), each problem named by seq, site and round.
* :func:`site_anchor_findings`: a site's ledger against the heads it signed, preferring those
  the server recorded (the site cannot take them back) over those the site kept itself. A
  valid head whose row is gone means truncation; whose row hashes differently means the rows
  up to it were rewritten (even with every hash recomputed). Rows after the last valid head
  are unanchored: nothing vouches for them.
* :func:`server_anchor_findings`: the server's ledger file against ``ledger-head.json``, the
  heads of both of its tables that the server signed with its own key.

A signature binds a head to a key; which key is the site's is settled by pinning
(``--site-key``, ``--server-key``) or, without a pin, by the key of the heads the server
recorded. Every key's fingerprint is reported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.privacy.entry import LedgerEntry
from common.privacy.ledger import Ledger, LedgerIntegrityError
from common.privacy.signing import (
    HeadRecord,
    SignedHead,
    fingerprint,
    load_public_key,
    public_key_line,
    read_signed_heads,
)
from server.audit.model import FAIL, INFO, WARN, Finding

__all__ = ["AnchorState", "chain_findings", "same_key", "server_anchor_findings", "site_anchor_findings"]

_WHERE = re.compile(r"seq=(\d+) \(site='((?:[^'\\]|\\.)*)', round=(\d+)\)")


def same_key(a: str, b: str) -> bool:
    """Whether two public-key texts (OpenSSH lines or PEM, comments ignored) are the same key."""
    try:
        return public_key_line(load_public_key(a)) == public_key_line(load_public_key(b))
    except ValueError:
        return False


def chain_findings(ledger: Ledger, label: str) -> list[Finding]:
    """FAILs for every problem of the file's ``entries`` and ``heads`` hash chains."""
    out = []
    for table, problems in (("entries", ledger.verify()), ("heads", ledger.verify_heads())):
        for p in problems:
            m = _WHERE.search(p)
            site, rnd, seq = (m.group(2), int(m.group(3)), int(m.group(1))) if m else ("", None, None)
            what = "ledger row" if table == "entries" else "signed-heads row"
            where = f"{site} round {rnd}: " if m else ""
            out.append(Finding(FAIL, "chain", f"{where}{what} {p}", site=site, round=rnd, seq=seq, ledger=label))
    return out


def _rounds(rows: Sequence[LedgerEntry]) -> str:
    rounds = sorted({r.round for r in rows})
    return ("round " if len(rounds) == 1 else "rounds ") + ", ".join(map(str, rounds)) if rounds else "no round"


def _span(rows: Sequence[LedgerEntry]) -> str:
    return f"seq {rows[0].seq}" if len(rows) == 1 else f"seq {rows[0].seq}..{rows[-1].seq}"


@dataclass
class AnchorState:
    """How far a site's ledger is vouched for, and by whom."""

    key: str = ""  # the site's public key (OpenSSH line) that the heads are checked against
    seq: int = 0  # the last row vouched for by a valid, matching signed head
    round: int | None = None  # the round after which that head was signed
    source: str = "none"  # server | site | none
    unanchored: int = 0  # rows after ``seq``


def site_anchor_findings(site: str, rows: Sequence[LedgerEntry], *, server_heads: Sequence[HeadRecord],
                         own_heads: Sequence[HeadRecord], pinned_key: str = "", allow_unsigned: bool = False,
                         label: str = "", server_runs: set[str] | None = None) -> tuple[list[Finding], AnchorState]:
    """Check a site's ledger rows against its signed heads.

    Parameters
    ----------
    site : str
        The site.
    rows : sequence of LedgerEntry
        All rows of the site's ledger, in seq order.
    server_heads, own_heads : sequence of HeadRecord
        The heads of ``site`` the server recorded, and those the site kept in its own file.
    pinned_key : str
        The site's public key if the officer pinned it ("" = take the server-recorded one).
    allow_unsigned : bool
        A ledger with no signed head at all is a WARN instead of a FAIL.
    label : str
        The ledger's path, for findings.
    server_runs : set of str, optional
        Run ids the server's ledger covers (site rows signed later are then only INFO).
    """
    out: list[Finding] = []
    state = AnchorState()

    def add(level: str, message: str, rnd: int | None = None, seq: int | None = None) -> None:
        out.append(Finding(level, "anchor", f"{site}: {message}", site=site, round=rnd, seq=seq, ledger=label))

    heads = [("server", h) for h in server_heads] + [("site", h) for h in own_heads]
    if not heads:
        add(WARN if allow_unsigned else FAIL,
            "no signed head: truncation, and rewrites that recompute every hash, cannot be detected "
            "(a ledger written before signed heads?)" + ("" if allow_unsigned else "; --allow-unsigned accepts it"))
        state.unanchored = len(rows)
        return out, state
    state.key = pinned_key or heads[0][1].public_key
    if pinned_key and not server_heads:
        add(INFO, "no server-recorded head: anchored by the site's own (pinned) key only")
    elif not server_heads:
        add(WARN, "the server recorded no signed head: the ledger is anchored by the site's own key only, which "
                  "the site itself could re-sign (pin it with --site-key, or audit with the run folder)")
    by_seq = {r.seq: r for r in rows}
    last_seq = rows[-1].seq if rows else 0
    good: dict[str, int] = {"server": 0, "site": 0}
    signed_max = 0  # the newest row any valid head of the site's key covers (matching or not)
    good_round: dict[int, int] = {}
    bad_from: list[tuple[HeadRecord, str, str]] = []  # (head, source, what)
    for source, h in heads:
        by = "recorded by the server" if source == "server" else "kept by the site"
        if not same_key(h.public_key, state.key):
            add(FAIL, f"the head signed after round {h.round} ({by}) is signed by key {fingerprint(h.public_key)}, "
                      f"not the site's key {fingerprint(state.key)}", h.round, h.head_seq)
            continue
        if h.kind != "site-ledger" or h.site != site or not h.valid():
            add(FAIL, f"the signature of the head after round {h.round} (seq {h.head_seq}, {by}) does not verify: "
                      "forged or altered", h.round, h.head_seq)
            continue
        signed_max = max(signed_max, h.head_seq)
        if h.head_seq == 0:
            continue
        if h.head_seq > last_seq:
            bad_from.append((h, source, f"TRUNCATED: the site signed its ledger at seq {h.head_seq} after round "
                                        f"{h.round} ({by}), but the ledger now ends at seq {last_seq}: rows seq "
                                        f"{last_seq + 1}..{h.head_seq} were removed"))
        elif h.head_seq not in by_seq or by_seq[h.head_seq].hash != h.head_hash:
            bad_from.append((h, source, f"the row at seq {h.head_seq} no longer matches the head the site signed "
                                        f"after round {h.round} ({by})"))
        else:
            good[source] = max(good[source], h.head_seq)
            good_round[h.head_seq] = h.round
    for h, source, what in _first_per_kind(bad_from):
        lower = max((s for s in (*good.values(), 0) if s < h.head_seq), default=0)
        changed = [r for r in rows if lower < (r.seq or 0) <= h.head_seq]
        if what.startswith("TRUNCATED"):
            add(FAIL, what, h.round, h.head_seq)
        else:
            since = f"after the last matching signed head (seq {lower})" if lower else "from the first row on"
            add(FAIL, f"REWRITTEN: {what}: rows {_span(changed) if changed else ''} ({_rounds(changed)}) "
                      f"{since} were edited, inserted, deleted or reordered, with hashes recomputed",
                changed[0].round if changed else h.round, h.head_seq)
    later = len([1 for _, _, w in bad_from]) - len(_first_per_kind(bad_from))
    if later > 0:
        add(INFO, f"{later} later signed head(s) fail for the same reason")
    anchored = max(good.values())
    state.seq, state.round = anchored, good_round.get(anchored)
    state.source = "server" if good["server"] and good["server"] >= good["site"] else ("site" if anchored else "none")
    if good["server"] and good["site"] > good["server"]:
        tail = [r for r in rows if good["server"] < (r.seq or 0) <= good["site"]]
        level = INFO if server_runs is not None and not {r.run_id for r in tail} & server_runs else WARN
        add(level, f"rows {_span(tail)} ({_rounds(tail)}) are signed by the site but were not recorded by this "
                   "server (a later run, or a reply that never arrived)", tail[0].round, tail[0].seq)
    unsigned = [r for r in rows if (r.seq or 0) > signed_max]
    state.unanchored = len([r for r in rows if (r.seq or 0) > anchored])
    if unsigned:
        last_head = max((h for _, h in heads if h.head_seq == signed_max), key=lambda h: h.round, default=None)
        after = (f"the last signed head (seq {signed_max}, after round {last_head.round})"
                 if signed_max and last_head is not None else "any signed head")
        if all(r.event == "reserve" for r in unsigned):
            add(WARN, f"{_span(unsigned)} ({_rounds(unsigned)}): reserved after {after} and never confirmed or "
                      "signed (a crash mid-round?); counted as spent", unsigned[0].round, unsigned[0].seq)
        else:
            add(FAIL, f"UNANCHORED rows {_span(unsigned)} ({_rounds(unsigned)}: "
                      f"{', '.join(sorted({r.event for r in unsigned}))}) come after {after}: nothing vouches for "
                      "them (appended later: a forged append?)", unsigned[0].round, unsigned[0].seq)
    return out, state


def _first_per_kind(bad: list[tuple[HeadRecord, str, str]]) -> list[tuple[HeadRecord, str, str]]:
    """The lowest failing head of each kind (truncated / rewritten): later heads fail as a consequence."""
    firsts: dict[bool, tuple[HeadRecord, str, str]] = {}
    for item in sorted(bad, key=lambda b: b[0].head_seq):
        firsts.setdefault(item[2].startswith("TRUNCATED"), item)
    return list(firsts.values())


def server_anchor_findings(ledger: Ledger, head_file: Path, *, pinned_key: str = "", allow_unsigned: bool = False,
                           label: str = "") -> tuple[list[Finding], dict[str, object]]:
    """Check the server's ledger file against the heads the server signed (``ledger-head.json``)."""
    out: list[Finding] = []
    info: dict[str, object] = {"signed_heads_file": str(head_file), "key_fingerprint": "", "anchored_seq": 0}

    def add(level: str, message: str, site: str = "", rnd: int | None = None, seq: int | None = None) -> None:
        out.append(Finding(level, "anchor", f"server ledger: {message}", site=site, round=rnd, seq=seq, ledger=label))

    rows = ledger.entries() if not _invalid_rows(ledger) else []
    heads = ledger.heads() if not ledger.verify_heads() else []
    if not head_file.exists():
        recorded = bool(heads)
        level = FAIL if recorded or not allow_unsigned else WARN
        add(level, f"no signed head ({head_file.name} missing): truncating or rewriting the server's ledger cannot "
                   "be detected" + (" — and its heads table shows this run did sign, so the file was removed"
                                    if recorded else ("" if allow_unsigned else "; --allow-unsigned accepts it")))
        return out, info
    try:
        signed = read_signed_heads(head_file)
    except ValueError as exc:
        add(FAIL, str(exc))
        return out, info
    key = pinned_key or (signed[0].public_key if signed else "")
    info["key_fingerprint"] = fingerprint(key) if key else ""
    for h in signed:
        if not same_key(h.public_key, key):
            add(FAIL, f"{h.kind} head signed by key {fingerprint(h.public_key)}, not the server's {fingerprint(key)}")
            continue
        if not h.valid():
            add(FAIL, f"the signature of its {h.kind} head (seq {h.seq}) does not verify: forged or altered")
            continue
        table = rows if h.kind == "server-ledger" else heads
        what = "ledger row" if h.kind == "server-ledger" else "signed-heads row"
        _check_table_head(h, table, what, add)
        if h.kind == "server-ledger":
            info["anchored_seq"] = h.seq
    return out, info


def _invalid_rows(ledger: Ledger) -> bool:
    try:
        ledger.entries()
    except LedgerIntegrityError:
        return True
    return False


def _check_table_head(h: SignedHead, table: Sequence[LedgerEntry] | Sequence[HeadRecord], what: str,
                      add: Callable[..., None]) -> None:
    last = table[-1].seq if table else 0
    by_seq = {r.seq: r for r in table}
    if h.seq > last:
        add(FAIL, f"TRUNCATED: the server signed its {what}s at seq {h.seq}, the file now ends at seq {last}",
            seq=h.seq)
    elif h.seq and (h.seq not in by_seq or by_seq[h.seq].hash != h.head_hash):
        row = by_seq.get(h.seq)
        add(FAIL, f"REWRITTEN: the {what} at seq {h.seq}, the newest the server signed"
                  + (f" ({row.site}, round {row.round})" if row is not None else "")
                  + ", no longer matches its signature: a row at or before it was edited, inserted, deleted or "
                    "reordered, with hashes recomputed (the compare findings name which)",
            site=getattr(row, "site", ""),
            rnd=getattr(row, "round", None), seq=h.seq)
    after = [r for r in table if (r.seq or 0) > h.seq]
    for r in after:
        add(FAIL, f"UNANCHORED {what} seq {r.seq} ({r.site}, round {r.round}) comes after the head the server "
                  "signed: appended later (a forged append?)", site=r.site, rnd=r.round, seq=r.seq)
