"""A per-process memo of Opacus' RDP of the sampled Gaussian at one order: the same numbers, computed once.

Why
---
Both accountants we use spend almost all their time in one pure Opacus function,
``opacus.accountants.analysis.rdp._compute_rdp(q, sigma, alpha)``: the RDP accountant calls it for
every order (~150, most of them fractional, ~7 ms each), and so does the PRV accountant, twice, to
size its discretisation domain (Gopi et al. Remark 5.6). A site's round asks for ε of a history
whose mechanisms it has seen before (same ``(σ, q)``, more steps), and every site of a federation
shares them, so the same ``(q, σ, α)`` is recomputed thousands of times: profiled on the hospitals
federation (``benchmarks/robust_aggregation.py``, 2 rounds in one process), 31 of 76 s went there.

What
----
:func:`install` wraps that one function in ``functools.lru_cache``. It is pure (floats in, a float
out; no state, no randomness), so the memo changes no number: ε is bit-identical with and without
it (``tests/common/privacy/test_rdp_memo.py`` compares both, for RDP, PRV and the calibration).
Opacus' ``compute_rdp`` still multiplies by the steps and its ``get_privacy_spent`` still converts
to (ε, δ): we add no accounting math, only remember Opacus' own answers.

The wrapped function is looked up in Opacus' module at call time, so :func:`install` patches the
module attribute. If a future Opacus renames or changes it, :func:`install` leaves Opacus as it is
(slower, never different) and :func:`installed` says so.
"""

from __future__ import annotations

import functools
import inspect

__all__ = ["MEMO_SIZE", "install", "installed", "memo_info"]

MEMO_SIZE = 1 << 16  # (q, σ, α) triples kept: ~150 orders x ~400 (q, σ) pairs, a few MB
_EXPECTED_PARAMETERS = ("q", "sigma", "alpha")  # the signature this memo was written against (Opacus 1.5-1.6)


def _module():
    from opacus.accountants.analysis import rdp

    return rdp


def install() -> bool:
    """Memoise ``_compute_rdp`` in this process (idempotent). Returns whether the memo is active."""
    rdp = _module()
    fn = getattr(rdp, "_compute_rdp", None)
    if fn is None:
        return False
    if hasattr(fn, "cache_info"):
        return True
    if tuple(inspect.signature(fn).parameters) != _EXPECTED_PARAMETERS:
        return False
    rdp._compute_rdp = functools.lru_cache(maxsize=MEMO_SIZE)(fn)
    return True


def installed() -> bool:
    """Whether Opacus' ``_compute_rdp`` is memoised in this process."""
    return hasattr(getattr(_module(), "_compute_rdp", None), "cache_info")


def memo_info():
    """``functools`` cache statistics (hits, misses, maxsize, currsize), or None when not installed."""
    fn = getattr(_module(), "_compute_rdp", None)
    return fn.cache_info() if hasattr(fn, "cache_info") else None
