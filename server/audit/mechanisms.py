"""Mechanism families of the audit: how a ledger row becomes a ``dp_accounting`` event, and what its ε means.

* ``"sample-level"``: DP-SGD at a site, Poisson-subsampled Gaussian, ``steps`` times;
* ``"central"``: site-level DP by the server (Flower's fixed-clipping wrapper): one Gaussian release per round,
  no amplification by sampling (the row's ``m/N`` sample rate is for the record only); such rows state their
  assumption in ``reason`` (``mode=central; ...; sampling=no-amplification``,
  :func:`common.privacy.central.parse_assumption`);
* ``"central-record"``: a site's own ledger row of its central participation (``unit=record``): record-level,
  one Gaussian release of the row's σ (the server's σ/2: sensitivity 2C);
* ``"none"``: a release without DP (``mode=none``): ε = ∞.

A row names its family in a ``mode`` field or in the ``mode=`` statement its ``reason`` opens with; rows with
neither are sample-level. An unknown family, or a central row claiming any sampling other than
``no-amplification``, fails the audit rather than being guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dp_accounting

from common.privacy.reference import dp_event

__all__ = ["MECHANISMS", "MechanismFamily", "fixed_sample", "row_mode"]


@dataclass(frozen=True)
class MechanismFamily:
    """How the rows of one privacy mode become ``dp_accounting`` events, and what their ε means."""

    name: str
    relation: str  # neighbouring relation and sampling assumption, in words (printed in reports)
    event: Callable[[Any], dp_accounting.DpEvent]  # ledger row -> the event of that row's mechanism


def _dpsgd_event(row: Any) -> dp_accounting.DpEvent:
    return dp_event([(float(row.noise_multiplier), float(row.sample_rate), int(row.steps))])


def _central_event(row: Any) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(float(row.noise_multiplier)),
                                             int(row.steps))


def _no_dp_event(row: Any) -> dp_accounting.DpEvent:
    return dp_accounting.NonPrivateDpEvent()


MECHANISMS: dict[str, MechanismFamily] = {
    "sample-level": MechanismFamily(
        "sample-level",
        "sample-level DP of one site's dataset; neighbouring datasets differ by adding or removing one "
        "record; DP-SGD with Poisson sampling at rate q = 1/ceil(max-records / batch size), per-sample clipping "
        "to C and Gaussian noise σ·C per step",
        _dpsgd_event),
    "central": MechanismFamily(
        "central",
        "site-level DP of the federation's released models (server-side noise): every site of the federation "
        "takes part in every round, and neighbouring federations differ in one site's contribution, replaced by a "
        "zero update (zero-out-one-site; sensitivity C on the sum of updates clipped to C); one Gaussian release "
        "per round, noise σ·C, equal weights, no amplification by sampling; the server sees every raw update "
        "(trusted curator)",
        _central_event),
    "central-record": MechanismFamily(
        "central-record",
        "a site's own record of its central participation: record-level DP of its dataset (add/remove one "
        "record), one Gaussian release per round of the σ the server states halved (the server clips the whole "
        "update to C; one record can move it anywhere in that ball: sensitivity 2C); trusts the server to add "
        "that noise and sees no sampling amplification",
        _central_event),
    "none": MechanismFamily(
        "none",
        "released WITHOUT differential privacy (the site's own file allowed it, dp = false): ε = ∞ from then on",
        _no_dp_event),
}


def row_mode(row: Any) -> str:
    """The mechanism family of a row: its ``mode`` field, else the ``mode=`` of its stated assumption,
    else sample-level. A central row that claims amplification by sampling is returned as
    ``"central/<sampling>"``, which no family accounts (the audit fails rather than guess)."""
    mode = str(getattr(row, "mode", "") or "")
    reason = str(getattr(row, "reason", "") or "")
    if not mode and reason.startswith("mode="):
        from common.privacy.central import parse_assumption

        stated = parse_assumption(reason)
        mode = stated.get("mode", "")
        if mode == "central" and stated.get("sampling", "no-amplification") != "no-amplification":
            mode = f"central/{stated.get('sampling')}"
        elif mode == "central" and stated.get("unit") == "record":
            mode = "central-record"
    return mode or "sample-level"


def fixed_sample(row: Any) -> tuple[int, int] | None:
    """(m, N) of a central row whose stated sample m is smaller than its federation N; None otherwise."""
    from common.privacy.central import parse_assumption

    stated = parse_assumption(str(getattr(row, "reason", "") or ""))
    try:
        m, n = int(stated["sampled"]), int(stated["available"])
    except (KeyError, ValueError):
        return None
    return (m, n) if m < n else None


