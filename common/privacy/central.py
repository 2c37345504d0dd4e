"""Site-level ("central") DP: the mechanism Flower's fixed-clipping wrapper runs, its accounting, and the checks.

Used when ``privacy-mode = "central"``. The strategy glue lives in ``server/central.py``; this module holds what
the server, the simulate driver (pre-flight) and the audit share: the plan, the ledger row, the stated assumption.

Mechanism (Flower 1.42 ``DifferentialPrivacyServerSideFixedClipping``; McMahan et al. 2018)
--------------------------------------------------------------------------------------
Every round EVERY site of the federation trains (``m = N``: refused otherwise, see below) with plain SGD and sends
its whole model. The server clips each update (site model - global model) to L2 norm ``C``, averages them with
EQUAL weights, and adds Gaussian noise of standard deviation ``σ·C/m`` to every coordinate. That is the release
``(Σ clipped updates + N(0, σ²C²)) / m``: a Gaussian mechanism with noise multiplier ``σ`` on a sum whose L2
sensitivity is ``C`` when one site's contribution is replaced by a zero update.

Relation: zero-out-one-site
---------------------------
The set of sites is public (every one of them must take part), so neighbouring federations are the same sites,
one of whose contribution is replaced by a zero update ("zero-out", sensitivity C). With a fixed sample of
``m < N`` sites, adding or removing a site can swap one sampled site's term for another's (sensitivity 2C): the
ε Flower's accountant reports (sensitivity C) would not hold, so such a federation is refused (issue 10, finding
4). Replacing one site's data by arbitrary other data is also sensitivity 2C: the same ε holds for that relation
only at σ/2.

Accounting
----------
Flower's ``RdpAccountant`` (Google ``dp_accounting`` RDP) with ``SamplingMethod.NO_AMPLIFICATION``, the only
sampling method Flower's fixed-clipping accounting accepts: every release is a full Gaussian mechanism. ε after
``k`` released rounds is the ``k``-fold composition at ``δ = central-delta``. A round Flower skips (a failed
reply, or a site that declines) releases nothing and spends nothing at the server.

Each site ALSO records its participation in its own ledger (``client/privacy.py``), so that its lifetime
composition spans federations: record-level, as ``(σ/2, q = 1, 1 step)`` per round (the server clips the site's
whole update to C; one record more or less can move it anywhere in that ball: sensitivity 2C), at the site's
own δ, against its own lifetime budget. A site takes part only if its own file allows it
(``privacy-mode = "central"``).

What the guarantee does NOT cover (stated in every ledger row via :data:`ASSUMPTION_KEYS`):

* the server itself: it sees every site's unclipped update (trusted-curator model);
* training and evaluation metrics the sites send (evaluation metrics are not privatised);
* the noise comes from numpy's global RNG, not a cryptographically secure one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.config import ConfigError, RunConfig, Scenario
from common.privacy.accountant import CALIBRATION_RTOL, MAX_NOISE_MULTIPLIER, MIN_NOISE_MULTIPLIER
from common.privacy.entry import SITE_RECORD_STATEMENT, LedgerEntry
from common.privacy.reference import epsilon_dp_accounting_rdp, epsilon_pld
from common.privacy.search import NoFeasibleValue, smallest_feasible

if TYPE_CHECKING:
    from flwr.serverapp import RdpAccountant

__all__ = [
    "ASSUMPTION_KEYS",
    "SITE_RECORD_STATEMENT",
    "FEDERATION_SITE",
    "CentralPlan",
    "central_accountant",
    "epsilon_after_releases",
    "federation_row",
    "parse_assumption",
    "plan_central",
    "sampled_sites",
]

FEDERATION_SITE = "*federation*"  # server-ledger `site` of the central rows: the federation as a whole
ACCOUNTANT = "rdp"  # LedgerEntry.accountant of central rows: Flower's RdpAccountant (dp_accounting RDP)
#: keys of the ``key=value; ...`` statement a central row carries in ``reason`` (see :func:`parse_assumption`)
ASSUMPTION_KEYS = ("mode", "unit", "relation", "sampling", "sampled", "available", "clipping", "weights",
                   "accountant", "steps", "not-covered")


@dataclass(frozen=True)
class CentralPlan:
    """The central-DP mechanism of one run, checked and (if asked) calibrated before training."""

    num_sites: int  # N: sites in the federation (the scenario's), Flower's population_size
    sampled_sites: int  # m: sites sampled per round; the noise is sized for exactly this many
    num_rounds: int  # planned releases (num-server-rounds)
    noise_multiplier: float  # σ: noise std on the SUM of clipped updates is σ·C
    clipping_norm: float  # C
    delta: float  # δ of the guarantee
    target_epsilon: float  # ε cap after num_rounds releases (Flower's max_epsilon)
    calibrated: bool  # σ was calibrated to target_epsilon (True) or given (False)
    planned_epsilon: tuple[float, ...]  # ε after 1, 2, ..., num_rounds releases (Flower's RdpAccountant)

    @property
    def sample_rate(self) -> float:
        """``m/N``, for the record: no amplification is claimed from it."""
        return self.sampled_sites / self.num_sites

    def assumption(self) -> str:
        """The sampling assumption and scope, as ``key=value; ...`` (keys :data:`ASSUMPTION_KEYS`)."""
        values = {
            "mode": "central", "unit": "site", "relation": "zero-out-one-site",
            "sampling": "no-amplification", "sampled": str(self.sampled_sites), "available": str(self.num_sites),
            "clipping": "server-side-fixed", "weights": "equal", "accountant": "flwr-RdpAccountant(dp-accounting-rdp)",
            "steps": "1 release per round", "not-covered": "replace-one-site (needs sigma/2), the server (trusted "
                                                            "curator: sees raw updates), metrics",
        }
        return "; ".join(f"{k}={values[k]}" for k in ASSUMPTION_KEYS)


def parse_assumption(reason: str) -> dict[str, str]:
    """The ``key=value`` pairs of a central row's ``reason`` (text after `` | `` is a free-text note)."""
    statement = reason.split(" | ", 1)[0]
    pairs = (part.split("=", 1) for part in statement.split("; ") if "=" in part)
    return {k.strip(): v.strip() for k, v in pairs}


