"""Privacy accounting shared by sites, the server and the audit.

* :mod:`~common.privacy.accountant`: Opacus accountant factory (PRV, RDP; GDP refused), ε of
  a mechanism history, noise calibration, default δ, and a round's steps from the site's public
  ``max-records`` bound (:func:`plan_steps`).
* :mod:`~common.privacy.reference`: independent ε with Google's ``dp_accounting`` (PLD, RDP).
* :mod:`~common.privacy.entry` / :mod:`~common.privacy.ledger` / :mod:`~common.privacy.chain`: the
  append-only, hash-chained SQLite ledger of reservations and reports (a budget check and its
  reservation are one transaction: ``Ledger.append_decided``).
* :mod:`~common.privacy.search`: the bracketing search behind the calibration (no privacy math).
* :mod:`~common.privacy.central`: ``privacy-mode = "central"`` (site-level DP by Flower's wrapper and
  accountant): the plan and its checks, the ``*federation*`` ledger row and its stated assumption. Imported
  on demand (not re-exported here); its ε is site-level, not sample-level.

Every ε is sample-level (ε, δ)-DP of one site's dataset under add/remove-one neighbouring, for
Poisson-subsampled DP-SGD, at the δ passed by the caller (see ``accountant``'s docstring).
"""

from common.privacy.accountant import (
    ACCOUNTANTS,
    BudgetExhausted,
    Mechanism,
    StepPlan,
    calibrate_noise_multiplier,
    default_delta,
    epsilon_from_history,
    make_accountant,
    normalize_history,
    plan_steps,
)
from common.privacy.entry import EVENTS, GENESIS_HASH, SERVER_EVENTS, SITE_EVENTS, LedgerEntry
from common.privacy.ledger import Ledger, LedgerIntegrityError


def __getattr__(name: str):  # noqa: ANN202 - PEP 562
    """The audit's independent ε (dp-accounting, which imports scipy: ~1 s) loads on first use, so that a
    site's message-process, which never needs it, does not pay for it."""
    if name in ("epsilon_dp_accounting_rdp", "epsilon_pld"):
        from common.privacy import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACCOUNTANTS",
    "EVENTS",
    "GENESIS_HASH",
    "SERVER_EVENTS",
    "SITE_EVENTS",
    "BudgetExhausted",
    "Ledger",
    "LedgerEntry",
    "LedgerIntegrityError",
    "Mechanism",
    "StepPlan",
    "calibrate_noise_multiplier",
    "default_delta",
    "epsilon_dp_accounting_rdp",
    "epsilon_from_history",
    "epsilon_pld",
    "make_accountant",
    "normalize_history",
    "plan_steps",
]
