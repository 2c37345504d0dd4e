"""One site, one round: load, agree the privacy terms, plan the spend, train or decline, report.

No Flower imports: the handlers in ``client/app.py`` pass plain mappings in and wrap the
:class:`TrainOutcome` into a reply. That keeps this logic testable without a federation.

What leaves (README "What leaves a site"): the model update, and public facts: ``num-examples`` is the site's
declared ``max-records`` (the aggregation weight), the PRIVACY record holds settings, the ledger's accounting and
signed head, and an HMAC as dataset id. The training loss and the number of rows stay in the site's own log.
A round is released only under terms the site's own file allows (``common.config.terms``): DP-SGD
("sample"), the server's site-level DP ("central", if the file allows it) or no DP ("none", if the file allows
it: recorded as ε = ∞). Everything that can make a round fail after its reservation is checked before it.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from client.central import central_update
from client.dp_random import DpRandomness, dp_randomness
from client.privacy import RoundPlan, SitePrivacy
from client.site_data import SiteData, load_site
from client.timing import Stopwatch
from client.train import evaluate, noise_generator_problem, resolve_device, train_dp, train_plain
from common.config import (MAX_PROXIMAL_MU, ConfigError, PrivacySettings, PrivacyTerms, RunConfig, Scenario,
                           SiteConfig, load_scenario, parse_run_config, privacy_terms, resolve_site)
from common.factory import build_model
from common.models.params import BRANCHES, freeze_branches, load_trainable, trainable_state
from common.privacy.accountant import epsilon_from_history, plan_steps
from common.records import (CENTRAL_NOISE_MULTIPLIER, NUM_EXAMPLES, PROXIMAL_MU, STATUS_DECLINED, STATUS_TRAINED,
                            decline_code)

__all__ = ["MessageError", "TrainOutcome", "SiteRound", "check_global_values"]

log = logging.getLogger("fedfusion.client")


class MessageError(ValueError):
    """The server's message lacks what this site needs for the round (e.g. central mode without its σ)."""


@dataclass(frozen=True)
class TrainOutcome:
    arrays: dict[str, torch.Tensor] | None  # trained branches; None when declined
    metrics: dict[str, float]  # num-examples = the declared max-records (public), or site-weight (central)
    privacy: dict[str, Any]  # the PRIVACY ConfigRecord (common/records.py: PRIVACY_FIELDS)


def _secure_mode_problem(settings: PrivacySettings, rng: DpRandomness, device: torch.device) -> str:
    if settings.secure_mode and importlib.util.find_spec("torchcsprng") is None:
        return "secure-mode-unavailable"
    return ""


def _noise_device_problem(settings: PrivacySettings, rng: DpRandomness, device: torch.device) -> str:
    if settings.secure_mode:
        return ""  # Opacus' own CSPRNG draws the noise
    problem = noise_generator_problem(rng, device)
    if problem:
        log.warning("declining before any reservation: %s", problem)
    return "noise-device" if problem else ""


#: checks that must pass BEFORE a DP round is reserved (each returns a decline code, or "")
PREFLIGHT: tuple[Callable[[PrivacySettings, DpRandomness, torch.device], str], ...] = (
    _secure_mode_problem, _noise_device_problem)