def central_accountant(*, num_sites: int, delta: float, max_epsilon: float | None = None) -> RdpAccountant:
    """A fresh Flower ``RdpAccountant`` for site-level, no-amplification accounting.

    Parameters
    ----------
    num_sites : int
        N, Flower's ``population_size`` (metadata only without amplification).
    delta : float
        δ at which ε is reported.
    max_epsilon : float, optional
        Flower refuses (``PrivacyBudgetExhausted``) any release that would take ε above it.

    Returns
    -------
    flwr.serverapp.RdpAccountant
        Add/remove-one neighbouring, ``SamplingMethod.NO_AMPLIFICATION``.
    """
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(PrivacyConfig(
        target_delta=delta, population_size=num_sites, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION, max_epsilon=max_epsilon))


def epsilon_after_releases(*, noise_multiplier: float, releases: int, num_sites: int, sampled: int,
                           delta: float) -> float:
    """ε after ``releases`` rounds by Flower's accountant.

    Parameters
    ----------
    noise_multiplier : float
        σ of each release.
    releases : int
        Released rounds (>= 0).
    num_sites, sampled : int
        N and m (they do not change ε: no amplification).
    delta : float
        δ in (0, 1).

    Returns
    -------
    float
        ε (0.0 for no release).
    """
    from flwr.serverapp import GaussianPrivacyEvent

    if releases == 0:
        return 0.0
    accountant = central_accountant(num_sites=num_sites, delta=delta)
    accountant.compose(GaussianPrivacyEvent(noise_multiplier, sampled, num_sites), count=releases)
    return float(accountant.get_epsilon(delta))


def sampled_sites(connected: int, *, fraction_train: float, min_train_nodes: int) -> int:
    """How many sites Flower's ``FedAvg.configure_train`` samples when ``connected`` sites are connected."""
    return max(int(connected * fraction_train), min_train_nodes)


def _check_scenario(run: RunConfig, scenario: Scenario) -> None:
    held = {s.name: s.modalities for s in scenario.sites}
    if len(set(held.values())) != 1:
        listing = ", ".join(f"{n}: {'+'.join(m)}" for n, m in held.items())
        raise ConfigError(
            f"privacy-mode = \"central\": the sites of {scenario.path} hold different modalities ({listing}). "
            "Central DP averages the WHOLE model over sites with equal weights (Flower's accounted FedAvg); "
            "sites with different modalities need modality-aware aggregation (server/strategy.py), which Flower's "
            "accounting does not cover. Use privacy-mode = \"sample\", or a scenario whose sites hold the same "
            "modalities (e.g. hospitals-virtual20)")
    unwilling = [s.name for s in scenario.sites if s.privacy_overrides.get("privacy-mode", "sample") != "central"]
    if unwilling:
        raise ConfigError(
            f"privacy-mode = \"central\": sites {unwilling} of {scenario.path} do not allow it in their own privacy "
            "table ([sites.privacy] privacy-mode = \"central\"): in central mode the server sees each site's raw "
            "update (a trusted curator), which only a site's own file may accept; they would decline every round")


def _check_sampling(run: RunConfig, n: int) -> int:
    fed = run.federation
    m = sampled_sites(n, fraction_train=fed.fraction_train, min_train_nodes=fed.min_train_nodes)
    if m > n or fed.min_available_nodes > n:
        raise ConfigError(
            f"privacy-mode = \"central\": the federation has {n} sites but min-train-nodes = {fed.min_train_nodes} "
            f"and min-available-nodes = {fed.min_available_nodes}; Flower would wait for sites that never come")
    if m != n or fed.min_available_nodes != n:
        raise ConfigError(
            f"privacy-mode = \"central\": every site must take part in every round (set fraction-train = 1.0 and "
            f"min-available-nodes = {n}); fraction-train = {fed.fraction_train}, min-train-nodes = "
            f"{fed.min_train_nodes}, min-available-nodes = {fed.min_available_nodes} sample {m} of {n} sites or "
            "start rounds before all are connected. With a fixed sample of m < N sites, neighbouring federations "
            "can swap one sampled site's term for another's: sensitivity 2C, while Flower's accountant accounts C "
            "(its ε would be too low)")
    return m


