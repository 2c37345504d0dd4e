"""A site's ledger against the server's: does what the site recorded match what the server says it reported?

Rows are matched by (federation id, round) — stable across Flower runs and restarts of one
federation — and only over the federations and runs the server's ledger covers (a site's rows
from other federations, or from runs of the same federation recorded in another run folder,
are counted, not compared).

For each server row about the site:

* ``trained``: the site must have reserved that round with the same mechanism (σ, q, steps,
  C, δ, accountant, dataset) and the same reported ε, ε_rdp and target; a missing confirm is a
  WARN (the steps may not all have run; the reservation counts as spent);
* ``declined``: the site must have declined that round, stating the same spent ε; if it
  reserved and confirmed instead, it spent ε while telling the server it had not (FAIL); a
  reservation never confirmed (a crash, after which the site refuses to spend the round twice)
  is a WARN;
* ``failed`` or ``no-reply`` (sampled, never answered): a site reservation for that round is a WARN (spent, but
  the server has no result).

A site reservation with no server row at all is a FAIL: the server's ledger has a row for every
reply, failures included, so the site spent ε that the server never heard about. A site
decline the server never recorded is a WARN.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from common.privacy.entry import LedgerEntry
from server.audit.model import FAIL, INFO, WARN, Finding

__all__ = ["MECHANISM_FIELDS", "compare_site_server"]

#: fields a site's reserve row and the server's trained row must agree on
MECHANISM_FIELDS: tuple[str, ...] = ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta",
                                     "accountant", "dataset_id", "epsilon", "epsilon_rdp", "target_epsilon")
_DECLINE_FIELDS: tuple[str, ...] = ("delta", "accountant", "dataset_id", "epsilon")


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _fmt(v: object) -> str:
    return f"{v:.6g}" if isinstance(v, float) else repr(v)


def _differences(site_row: LedgerEntry, server_row: LedgerEntry, fields: Sequence[str]) -> list[str]:
    return [f"{f}: site {_fmt(getattr(site_row, f))} vs server {_fmt(getattr(server_row, f))}"
            for f in fields if not _same(getattr(site_row, f), getattr(server_row, f))]


def compare_site_server(site: str, site_rows: Sequence[LedgerEntry], server_rows: Sequence[LedgerEntry], *,
                        site_label: str = "", server_label: str = "") -> list[Finding]:
    """Every disagreement between ``site``'s own ledger rows and the server's rows about it.

    Parameters
    ----------
    site : str
        The site.
    site_rows : sequence of LedgerEntry
        The site ledger's rows (any site's rows other than ``site`` are ignored).
    server_rows : sequence of LedgerEntry
        The server ledger's rows (all sites; only ``site``'s are used).
    site_label, server_label : str
        The two files, for the findings.
    """
    out: list[Finding] = []
    mine = [r for r in site_rows if r.site == site]
    theirs = [r for r in server_rows if r.site == site]
    federations = {r.federation_id for r in theirs}
    runs = {r.run_id for r in server_rows}  # Flower runs this server ledger covers
    groups: dict[tuple[str, int], dict[str, list[LedgerEntry]]] = defaultdict(lambda: defaultdict(list))
    for r in mine:
        if r.federation_id in federations:
            groups[(r.federation_id, r.round)][r.event].append(r)
    other = sum(r.federation_id not in federations for r in mine)

    def add(level: str, rnd: int, message: str, seq: int | None = None) -> None:
        out.append(Finding(level, "compare", f"{site} round {rnd}: {message}", site=site, round=rnd, seq=seq,
                           ledger=f"{site_label} vs {server_label}"))

    seen: set[tuple[str, int]] = set()
    for s in theirs:
        key = (s.federation_id, s.round)
        seen.add(key)
        g = groups.get(key, {})
        reserves, confirms, declines = g.get("reserve", []), g.get("confirm", []), g.get("decline", [])
        if s.event == "trained":
            if not reserves:
                add(FAIL, s.round, f"the server recorded it trained (σ={_fmt(s.noise_multiplier)}, steps={s.steps}, "
                                   f"ε={_fmt(s.epsilon)}), but the site's ledger has no reservation for it "
                                   "(a row removed from the site's ledger, or a report the site never made)", s.seq)
                continue
            diffs = _differences(reserves[-1], s, MECHANISM_FIELDS)
            if diffs:
                add(FAIL, s.round, "the site's reservation and what the server recorded disagree: "
                                   + "; ".join(diffs), reserves[-1].seq)
            if declines:
                add(FAIL, s.round, "the server recorded it trained, but the site's ledger also declines it",
                    declines[-1].seq)
            if not confirms:
                add(WARN, s.round, "the server recorded it trained, but the site never confirmed its reservation",
                    reserves[-1].seq)
            elif _differences(confirms[-1], s, MECHANISM_FIELDS):
                add(FAIL, s.round, "the site's confirm row and the server disagree: "
                                   + "; ".join(_differences(confirms[-1], s, MECHANISM_FIELDS)), confirms[-1].seq)
        elif s.event == "declined":
            if reserves and confirms:
                add(FAIL, s.round, "the server recorded a decline, but the site reserved and trained this round: "
                                   f"σ={_fmt(reserves[-1].noise_multiplier)}, ε={_fmt(reserves[-1].epsilon)}",
                    reserves[-1].seq)
            elif reserves:  # a crash after the reservation; the site then refused to spend the round twice
                add(WARN, s.round, "the server recorded a decline; the site had reserved this round but never "
                                   f"confirmed it (reply lost?): its ε={_fmt(reserves[-1].epsilon)} counts as spent",
                    reserves[-1].seq)
            elif not declines:
                add(FAIL, s.round, "the server recorded a decline that the site's ledger does not have", s.seq)
            else:
                diffs = _differences(declines[-1], s, _DECLINE_FIELDS)
                if diffs:
                    add(FAIL, s.round, "the site's decline and the server's disagree: " + "; ".join(diffs),
                        declines[-1].seq)
        elif reserves:  # failed, no-reply
            what = "no reply" if s.event == "no-reply" else "a failure"
            add(WARN, s.round, f"the server recorded {what}, but the site reserved ε={_fmt(reserves[-1].epsilon)} "
                               "for it: spent without a result (counted from the site's ledger)", reserves[-1].seq)
    for key, g in sorted(groups.items()):
        if key in seen:
            continue
        if not {r.run_id for rows in g.values() for r in rows} & runs:
            other += sum(len(rows) for rows in g.values())  # a run of this federation this ledger does not hold
            continue
        if g.get("reserve"):
            r = g["reserve"][-1]
            add(FAIL, r.round, f"the site reserved ε={_fmt(r.epsilon)} (σ={_fmt(r.noise_multiplier)}, steps={r.steps}) "
                               f"in federation {r.federation_id!r}, but the server has no row for that round at all",
                r.seq)
        elif g.get("decline"):
            r = g["decline"][-1]
            add(WARN, r.round, "the site declined a round the server has no row for", r.seq)
    if other:
        out.append(Finding(INFO, "compare", f"{site}: {other} site row(s) belong to federations or runs this server's "
                                            "ledger does not cover; not compared", site=site,
                           ledger=f"{site_label} vs {server_label}"))
    if not theirs:
        out.append(Finding(WARN, "compare", f"{site}: the server's ledger has no row about this site", site=site,
                           ledger=f"{site_label} vs {server_label}"))
    return out
