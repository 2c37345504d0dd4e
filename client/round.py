"""One site, one round: load, plan the privacy spend, train or decline, report.

No Flower imports: the handlers in ``client/app.py`` pass plain mappings in and wrap the
:class:`TrainOutcome` into a reply. That keeps this logic testable without a federation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from client.central import central_update
from client.dp_random import dp_randomness
from client.privacy import SitePrivacy
from client.site_data import SiteData, load_site
from client.timing import Stopwatch
from client.train import evaluate, resolve_device, steps_per_epoch, train_dp, train_plain
from common.config import RunConfig, Scenario, SiteConfig, load_scenario, parse_run_config, resolve_site
from common.factory import build_model
from common.models.params import freeze_branches, load_trainable, trainable_state
from common.privacy.accountant import epsilon_from_history
from common.records import NUM_EXAMPLES, STATUS_DECLINED, STATUS_TRAINED

__all__ = ["TrainOutcome", "SiteRound"]

log = logging.getLogger("fedfusion.client")


@dataclass(frozen=True)
class TrainOutcome:
    arrays: dict[str, torch.Tensor] | None  # trained branches; None when declined
    metrics: dict[str, float]  # num-examples, train-loss
    privacy: dict[str, Any]  # the PRIVACY ConfigRecord (common/records.py: PRIVACY_FIELDS)


class SiteRound:
    def __init__(self, *, run: RunConfig, scenario: Scenario, site: SiteConfig, server_round: int,
                 federation_id: str, run_id: str) -> None:
        self.run, self.scenario, self.site = run, scenario, site
        self.server_round, self.federation_id, self.run_id = server_round, federation_id, run_id
        self.setup = Stopwatch()  # seconds spent loading data and building models (not compute)

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any], node_config: Mapping[str, Any],
                    message_config: Mapping[str, Any], run_id: str) -> "SiteRound":
        run = parse_run_config(run_config)
        return cls(run=run, scenario=load_scenario(run.paths.scenario_file), site=resolve_site(node_config, run),
                   server_round=int(message_config.get("server-round", 0)),
                   federation_id=str(message_config.get("federation-id", f"run-{run_id}")), run_id=run_id)

    # ------------------------------------------------------------------ parts
    def data(self) -> SiteData:
        with self.setup:
            return load_site(self.site, model_modalities=self.scenario.modalities,
                             text_encoder=self.run.model.text_encoder, schema=self.scenario.schema)

    def model(self, global_state: Mapping[str, torch.Tensor], data: SiteData) -> torch.nn.Module:
        with self.setup:
            model = build_model(self.run.model, scenario=self.scenario, seed=self.run.federation.seed)
            load_trainable(model, global_state)
            # Branches this site has no data for get no gradient: freeze them so that Opacus neither
            # noises nor sends them, and the server keeps their global values.
            freeze_branches(model, [m for m in self.scenario.modalities if m not in data.modalities])
            return model

    def privacy(self, data: SiteData) -> SitePrivacy:
        return SitePrivacy(site=self.site.spec.name, dataset_id=data.dataset_id, settings=self.site.privacy,
                           num_examples=len(data.train), state_dir=self.site.state_dir)

    # ------------------------------------------------------------------ train
    def train(self, global_state: Mapping[str, torch.Tensor]) -> TrainOutcome:
        data = self.data()
        model = self.model(global_state, data)
        t, n = self.run.train, len(data.train)
        device = resolve_device(self.site.device)
        seed = self.run.federation.seed * 1000 + self.server_round
        branches = (*data.modalities, "head")
        if self.run.privacy_mode == "central":  # site-level DP at the server (server/central.py): plain SGD here
            return TrainOutcome(*central_update(model, data.train, global_state=global_state, train=t, device=device,
                                                seed=seed, site=self.site.spec.name,
                                                branches=(*self.scenario.modalities, "head")))
        if not self.site.privacy.enabled:
            res = train_plain(model, data.train, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.learning_rate,
                              momentum=t.momentum, modality_dropout=t.modality_dropout, device=device, seed=seed)
            return TrainOutcome(_cpu(trainable_state(model, branches=branches)),
                                {NUM_EXAMPLES: float(n), "train-loss": res.loss},
                                {"status": STATUS_TRAINED, "site": self.site.spec.name, "dp": False})

        sp, plan = self._plan(data)
        ids = dict(round=self.server_round, federation_id=self.federation_id, run_id=self.run_id)
        if not plan.allowed:
            sp.decline(plan, **ids)
            return TrainOutcome(None, {NUM_EXAMPLES: 0.0}, self._report(sp, plan, STATUS_DECLINED, plan.reason))

        accountant = sp.accountant()  # history BEFORE this round; Opacus appends this round's steps
        sp.reserve(plan, **ids)  # spent from here on, whatever happens next
        res = train_dp(model, data.train, epochs=t.local_epochs, batch_size=t.batch_size, lr=t.learning_rate,
                       momentum=t.momentum, noise_multiplier=plan.noise_multiplier,
                       max_grad_norm=self.site.privacy.max_grad_norm, accountant=accountant,
                       secure_mode=self.site.privacy.secure_mode, modality_dropout=t.modality_dropout,
                       device=device, seed=seed,
                       rng=dp_randomness(self.site.privacy.noise_seed, run_seed=self.run.federation.seed,
                                         site=self.site.spec.name, server_round=self.server_round))
        self._check_accountant(sp, plan, accountant, res.steps, res.sample_rate)
        sp.confirm(plan, **ids)
        log.info("site %s round %d: %d DP-SGD steps at sample rate %.4f (Opacus: 1/len(loader)), sigma %.4f, "
                 "C %g -> epsilon %.3f (%s, delta %.1e; RDP %.3f)", self.site.spec.name, self.server_round,
                 plan.steps, plan.sample_rate, plan.noise_multiplier, self.site.privacy.max_grad_norm,
                 plan.epsilon_after, self.site.privacy.accountant.upper(), sp.delta, plan.epsilon_rdp_after)
        return TrainOutcome(_cpu(trainable_state(model, branches=branches)),
                            {NUM_EXAMPLES: float(n), "train-loss": res.loss},
                            self._report(sp, plan, STATUS_TRAINED, ""))

    def _plan(self, data: SiteData) -> tuple[SitePrivacy, Any]:
        """This round's DP plan (σ, sample rate, steps, ε before and after) over the ledger's whole history."""
        with self.setup:  # importing Opacus (seconds, lazily) is start-up cost, not training: time it as setup
            import opacus  # noqa: F401
        sp = self.privacy(data)
        spe = steps_per_epoch(len(data.train), self.run.train.batch_size)
        steps = spe * self.run.train.local_epochs
        return sp, sp.plan(sample_rate=1.0 / spe, steps=steps, planned_steps=steps * self.run.federation.num_rounds)

    def decline_report(self, reason: str) -> dict[str, Any]:
        """The PRIVACY record of a round this site answers with a decline without writing to its ledger (a
        round already reserved whose reply was lost, ``client/replay.py``): ε over the whole history, as any
        decline reports it."""
        sp, plan = self._plan(self.data())
        return self._report(sp, plan, STATUS_DECLINED, reason)

    def _check_accountant(self, sp: SitePrivacy, plan, accountant, steps: int, sample_rate: float) -> None:
        """Opacus' own accountant (restored + this round) must agree with the ledger."""
        if steps != plan.steps or not math.isclose(sample_rate, plan.sample_rate, rel_tol=1e-12):
            raise RuntimeError(f"site '{self.site.spec.name}': ran {steps} steps at q={sample_rate}, "
                               f"but reserved {plan.steps} at q={plan.sample_rate}")
        eps = epsilon_from_history(accountant.history, delta=sp.delta, accountant=self.site.privacy.accountant)
        if not math.isclose(eps, plan.epsilon_after, rel_tol=1e-6, abs_tol=1e-9):
            raise RuntimeError(f"site '{self.site.spec.name}': Opacus accountant says ε={eps}, "
                               f"ledger reservation says {plan.epsilon_after}")

    def _report(self, sp: SitePrivacy, plan, status: str, reason: str) -> dict[str, Any]:
        history = sp.history()
        s = self.site.privacy
        # after this round's confirm/decline: sign the ledger's head; the server records it (anchors the ledger)
        head = sp.sign_head(round=self.server_round, run_id=self.run_id)
        return head | {
            "status": status, "reason": reason, "site": self.site.spec.name, "dataset-id": sp.dataset_id,
            "epsilon": plan.epsilon_after if status == STATUS_TRAINED else plan.epsilon_before,
            "epsilon-rdp": (plan.epsilon_rdp_after if status == STATUS_TRAINED else
                            (epsilon_from_history(history, delta=sp.delta, accountant="rdp") if history else 0.0)),
            "accountant": s.accountant, "delta": sp.delta, "target-epsilon": s.target_epsilon,
            "epsilon-budget": s.epsilon_budget, "noise-multiplier": plan.noise_multiplier,
            "sample-rate": plan.sample_rate, "steps": plan.steps if status == STATUS_TRAINED else 0,
            "total-steps": sum(h[2] for h in history), "max-grad-norm": s.max_grad_norm,
            "rounds-trained": sp.rounds_trained(), "secure-mode": s.secure_mode,
            "noise-seed": s.noise_seed,
        }

    # --------------------------------------------------------------- evaluate
    def evaluate(self, global_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
        with self.setup:  # scikit-learn's metrics import lazily (about a second): start-up cost, not evaluation
            import sklearn.metrics  # noqa: F401
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
        # Missing-modality robustness: each held modality removed in turn, and each alone.
        mods = self.scenario.modalities
        if len(data.modalities) > 1:
            for m in data.modalities:
                j = mods.index(m)
                others = tuple(i for i, o in enumerate(mods) if o != m)
                for tag, drop in ((f"without-{m}", (j,)), (f"only-{m}", others)):
                    a = evaluate(model, data.test, device=device, drop_modalities=drop)
                    out[f"bacc-{tag}"], out[f"auc-{tag}"] = a.balanced_accuracy, a.auc
        return out


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}
