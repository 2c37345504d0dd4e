"""What a run may ask of a site's privacy: the site's own file is the limit, the run's settings are requests.

The site is sovereign. Its privacy is what its own file says (a deployed ``site.toml`` ``[privacy]``; in a
simulation the scenario's ``[sites.privacy]`` table plays that file), over the package defaults. A run's privacy
settings (``[tool.flwr.app.config]`` + ``--run-config``, written by the server) are *requests*: each may ask for
as much privacy as the site's file or more, never less. A request for less is refused: the site declines the
round, naming the setting, and releases nothing (:class:`PrivacyTerms.refusals`). Within the limits the request
is what the site applies (a run may ask for a smaller ε than a site allows, never a larger one).

Per setting (:data:`RULES`), "more private" means:

* ``dp``: true. ``dp = false`` in a site's file means the site ALLOWS releases without DP (each is written to its
  ledger as ε = ∞); the run must ask for it too (``dp = false``);
* ``privacy-mode``: ``sample`` (per-site DP-SGD). ``privacy-mode = "central"`` in a site's file means the site
  allows central mode (the server sees its raw update: a trusted curator); the run must ask for it too;
* ``target-epsilon``, ``epsilon-budget``, ``delta``: smaller (``delta = 0`` asks for the site's default,
  strictly below 1/max-records);
* ``secure-mode``: true; ``noise-seed``: ``secret`` (``run-seed`` lets whoever knows the run config recompute
  the noise);
* ``accountant`` and ``max-grad-norm`` are not privacy levels (both accountants give upper bounds on ε; C does
  not enter ε): the site's file decides them when it sets them, the run otherwise.

``max-records`` (the public bound on the site's training rows) exists only in a site's file.

In central mode the sample-level requests are not used (README "Central DP"); the site's own file decides the
budget and δ under which it records its participation (``client/privacy.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from common.config.settings import NOISE_SEEDS, PRIVACY_MODES, ConfigError, PrivacySettings, RunConfig

__all__ = ["MODES", "RULES", "PrivacyTerms", "Refusal", "privacy_terms"]

#: the mechanism a site's release runs under: per-site DP-SGD, the server's site-level DP, or none (ε = ∞)
MODES = ("sample", "central", "none")


@dataclass(frozen=True)
class Refusal:
    """One setting a run asked for with less privacy than the site's own file allows."""

    key: str  # the setting, as spelled in the files
    requested: Any  # what the run asked for
    allowed: Any  # the least private value the site's file allows

    def text(self) -> str:
        """The sentence a decline carries (settings only, never data)."""
        return f"{self.key}: the run asks for {_show(self.requested)}, this site's file allows {_show(self.allowed)}"


def _show(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else (
        f'"{value}"' if isinstance(value, str) else f"{value:g}")


@dataclass(frozen=True)
class _Rule:
    field: str  # PrivacySettings attribute
    ok: Callable[[Any, Any], bool]  # (requested, allowed) -> the request is at least as private


def _rank(order: tuple[str, ...]) -> Callable[[Any, Any], bool]:
    return lambda requested, allowed: order.index(requested) <= order.index(allowed)


#: setting -> how to tell a request at least as private as the site's file ("delta" is handled with max-records)
RULES: dict[str, _Rule] = {
    "dp": _Rule("enabled", lambda requested, allowed: bool(requested) or not allowed),
    "target-epsilon": _Rule("target_epsilon", lambda requested, allowed: requested <= allowed),
    "epsilon-budget": _Rule("epsilon_budget", lambda requested, allowed: requested <= allowed),
    "secure-mode": _Rule("secure_mode", lambda requested, allowed: bool(requested) or not allowed),
    "noise-seed": _Rule("noise_seed", _rank(NOISE_SEEDS)),  # ("secret", "run-seed"): most private first
    "privacy-mode": _Rule("privacy_mode", _rank(PRIVACY_MODES)),  # ("sample", "central")
}
#: settings the site's file decides when it sets them (not privacy levels), else the run's request
SITE_DECIDES = {"accountant": "accountant", "max-grad-norm": "max_grad_norm"}


@dataclass(frozen=True)
class PrivacyTerms:
    """The privacy a site applies to one round, or why it refuses the run's request."""

    mode: str  # MODES: sample | central | none
    settings: PrivacySettings  # what the site applies (max_records from its file)
    refusals: tuple[Refusal, ...] = ()  # non-empty: decline the round, release nothing

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def reason(self) -> str:
        """The refusals in words, for the decline (settings only)."""
        return "; ".join(r.text() for r in self.refusals)


def _delta_refusal(requested: float, own: PrivacySettings, default_delta: Callable[[int], float]) -> Refusal | None:
    if requested == 0:
        return None  # "the site's default": always allowed
    allowed = own.delta or (default_delta(own.max_records) if own.max_records else math.nan)
    if math.isnan(allowed) or requested > allowed:
        return Refusal("delta", requested, allowed if not math.isnan(allowed) else "below 1/max-records")
    return None


def privacy_terms(own: PrivacySettings, run: RunConfig, *, file_keys: Mapping[str, Any] = (),
                  default_delta: Callable[[int], float] | None = None) -> PrivacyTerms:
    """The privacy the site applies this round: the run's requests within the limits of the site's own file.

    Parameters
    ----------
    own : PrivacySettings
        The site's own privacy (``SiteConfig.privacy``: its file over the package defaults).
    run : RunConfig
        The run; ``run.privacy`` and ``run.privacy_mode`` are the server's requests.
    file_keys : mapping
        The keys the site's file sets itself (``SiteSpec.privacy_overrides``): for ``accountant`` and
        ``max-grad-norm`` the file wins when it sets them.
    default_delta : callable, optional
        ``n -> δ`` (``common.privacy.accountant.default_delta``), to compare a requested δ with the site's default.

    Returns
    -------
    PrivacyTerms
        ``refusals`` lists every setting asked with less privacy than the file allows (then nothing may be
        released); otherwise ``settings`` is what the site applies.
    """
    if default_delta is None:
        from common.privacy.accountant import default_delta
    req = replace(run.privacy, privacy_mode=run.privacy_mode)
    refusals = [Refusal("privacy-mode", req.privacy_mode, own.privacy_mode)] if not RULES["privacy-mode"].ok(
        req.privacy_mode, own.privacy_mode) else []
    if req.privacy_mode == "central" and not refusals:
        # the sample-level requests are not used in central mode; the site's own file decides its records
        return PrivacyTerms("central", replace(own, privacy_mode="central"))
    for key, rule in RULES.items():
        if key == "privacy-mode":
            continue
        requested, allowed = getattr(req, rule.field), getattr(own, rule.field)
        if not rule.ok(requested, allowed):
            refusals.append(Refusal(key, requested, allowed))
    delta = _delta_refusal(req.delta, own, default_delta)
    if delta is not None:
        refusals.append(delta)
    chosen = {field: getattr(own if key in file_keys else req, field) for key, field in SITE_DECIDES.items()}
    settings = replace(req, **chosen, delta=req.delta or own.delta, max_records=own.max_records,
                       privacy_mode="sample")
    if settings.target_epsilon > settings.epsilon_budget:  # both requested within limits, but inconsistent
        raise ConfigError(f"target-epsilon {settings.target_epsilon:g} exceeds epsilon-budget "
                          f"{settings.epsilon_budget:g}")
    return PrivacyTerms("sample" if settings.enabled else "none", settings, tuple(refusals))
