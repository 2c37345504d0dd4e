"""A site's privacy bookkeeping: calibrate once, check the budget, reserve, confirm.

The site's SQLite ledger (``<state-dir>/ledger.sqlite``) is the source of truth for what its
dataset has spent over its lifetime, across rounds and across runs. Flower's ``context.state``
lives for one run only, so nothing here depends on it: the accountant is rebuilt from the
ledger's mechanism history each round.

Order within a round (crash-safe, never under-counts):
1. plan: σ (calibrated once for the run's planned steps), q = 1/len(loader), steps;
2. check: ε(history + this round) <= lifetime budget, else append "decline" and stop;
3. append "reserve" (the round counts as spent from now on, whatever happens next);
4. run the DP steps; append "confirm".
5. after a confirm or a decline: sign the ledger's head with the site's key
   (``<state-dir>/site_key``; see :meth:`SitePrivacy.sign_head`) and report it to the server,
   which records it: a later truncation or rewrite of the ledger is then detectable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from common.config import PrivacySettings
from common.privacy.accountant import (
    calibrate_noise_multiplier,
    default_delta,
    epsilon_from_history,
    make_accountant,
)
from common.privacy.ledger import Ledger, LedgerEntry
from common.privacy.signing import load_or_create_key
from common.storage import atomic_write_text

__all__ = ["SITE_KEY_FILE", "RoundPlan", "SitePrivacy"]

SITE_KEY_FILE = "site_key"  # in the state dir: the site's ECDSA P-384 key (a SuperNode-auth key may be put here)


@dataclass(frozen=True)
class RoundPlan:
    noise_multiplier: float  # σ, calibrated once for the run's planned training
    sample_rate: float  # q = 1/len(loader), the rate Opacus uses
    steps: int  # DP-SGD steps this round
    epsilon_before: float  # lifetime ε spent before this round
    epsilon_after: float  # lifetime ε if this round runs (reported accountant)
    epsilon_rdp_after: float  # same, by RDP (conservative figure)
    allowed: bool  # False: the round would exceed the lifetime budget
    reason: str  # why not allowed ("" if allowed)


class SitePrivacy:
    """Privacy state of one site's dataset, backed by its ledger."""

    def __init__(self, *, site: str, dataset_id: str, settings: PrivacySettings, num_examples: int,
                 state_dir: Path) -> None:
        self.site, self.dataset_id, self.settings = site, dataset_id, settings
        self.delta = settings.delta or default_delta(num_examples)
        if self.delta >= 1.0 / num_examples:
            raise ValueError(
                f"site '{site}': delta={self.delta} is not below 1/n = {1 / num_examples:.3g}; such a δ "
                "allows releasing a whole record. Use delta = 0 for the default (< 1/n)."
            )
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(state_dir / "ledger.sqlite")

    # ----------------------------------------------------------------- history
    def history(self) -> list[tuple[float, float, int]]:
        """Every reserved round of this site, in order (reserved = spent)."""
        return self.ledger.mechanism_history(site=self.site)

    def spent(self) -> float:
        h = self.history()
        return epsilon_from_history(h, delta=self.delta, accountant=self.settings.accountant) if h else 0.0

    def accountant(self):
        """An Opacus accountant restored from the ledger's whole history."""
        return make_accountant(self.settings.accountant, history=self.history())

    def rounds_trained(self) -> int:
        return sum(1 for e in self.ledger.entries(site=self.site) if e.event == "reserve")

    # ------------------------------------------------------------- calibration
    def noise_multiplier(self, *, sample_rate: float, planned_steps: int) -> float:
        """σ meeting ``target-epsilon`` at δ after ``planned_steps`` (worst case: every round).

        Calibrated once per (q, steps, target, δ, accountant) and cached on disk: a fresh
        process (deployment) gets the same σ without recomputing.
        """
        s = self.settings
        key = f"{s.accountant}|{s.target_epsilon!r}|{self.delta!r}|{sample_rate!r}|{planned_steps}"
        cache_file = self.state_dir / "cache" / "calibration.json"
        cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
        if key not in cache:
            cache[key] = calibrate_noise_multiplier(
                target_epsilon=s.target_epsilon, delta=self.delta, sample_rate=sample_rate,
                steps=planned_steps, accountant=s.accountant,
            )
            atomic_write_text(cache_file, json.dumps(cache, indent=1, sort_keys=True))
        return float(cache[key])

    # ---------------------------------------------------------------- rounds
    def plan(self, *, sample_rate: float, steps: int, planned_steps: int) -> RoundPlan:
        sigma = self.noise_multiplier(sample_rate=sample_rate, planned_steps=planned_steps)
        h = self.history()
        acc = self.settings.accountant
        before = epsilon_from_history(h, delta=self.delta, accountant=acc) if h else 0.0
        nxt = [*h, (sigma, sample_rate, steps)]
        after = epsilon_from_history(nxt, delta=self.delta, accountant=acc)
        after_rdp = epsilon_from_history(nxt, delta=self.delta, accountant="rdp")
        budget = self.settings.epsilon_budget
        allowed = after <= budget
        reason = "" if allowed else (
            f"lifetime budget: this round would bring ε from {before:.3f} to {after:.3f} "
            f"(> epsilon-budget {budget:g}, δ={self.delta:.1e}, {acc.upper()})"
        )
        return RoundPlan(sigma, sample_rate, steps, before, after, after_rdp, allowed, reason)

    def _entry(self, plan: RoundPlan, event: str, *, round: int, federation_id: str, run_id: str,
               epsilon: float, epsilon_rdp: float | None, reason: str = "") -> LedgerEntry:
        s = self.settings
        return LedgerEntry(
            site=self.site, round=round, event=event, federation_id=federation_id, run_id=run_id,
            dataset_id=self.dataset_id, noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            steps=plan.steps, max_grad_norm=s.max_grad_norm, delta=self.delta, accountant=s.accountant,
            epsilon=epsilon, epsilon_rdp=epsilon_rdp, target_epsilon=s.target_epsilon, reason=reason,
        )

    def reserve(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str) -> LedgerEntry:
        if not plan.allowed:
            raise ValueError(f"site '{self.site}': refusing to reserve a round over budget: {plan.reason}")
        return self.ledger.append(self._entry(plan, "reserve", round=round, federation_id=federation_id,
                                              run_id=run_id, epsilon=plan.epsilon_after,
                                              epsilon_rdp=plan.epsilon_rdp_after))

    def confirm(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str) -> LedgerEntry:
        return self.ledger.append(self._entry(plan, "confirm", round=round, federation_id=federation_id,
                                              run_id=run_id, epsilon=plan.epsilon_after,
                                              epsilon_rdp=plan.epsilon_rdp_after))

    def decline(self, plan: RoundPlan, *, round: int, federation_id: str, run_id: str) -> LedgerEntry:
        h = self.history()
        rdp = epsilon_from_history(h, delta=self.delta, accountant="rdp") if h else 0.0
        return self.ledger.append(self._entry(plan, "decline", round=round, federation_id=federation_id,
                                              run_id=run_id, epsilon=plan.epsilon_before, epsilon_rdp=rdp,
                                              reason=plan.reason))

    # ----------------------------------------------------------- signed head
    def sign_head(self, *, round: int, run_id: str) -> dict[str, object]:
        """Sign the ledger's newest row, keep the signature in the ledger's ``heads`` table, and
        return the PRIVACY record fields that carry it to the server.

        The key is ``<state-dir>/site_key`` (OpenSSH or PEM, ECDSA): in deployment, put the
        SuperNode-authentication key there (``ssh-keygen -t ecdsa -b 384``); otherwise a P-384 key
        of the site's own is created on first use (0600, public half in ``site_key.pub``).
        """
        key = load_or_create_key(self.state_dir / SITE_KEY_FILE, comment=f"fedfusion-site-{self.site}")
        head = self.ledger.sign_head(key, site=self.site, round=round, run_id=run_id,
                                     secure_mode=self.settings.secure_mode,
                                     epsilon_budget=self.settings.epsilon_budget)
        return {"ledger-head-seq": head.head_seq, "ledger-head-hash": head.head_hash,
                "ledger-head-signature": head.signature, "site-public-key": head.public_key}