def _calibrate(run: RunConfig, n: int, m: int) -> tuple[float, bool]:
    c, rounds = run.central, run.federation.num_rounds

    def cost(sigma: float) -> float:
        return epsilon_after_releases(noise_multiplier=sigma, releases=rounds, num_sites=n, sampled=m, delta=c.delta)

    if c.noise_multiplier > 0:
        eps = cost(c.noise_multiplier)
        if eps > c.target_epsilon:
            raise ConfigError(
                f"privacy-mode = \"central\": central-noise-multiplier = {c.noise_multiplier} over "
                f"num-server-rounds = {rounds} releases gives site-level ε = {eps:.4g} at δ = {c.delta:g}, above "
                f"central-target-epsilon = {c.target_epsilon:g}; raise σ, lower the rounds, or set "
                "central-noise-multiplier = 0 to calibrate σ to the target")
        return c.noise_multiplier, False
    try:
        found = smallest_feasible(cost, target=c.target_epsilon, start=1.0, low=MIN_NOISE_MULTIPLIER,
                                  high=MAX_NOISE_MULTIPLIER, rtol=CALIBRATION_RTOL)
    except NoFeasibleValue as err:
        raise ConfigError(f"privacy-mode = \"central\": no σ <= {MAX_NOISE_MULTIPLIER:g} meets "
                          f"central-target-epsilon = {c.target_epsilon:g} over {rounds} rounds") from err
    return found.value, True


def _cross_check(plan: CentralPlan) -> None:
    """Flower's ε must equal dp_accounting's RDP of the same event and not fall below its PLD (refuse if not)."""
    history = [(plan.noise_multiplier, 1.0, plan.num_rounds)]  # q = 1: no amplification
    flower = plan.planned_epsilon[-1]
    rdp = epsilon_dp_accounting_rdp(history, delta=plan.delta)
    pld = epsilon_pld(history, delta=plan.delta)
    if not math.isclose(flower, rdp, rel_tol=1e-9) or flower < pld * (1 - 0.01):
        raise RuntimeError(f"central DP accounting disagrees with dp_accounting for σ={plan.noise_multiplier}, "
                           f"{plan.num_rounds} releases, δ={plan.delta}: Flower ε={flower}, RDP {rdp}, PLD {pld}")


def plan_central(run: RunConfig, scenario: Scenario) -> CentralPlan:
    """Check that Flower's accounting can honour the run's settings, and fix σ; before any training.

    Raises
    ------
    ConfigError
        Sites with different modalities or whose own privacy table does not allow central mode, a sample that is
        not every site every round, δ >= 1/N, or a given σ whose planned ε exceeds ``central-target-epsilon``.
    """
    if run.privacy_mode != "central":
        raise ValueError(f"plan_central needs privacy-mode = \"central\", got {run.privacy_mode!r}")
    _check_scenario(run, scenario)
    n = len(scenario.sites)
    if run.central.delta >= 1.0 / n:
        raise ConfigError(f"privacy-mode = \"central\": central-delta = {run.central.delta:g} is not below 1/{n} "
                          f"(one over the number of sites): a guarantee that may fail with that probability "
                          "protects no site")
    m = _check_sampling(run, n)
    sigma, calibrated = _calibrate(run, n, m)
    planned = tuple(epsilon_after_releases(noise_multiplier=sigma, releases=k, num_sites=n, sampled=m,
                                           delta=run.central.delta) for k in range(1, run.federation.num_rounds + 1))
    plan = CentralPlan(num_sites=n, sampled_sites=m, num_rounds=run.federation.num_rounds, noise_multiplier=sigma,
                       clipping_norm=run.central.clipping_norm, delta=run.central.delta,
                       target_epsilon=run.central.target_epsilon, calibrated=calibrated, planned_epsilon=planned)
    _cross_check(plan)
    return plan


def federation_row(plan: CentralPlan, *, server_round: int, released: bool, epsilon: float, federation_id: str,
                   run_id: str, note: str = "") -> LedgerEntry:
    """The server-ledger row of one round: ``trained`` (one release, ``steps = 1``) or ``failed`` (none).

    ``epsilon`` is the cumulative site-level ε after this round; ``sample_rate`` is ``m/N`` for the record
    (accounted WITHOUT amplification, see ``reason``). Composing the ``trained`` rows' ``(σ, q=1, steps)`` gives ε.
    """
    return LedgerEntry(
        site=FEDERATION_SITE, round=server_round, event="trained" if released else "failed",
        federation_id=federation_id, run_id=run_id, noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate, steps=1 if released else 0, max_grad_norm=plan.clipping_norm,
        delta=plan.delta, accountant=ACCOUNTANT, epsilon=epsilon, epsilon_rdp=epsilon,
        target_epsilon=plan.target_epsilon, reason=plan.assumption() + (f" | {note}" if note else ""),
    )