class SiteRound:
    def __init__(self, *, run: RunConfig, scenario: Scenario, site: SiteConfig, server_round: int,
                 federation_id: str, run_id: str, message_config: Mapping[str, Any] | None = None) -> None:
        self.run, self.scenario, self.site = run, scenario, site
        self.server_round, self.federation_id, self.run_id = server_round, federation_id, run_id
        self.message_config = dict(message_config or {})
        self.setup = Stopwatch()  # seconds spent loading data and building models (not compute)
        self._layout: dict[str, tuple[int, ...]] | None = None
        self._spare: torch.nn.Module | None = None  # the model built for layout(), handed to the next model()

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any],
                    message_config: Mapping[str, Any], run_id: str) -> "SiteRound":
        run = parse_run_config(run_config)
        site = resolve_site(node_config, run)  # deployment: the site's own file, then only the scenario it accepts
        return cls(run=run, scenario=load_scenario(site.scenario_for(run)), site=site,
                   server_round=int(message_config.get("server-round", 0)),
                   federation_id=str(message_config.get("federation-id", f"run-{run_id}")), run_id=run_id,
                   message_config=message_config)

    # ------------------------------------------------------------------ parts
    def data(self) -> SiteData:
        with self.setup:
            return load_site(self.site, model_modalities=self.scenario.modalities,
                             text_encoder=self.run.model.text_encoder, schema=self.scenario.schema)

    def _build(self) -> torch.nn.Module:
        spare, self._spare = self._spare, None
        return spare if spare is not None else build_model(self.run.model, scenario=self.scenario,
                                                           seed=self.run.federation.seed)

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of this site's own model's trainable tensors: how it splits the server's packed arrays
        (``client/downlink.py``). Taken from the model it builds (kept for the next :meth:`model`), never from the
        server."""
        if self._layout is None:
            with self.setup:
                self._spare = self._build()
                self._layout = {k: tuple(v.shape) for k, v in trainable_state(self._spare, branches=BRANCHES).items()}
        return self._layout

    def model(self, global_state: Mapping[str, torch.Tensor], data: SiteData) -> torch.nn.Module:
        with self.setup:
            model = self._build()
            expected = {k: v.shape for k, v in trainable_state(model, branches=BRANCHES).items()}
            if {k: v.shape for k, v in global_state.items()} != expected:
                wrong = sorted(set(expected) ^ set(global_state)) or sorted(
                    k for k in expected if global_state[k].shape != expected[k])
                raise MessageError(f"the server's arrays are not this model's trainable tensors (e.g. {wrong[:3]}); "
                                   "nothing was trained or spent")
            load_trainable(model, global_state)
            # Branches this site has no data for get no gradient: freeze them so that Opacus neither
            # noises nor sends them, and the server keeps their global values.
            freeze_branches(model, [m for m in self.scenario.modalities if m not in data.modalities])
            return model

    def terms(self) -> PrivacyTerms:
        """The run's privacy requests within the limits of this site's own file (``common.config.terms``)."""
        return privacy_terms(self.site.privacy, self.run, file_keys=self.site.spec.privacy_overrides)

    def privacy(self, data: SiteData, settings: PrivacySettings | None = None) -> SitePrivacy:
        settings = settings or self.terms().settings
        if settings.max_records is None:
            raise ConfigError(
                f"site '{self.site.spec.name}': its own privacy table declares no 'max-records' (site.toml "
                "[privacy], or the scenario's [sites.privacy] in a simulation): a public upper bound on its "
                "training records, from which the sample rate, the steps, δ and the aggregation weight derive")
        return SitePrivacy(site=self.site.spec.name, dataset_id=data.dataset_id, settings=settings,
                           num_examples=len(data.train), state_dir=self.site.state_dir,
                           cache_dir=self.site.cache_dir, max_copies=data.max_copies)

    def _ids(self) -> dict[str, Any]:
        return dict(round=self.server_round, federation_id=self.federation_id, run_id=self.run_id)

    # ------------------------------------------------------------------ train
    def train(self, global_state: Mapping[str, torch.Tensor]) -> TrainOutcome:
        check_global_values(global_state)  # before anything is spent: what the server sent must be usable
        self.proximal_mu()  # a bad message fails here, before anything is reserved
        data = self.data()
        terms = self.terms()
        sp = self.privacy(data, self.site.privacy if terms.refused else terms.settings)  # a refusal: own terms
        if terms.refused:
            return self._decline(sp, sp.assessment(), "privacy-request", terms.reason())
        if sp.over_bound:  # the count stays here: the decline says only that the bound is exceeded
            log.warning("site %s holds %d training rows, more than its max-records %d: declining",
                        self.site.spec.name, len(data.train), sp.max_records)
            return self._decline(sp, sp.assessment(), "max-records")
        return _TRAIN_MODES[terms.mode](self, data, sp, global_state)

    def _train_dp(self, data: SiteData, sp: SitePrivacy, global_state: Mapping[str, torch.Tensor]) -> TrainOutcome:
        t = self.run.train
        steps = plan_steps(max_records=sp.max_records, batch_size=t.batch_size, epochs=t.local_epochs)
        with self.setup:  # importing Opacus (seconds, lazily) is start-up cost, not training: time it as setup
            import opacus  # noqa: F401
        plan = sp.plan(sample_rate=steps.sample_rate, steps=steps.steps,
                       planned_steps=steps.steps * self.run.federation.num_rounds)
        if not plan.allowed:
            return self._decline(sp, plan, "budget")
        device = resolve_device(self.site.device)
        rng = dp_randomness(sp.settings.noise_seed, run_seed=self.run.federation.seed, site=self.site.spec.name,
                            server_round=self.server_round, device=device)
        problems = [code for check in PREFLIGHT if (code := check(sp.settings, rng, device))]
        if problems:  # nothing reserved: a round that must fail is never spent
            return self._decline(sp, plan, problems[0])
        model = self.model(global_state, data)  # the server's arrays fit this model: checked before any spend
        plan = sp.reserve(plan, **self._ids())  # budget re-checked and reserved in one ledger transaction
        if not plan.allowed:  # another process spent in between: the reservation became a decline
            return TrainOutcome(None, {NUM_EXAMPLES: 0.0}, self._report(sp, plan, STATUS_DECLINED, plan.reason,
                                                                       "budget"))
        accountant = sp.accountant(plan.history)  # history BEFORE this round; Opacus appends this round's steps
        res = train_dp(model, data.train, plan=steps, lr=t.learning_rate, momentum=t.momentum,
                       noise_multiplier=plan.noise_multiplier, max_grad_norm=sp.settings.max_grad_norm,
                       accountant=accountant, secure_mode=sp.settings.secure_mode,
                       modality_dropout=t.modality_dropout, device=device, seed=self._seed(), rng=rng,
                       proximal_mu=self.proximal_mu(), clipping=t.clipping)
        self._check_accountant(sp, plan, accountant, res.steps, res.sample_rate)
        sp.confirm(plan, **self._ids())
        log.info("site %s round %d: %d DP-SGD steps at q=1/%d (max-records %d), sigma %.4f, C %g -> epsilon %.3f "
                 "(%s, delta %.1e; RDP %.3f); local only: %d rows, mean training loss %.4f", self.site.spec.name,
                 self.server_round, plan.steps, steps.steps_per_epoch, sp.max_records, plan.noise_multiplier,
                 sp.settings.max_grad_norm, plan.epsilon_after, sp.settings.accountant.upper(), sp.delta,
                 plan.epsilon_rdp_after, len(data.train), res.loss)
        return TrainOutcome(_cpu(trainable_state(model, branches=(*data.modalities, "head"))),
                            {NUM_EXAMPLES: float(sp.max_records)}, self._report(sp, plan, STATUS_TRAINED, "", ""))

    def _train_central(self, data: SiteData, sp: SitePrivacy,
                       global_state: Mapping[str, torch.Tensor]) -> TrainOutcome:
        sigma = self.message_config.get(CENTRAL_NOISE_MULTIPLIER)
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise MessageError(f"privacy-mode central: the train message carries no valid "
                               f"'{CENTRAL_NOISE_MULTIPLIER}' (got {sigma!r}); the site cannot record its release")
        plan = sp.plan_central(server_noise_multiplier=float(sigma))
        if not plan.allowed:
            return self._decline(sp, plan, "budget")
        model = self.model(global_state, data)
        plan = sp.reserve(plan, **self._ids())
        if not plan.allowed:
            return TrainOutcome(None, {NUM_EXAMPLES: 0.0}, self._report(sp, plan, STATUS_DECLINED, plan.reason,
                                                                       "budget"))
        arrays, metrics, loss = central_update(model, data.train, global_state=global_state, train=self.run.train,
                                               device=resolve_device(self.site.device), seed=self._seed(),
                                               site=self.site.spec.name, branches=(*self.scenario.modalities, "head"))
        sp.confirm(plan, **self._ids())
        log.info("site %s round %d (central): recorded sigma/2 = %.4f, epsilon %.3f; local only: loss %.4f",
                 self.site.spec.name, self.server_round, plan.noise_multiplier, plan.epsilon_after, loss)
        return TrainOutcome(arrays, metrics, self._report(sp, plan, STATUS_TRAINED, plan.statement, "", "central"))

    def _train_without_dp(self, data: SiteData, sp: SitePrivacy,
                          global_state: Mapping[str, torch.Tensor]) -> TrainOutcome:
        t = self.run.train
        steps = plan_steps(max_records=sp.max_records, batch_size=t.batch_size, epochs=t.local_epochs)
        model = self.model(global_state, data)
        plan = sp.release_without_dp(steps=steps.steps, **self._ids())  # recorded before anything leaves
        res = train_plain(model, data.train, epochs=t.local_epochs, batch_size=t.batch_size,
                          optimizer=t.plain_optimizer, lr=t.plain_learning_rate, momentum=t.momentum,
                          modality_dropout=t.modality_dropout, device=resolve_device(self.site.device),
                          seed=self._seed(), proximal_mu=self.proximal_mu())
        log.warning("site %s round %d: released WITHOUT DP (its own file allows dp = false): epsilon is infinite; "
                    "local only: loss %.4f", self.site.spec.name, self.server_round, res.loss)
        return TrainOutcome(_cpu(trainable_state(model, branches=(*data.modalities, "head"))),
                            {NUM_EXAMPLES: float(sp.max_records)},
                            self._report(sp, plan, STATUS_TRAINED, plan.statement, "", "none"))

    def proximal_mu(self) -> float:
        """FedProx's μ from the train message (Flower's FedProx sets it), checked: 0 when absent."""
        mu = self.message_config.get(PROXIMAL_MU, 0.0)
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0.0 <= mu <= MAX_PROXIMAL_MU:
            raise MessageError(f"the train message's '{PROXIMAL_MU}' is {mu!r}: expected a number in "
                               f"[0, {MAX_PROXIMAL_MU:g}] (FedProx's proximal term)")
        return float(mu)

    def _seed(self) -> int:
        return self.run.federation.seed * 1000 + self.server_round

    def _decline(self, sp: SitePrivacy, plan: RoundPlan, code: str, detail: str = "") -> TrainOutcome:
        """Write the decline to the ledger and say why, in the registry's words and public settings only."""
        reason = plan.reason if code == "budget" and plan.reason else (
            decline_code(code).text + (f": {detail}" if detail else ""))
        sp.decline(plan, reason=reason, **self._ids())
        return TrainOutcome(None, {NUM_EXAMPLES: 0.0}, self._report(sp, plan, STATUS_DECLINED, reason, code))

    def decline_report(self, code: str) -> dict[str, Any]:
        """The PRIVACY record of a round this site answers with a decline without writing to its ledger (a
        round already reserved whose reply was lost, ``client/replay.py``): ε over the whole history."""
        sp = self.privacy(self.data())
        return self._report(sp, sp.assessment(), STATUS_DECLINED, decline_code(code).text, code)

    def _check_accountant(self, sp: SitePrivacy, plan: RoundPlan, accountant, steps: int,
                          sample_rate: float) -> None:
        """Opacus' own accountant (restored + this round) must agree with the ledger."""
        if steps != plan.steps or not math.isclose(sample_rate, plan.sample_rate, rel_tol=1e-12):
            raise RuntimeError(f"site '{self.site.spec.name}': ran {steps} steps at q={sample_rate}, "
                               f"but reserved {plan.steps} at q={plan.sample_rate}")
        eps = epsilon_from_history(accountant.history, delta=sp.delta, accountant=sp.settings.accountant)
        if not math.isclose(eps, plan.epsilon_after, rel_tol=1e-6, abs_tol=1e-9):
            raise RuntimeError(f"site '{self.site.spec.name}': Opacus accountant says ε={eps}, "
                               f"ledger reservation says {plan.epsilon_after}")

    def _report(self, sp: SitePrivacy, plan: RoundPlan, status: str, reason: str, code: str,
                mode: str = "sample") -> dict[str, Any]:
        history = sp.history()
        s = sp.settings
        trained = status == STATUS_TRAINED
        rdp_before = (math.inf if math.isinf(plan.epsilon_before) else
                      epsilon_from_history(history, delta=sp.delta, accountant="rdp") if history else 0.0)
        # after this round's confirm/decline: sign the ledger's head; the server records it (anchors the ledger)
        head = sp.sign_head(round=self.server_round, run_id=self.run_id)
        mechanism = {} if plan.noise_multiplier is None else {
            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate}
        # the largest number of copies k (duplicate-records = "allow") is a count of the site's rows: it stays in the
        # site's own ledger (the audit reads it there) and never rides on the reply, which its ε does not cover
        # (the statement has parts of its own, "duplicate-records=allow; max-copies=k; group-privacy=...": each goes)
        copies = set(sp.copies.split("; ")) if sp.copies else set()
        reason = "; ".join(part for part in reason.split("; ") if part and part not in copies)
        return head | mechanism | {
            "status": status, "reason": reason, "code": code, "site": self.site.spec.name, "mode": mode,
            "dataset-id": sp.dataset_id, "max-records": sp.max_records,
            "epsilon": plan.epsilon_after if trained else plan.epsilon_before,
            "epsilon-rdp": plan.epsilon_rdp_after if trained else rdp_before,
            "accountant": s.accountant, "delta": sp.delta, "target-epsilon": s.target_epsilon,
            "epsilon-budget": s.epsilon_budget, "steps": plan.steps if trained else 0,
            "total-steps": sum(h[2] for h in history), "max-grad-norm": s.max_grad_norm,
            "rounds-trained": sp.rounds_trained(), "secure-mode": s.secure_mode, "noise-seed": s.noise_seed,
        }

    # --------------------------------------------------------------- evaluate
    def evaluate(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        data = self.data()
        model = self.model(global_state, data)
        device = resolve_device(self.site.device)
        r = evaluate(model, data.test, device=device)
        out = {NUM_EXAMPLES: float(r.num_examples), "loss": r.loss, "accuracy": r.accuracy,
               "balanced-accuracy": r.balanced_accuracy, "auc": r.auc, "positives": float(r.positives)}
        if self.run.train.embedding_views:  # local inspection only: written at the site, never sent
            from client.embedding_views import write_embedding_views

            write_embedding_views(model, data.test, self.site.state_dir / "views" / f"round-{self.server_round:03d}.png",
                                  device=device, modalities=self.scenario.modalities,
                                  title=f"{self.site.spec.name}, round {self.server_round}, test rows")
        # Missing-modality robustness: each held modality removed in turn, and each alone (unless the run turns
        # these extra evaluations off: missing-modality-evaluation = false, for scale runs)
        mods = self.scenario.modalities
        if self.run.train.missing_modality_evaluation and len(data.modalities) > 1:
            for m in data.modalities:
                j = mods.index(m)
                others = tuple(i for i, o in enumerate(mods) if o != m)
                for tag, drop in ((f"without-{m}", (j,)), (f"only-{m}", others)):
                    a = evaluate(model, data.test, device=device, drop_modalities=drop)
                    out[f"bacc-{tag}"], out[f"auc-{tag}"] = a.balanced_accuracy, a.auc
        return out


#: the round's mechanism (PrivacyTerms.mode) -> how the site trains and records it
_TRAIN_MODES: dict[str, Callable[[SiteRound, SiteData, SitePrivacy, Mapping[str, torch.Tensor]], TrainOutcome]] = {
    "sample": SiteRound._train_dp,
    "central": SiteRound._train_central,
    "none": SiteRound._train_without_dp,
}


def check_global_values(state: Mapping[str, torch.Tensor]) -> None:
    """Every tensor the server sent is float32 and finite (case 36: NaN weights were trained on, ε spent).

    Raises
    ------
    MessageError
        Naming the first tensor that is not; nothing has been spent.
    """
    for name, value in state.items():
        if value.dtype != torch.float32:
            raise MessageError(f"the server's tensor {name!r} is {value.dtype}, not float32; nothing was spent")
        if not bool(torch.isfinite(value).all()):
            raise MessageError(f"the server's tensor {name!r} holds NaN or inf; nothing was trained or spent")


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
