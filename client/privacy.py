"""A site's privacy bookkeeping: calibrate once, check the budget and reserve in one transaction, confirm.

The site's SQLite ledger (``<state-dir>/ledger.sqlite``) is the source of truth for what its
dataset has spent over its lifetime, across rounds and across runs. Flower's ``context.state``
lives for one run only, so nothing here depends on it: the accountant is rebuilt from the
ledger's mechanism history each round.

Everything derives from the site's PUBLIC ``max-records`` bound, never from the rows it holds: the sample
rate and steps (``common.privacy.accountant.plan_steps``) and the default δ (strictly below 1/max-records).

Order within a round (crash-safe, never under-counts):
1. plan: σ (calibrated once for the run's planned steps), q = 1/ceil(max-records / batch-size), steps;
2. reserve: in ONE write transaction of the ledger, re-read the history, check
   ε(history + this round) <= lifetime budget, and append "reserve" (or "decline"): two rounds at once can
   never both pass against the same history (:meth:`SitePrivacy.reserve`);
3. run the DP steps; append "confirm".
0. before anything: the ledger must not have lost history (``common.privacy.ledger_guard``: fails closed);
4. with a confirm or a decline, in the same ledger transaction: sign the head that row becomes with the site's
   key (``<state-dir>/site_key``; see :meth:`SitePrivacy.sign_head`) and report it to the server,
   which records it: a later truncation or rewrite of the ledger is then detectable.

Other releases, also written before anything leaves: a central-mode round (``reserve_central``: one Gaussian
release of the server's σ/2, record-level) and a release without DP that the site's own file allows
(``release_without_dp``: ε = ∞).

The dataset id sent to the server is an HMAC of the training rows' fingerprint under a key that never leaves
the state folder (``<state-dir>/dataset_id_key``): the server cannot test a guessed dataset against it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from common.config import PrivacySettings
from common.privacy.accountant import (
    Mechanism,
    calibrate_noise_multiplier,
    default_delta,
    epsilon_from_history,
    make_accountant,
)
from common.privacy.entry import NO_DP_STATEMENT, SITE_RECORD_STATEMENT, LedgerEntry, copies_statement
from common.privacy.ledger import Ledger, mechanism_history_of
from common.privacy.ledger_guard import (LEDGER_FILE, check_site_ledger, private_state_dir, site_lock,
                                         write_signed_head)
from common.privacy.signing import HeadRecord, load_or_create_key
from common.storage import atomic_write_text

__all__ = ["DATASET_KEY_FILE", "SITE_KEY_FILE", "RoundPlan", "SitePrivacy", "dataset_hmac"]

SITE_KEY_FILE = "site_key"  # in the state dir: the site's ECDSA P-384 key (a SuperNode-auth key may be put here)
DATASET_KEY_FILE = "dataset_id_key"  # in the state dir: the secret key of the dataset-id HMAC (never sent)


def dataset_hmac(fingerprint: str, state_dir: Path) -> str:
    """HMAC-SHA256 of ``fingerprint`` under the site's secret key (created on first use, mode 0600), hex, 32 chars."""
    path = state_dir / DATASET_KEY_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        try:  # O_EXCL: two processes never write two different keys
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        except FileExistsError:
            pass
    key = bytes.fromhex(path.read_text().strip())
    return hmac.new(key, fingerprint.encode("utf-8"), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class RoundPlan:
    noise_multiplier: float | None  # σ of the round's mechanism (central: the server's σ/2; None: no mechanism)
    sample_rate: float | None  # q = 1/ceil(max-records / batch-size) (central: 1.0; None: no mechanism)
    steps: int  # DP-SGD steps this round (central: 1 release)
    epsilon_before: float  # lifetime ε spent before this round
    epsilon_after: float  # lifetime ε if this round runs (reported accountant)
    epsilon_rdp_after: float  # same, by RDP (conservative figure)
    allowed: bool  # False: the round would exceed the lifetime budget
    reason: str  # why not allowed ("" if allowed)
    history: tuple[Mechanism, ...] = ()  # the mechanism history the plan was assessed against (before this round)
    statement: str = ""  # the reason a reserve row carries ("" for DP-SGD; central's statement)


class SitePrivacy:
    """Privacy state of one site's dataset, backed by its ledger.

    Parameters
    ----------
    site : str
        The site's name (its ledger key).
    dataset_id : str
        The training rows' fingerprint (kept local: only its HMAC is recorded and sent).
    settings : PrivacySettings
        What the site applies this round (``common.config.privacy_terms``); ``max_records`` is required.
    num_examples : int
        The rows the site holds (private: only compared with ``max_records``, never recorded or sent).
    state_dir : Path
        The site's state folder.
    cache_dir : Path, optional
        Where σ calibrations are cached (default ``<state_dir>/cache``; a simulation's ``site-cache-root``).
    max_copies : int
        The largest number of training records that are copies of one another (1: none). More than 1 only when
        the site's own file allows it (``duplicate-records = "allow"``); every release row then states it.
    """

    def __init__(self, *, site: str, dataset_id: str, settings: PrivacySettings, num_examples: int,
                 state_dir: Path, cache_dir: Path | None = None, max_copies: int = 1) -> None:
        if not settings.max_records:
            raise ValueError(f"site '{site}': no max-records declared: the sample rate, the steps, δ and the "
                             "aggregation weight derive from that public bound, never from the rows held")
        self.site, self.settings, self.num_examples = site, settings, num_examples
        self.max_records = int(settings.max_records)
        self.delta = settings.delta or default_delta(self.max_records)
        if self.delta >= 1.0 / self.max_records:
            raise ValueError(
                f"site '{site}': delta={self.delta} is not below 1/max-records = {1 / self.max_records:.3g}; such a "
                "δ allows releasing a whole record. Use delta = 0 for the default (< 1/max-records)."
            )
        self.state_dir = private_state_dir(state_dir)  # 0700, in a simulation too
        with site_lock(state_dir):  # no other process creates the ledger while it is checked
            check_site_ledger(state_dir, site=site)  # fails closed: a ledger that lost history is never used
            self.ledger = Ledger(state_dir / LEDGER_FILE)  # 0600
        self.dataset_id = dataset_hmac(dataset_id, state_dir)
        # σ calibrations (pure functions of public values): <state-dir>/cache, or a simulation's site-cache-root
        self.cache_dir = cache_dir or self.state_dir / "cache"
        self.copies = copies_statement(max_copies) if max_copies > 1 else ""  # stated in every release row
        self._signed: HeadRecord | None = None  # the head signed with this object's last confirm or decline

    @property
    def over_bound(self) -> bool:
        """The site holds more training rows than its declared max-records: it must release nothing."""
        return self.num_examples > self.max_records

    # ----------------------------------------------------------------- history
    def history(self) -> list[Mechanism]:
        """Every DP release of this site, in order (reserved = spent); empty if it released without DP."""
        return self._history_and_unbounded()[0]

    def _history_and_unbounded(self) -> tuple[list[Mechanism], bool]:
        unbounded = self.unbounded()
        return ([] if unbounded else self.ledger.mechanism_history(site=self.site)), unbounded

    def unbounded(self) -> bool:
        """The site released without DP at some point: its ε is ∞ for good."""
        return bool(self.ledger.released_without_dp(site=self.site))

    def spent(self) -> float:
        if self.unbounded():
            return math.inf
        h = self.history()
        return epsilon_from_history(h, delta=self.delta, accountant=self.settings.accountant) if h else 0.0

    def accountant(self, history: tuple[Mechanism, ...] | None = None):
        """An Opacus accountant restored from ``history`` (default: the ledger's whole history)."""
        return make_accountant(self.settings.accountant, history=self.history() if history is None else history)

    def rounds_trained(self) -> int:
        return sum(1 for e in self.ledger.entries(site=self.site) if e.event == "reserve")

    # ------------------------------------------------------------- calibration
    def noise_multiplier(self, *, sample_rate: float, planned_steps: int) -> float:
        """σ meeting ``target-epsilon`` at δ after ``planned_steps`` (worst case: every round).

        Calibrated once per (q, steps, target, δ, accountant) and cached on disk (``cache_dir``): a fresh
        process (deployment), or the next run of a simulation, gets the same σ without recomputing.
        """
        s = self.settings
        key = f"{s.accountant}|{s.target_epsilon!r}|{self.delta!r}|{sample_rate!r}|{planned_steps}"
        cache_file = self.cache_dir / "calibration.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        if key not in cache:
            cache[key] = calibrate_noise_multiplier(
                target_epsilon=s.target_epsilon, delta=self.delta, sample_rate=sample_rate,
                steps=planned_steps, accountant=s.accountant,
            )
            atomic_write_text(cache_file, json.dumps(cache, indent=1, sort_keys=True))
        return float(cache[key])

    # ---------------------------------------------------------------- rounds
    def _assess(self, history: list[Mechanism], mechanism: Mechanism, *, unbounded: bool,
                statement: str = "") -> RoundPlan:
        """The round's plan against ``history``: ε before and after, and whether the budget allows it."""
        sigma, q, steps = mechanism
        acc, budget = self.settings.accountant, self.settings.epsilon_budget
        if unbounded:
            return RoundPlan(sigma, q, steps, math.inf, math.inf, math.inf, False,
                             f"lifetime budget: ε is already ∞ (a release without DP is in this site's ledger; "
                             f"epsilon-budget {budget:g})", tuple(history), statement)
        before = epsilon_from_history(history, delta=self.delta, accountant=acc) if history else 0.0
        nxt = [*history, mechanism]
        after = epsilon_from_history(nxt, delta=self.delta, accountant=acc)
        after_rdp = epsilon_from_history(nxt, delta=self.delta, accountant="rdp")
        allowed = after <= budget
        reason = "" if allowed else (
            f"lifetime budget: this round would bring ε from {before:.3f} to {after:.3f} "
            f"(> epsilon-budget {budget:g}, δ={self.delta:.1e}, {acc.upper()})"
        )
        return RoundPlan(sigma, q, steps, before, after, after_rdp, allowed, reason, tuple(history), statement)

    def plan(self, *, sample_rate: float, steps: int, planned_steps: int) -> RoundPlan:
        """This round's DP-SGD plan against the ledger's current history (re-checked by :meth:`reserve`)."""
        sigma = self.noise_multiplier(sample_rate=sample_rate, planned_steps=planned_steps)
        history, unbounded = self._history_and_unbounded()
        return self._assess(history, (sigma, sample_rate, steps), unbounded=unbounded,
                            statement=self.copies)

    def plan_central(self, *, server_noise_multiplier: float) -> RoundPlan:
        """A central-mode round as this site records it: one Gaussian release of σ/2 (record-level, q = 1)."""
        if not server_noise_multiplier > 0:
            raise ValueError(f"site '{self.site}': central mode needs the server's σ > 0, got "
                             f"{server_noise_multiplier!r}")
        history, unbounded = self._history_and_unbounded()
        return self._assess(history, (server_noise_multiplier / 2, 1.0, 1), unbounded=unbounded,
                            statement="; ".join(s for s in (SITE_RECORD_STATEMENT, self.copies) if s))

    def _entry(self, plan: RoundPlan, event: str, *, round: int, federation_id: str, run_id: str,
               epsilon: float, epsilon_rdp: float | None, reason: str = "") -> LedgerEntry:
        s = self.settings
        return LedgerEntry(
            site=self.site, round=round, event=event, federation_id=federation_id, run_id=run_id,
            dataset_id=self.dataset_id, noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            steps=plan.steps, max_grad_norm=s.max_grad_norm, delta=self.delta, accountant=s.accountant,
            epsilon=epsilon, epsilon_rdp=epsilon_rdp, target_epsilon=s.target_epsilon, reason=reason,
        )

    def reserve(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str) -> RoundPlan:
        """Re-check ``plan`` against the ledger and append "reserve" — or "decline" — in ONE write transaction.

        Returns
        -------
        RoundPlan
            The plan as re-checked under the ledger's write lock: ``allowed`` True means the reserve row was
            appended and the round may run; False means a decline row was appended instead (another process
            spent in between) and nothing may be released.
        """
        if not plan.allowed:
            raise ValueError(f"site '{self.site}': refusing to reserve a round over budget: {plan.reason}")
        decided: dict[str, RoundPlan] = {}
        ids = dict(round=round, federation_id=federation_id, run_id=run_id)

        def decide(rows: list[LedgerEntry]) -> LedgerEntry:
            mine = [r for r in rows if r.site == self.site]
            unbounded = bool(self.ledger.released_without_dp(site=self.site, entries=mine))
            history = [] if unbounded else mechanism_history_of(mine, site=self.site)
            fresh = plan if (tuple(history) == plan.history and not unbounded) else self._assess(
                history, (plan.noise_multiplier, plan.sample_rate, plan.steps), unbounded=unbounded,
                statement=plan.statement)
            decided["plan"] = fresh
            if fresh.allowed:
                return self._entry(fresh, "reserve", **ids, epsilon=fresh.epsilon_after,
                                   epsilon_rdp=fresh.epsilon_rdp_after, reason=fresh.statement)
            return self._decline_entry(fresh, history, **ids)

        self.ledger.append_decided(decide)
        return decided["plan"]

    def confirm(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str) -> LedgerEntry:
        """Append "confirm" and sign the head it becomes, in one ledger transaction (see :meth:`sign_head`)."""
        return self._append_signed(self._entry(plan, "confirm", round=round, federation_id=federation_id,
                                               run_id=run_id, epsilon=plan.epsilon_after,
                                               epsilon_rdp=plan.epsilon_rdp_after, reason=plan.statement))

    def _decline_entry(self, plan: RoundPlan, history: list[Mechanism], *, round: int, federation_id: str,
                       run_id: str, reason: str = "") -> LedgerEntry:
        rdp = (math.inf if math.isinf(plan.epsilon_before) else
               epsilon_from_history(history, delta=self.delta, accountant="rdp") if history else 0.0)
        return self._entry(plan, "decline", round=round, federation_id=federation_id, run_id=run_id,
                           epsilon=plan.epsilon_before, epsilon_rdp=rdp, reason=reason or plan.reason)

    def decline(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str,
                reason: str = "") -> LedgerEntry:
        """Append a decline of ``plan``'s round (``reason``: why, default the plan's; public words only), and sign
        the head it becomes in the same ledger transaction."""
        return self._append_signed(self._decline_entry(plan, list(plan.history), round=round,
                                                       federation_id=federation_id, run_id=run_id, reason=reason))

    def release_without_dp(self, *, steps: int, round: int, federation_id: str, run_id: str) -> RoundPlan:
        """Record a release without DP (the site's own file allows it) BEFORE it leaves: ε = ∞ from now on."""
        plan = RoundPlan(None, None, steps, self.spent(), math.inf, math.inf, True, "", (), NO_DP_STATEMENT)
        s = self.settings
        self.ledger.append(LedgerEntry(
            site=self.site, round=round, event="reserve", federation_id=federation_id, run_id=run_id,
            dataset_id=self.dataset_id, steps=max(1, steps), max_grad_norm=s.max_grad_norm, delta=self.delta,
            accountant=s.accountant, epsilon=math.inf, epsilon_rdp=math.inf, target_epsilon=s.target_epsilon, reason=NO_DP_STATEMENT))
        return plan

    def assessment(self) -> RoundPlan:
        """The plan of a round declined before any mechanism was planned: ε over the whole history, no steps."""
        history = self.history()
        before = self.spent()
        rdp = (math.inf if math.isinf(before) else
               epsilon_from_history(history, delta=self.delta, accountant="rdp") if history else 0.0)
        return RoundPlan(None, None, 0, before, before, rdp, False, "", tuple(history))

    # ----------------------------------------------------------- signed head
    def _key(self):
        return load_or_create_key(self.state_dir / SITE_KEY_FILE, comment=f"fedfusion-site-{self.site}")

    def _append_signed(self, entry: LedgerEntry) -> LedgerEntry:
        """A confirm or decline row and its signed head, committed together (one commit, not two)."""
        row, head = self.ledger.append_signed(entry, self._key(), secure_mode=self.settings.secure_mode,
                                              epsilon_budget=self.settings.epsilon_budget)
        write_signed_head(self.state_dir, head)  # after the commit: the mark never names a row not on disk
        self._signed = head
        return row

    def sign_head(self, *, round: int, run_id: str) -> dict[str, object]:
        """The PRIVACY record fields that carry the ledger's newest signed head to the server.

        After :meth:`confirm` or :meth:`decline` of this round, the head they signed with their row (same
        transaction) while it is still the ledger's newest row; otherwise (a reservation that became a decline, a
        release without DP) the newest row is signed now and the signature kept in the ledger's ``heads`` table.

        The key is ``<state-dir>/site_key`` (OpenSSH or PEM, ECDSA): in deployment, put the
        SuperNode-authentication key there (``ssh-keygen -t ecdsa -b 384``); otherwise a P-384 key
        of the site's own is created on first use (0600, public half in ``site_key.pub``).
        """
        head = self._signed
        if head is None or (head.round, head.run_id) != (round, run_id) or (
                self.ledger.head() != (head.head_seq, head.head_hash)):
            head = self.ledger.sign_head(self._key(), site=self.site, round=round, run_id=run_id,
                                         secure_mode=self.settings.secure_mode,
                                         epsilon_budget=self.settings.epsilon_budget)
            write_signed_head(self.state_dir, head)  # beside the ledger: a later, shorter ledger is refused
            self._signed = head
        return {"ledger-head-seq": head.head_seq, "ledger-head-hash": head.head_hash,
                "ledger-head-signature": head.signature, "site-public-key": head.public_key}
