"""Non-federated reference models of a scenario: pooled (centralised) and local-only training, no DP.

Both read each site's rows exactly as its federated round does (``SiteRound.data``: the same mapping, public
preprocessing, keyed split and cached note embeddings), train the same model (``build_model`` of the run settings)
with the non-private optimiser of the run settings (``plain-optimizer``, ``plain-learning-rate``,
``client.train.train_plain``), and score each site's TEST rows with ``SiteRound.evaluate`` (the federation's own
metrics and modality ablations). So a row differs from a federated one only in who trains on what:

* **pooled**: one model on the union of every site's training rows (what a single data holder could do; the
  privacy-free upper reference), evaluated at each site;
* **local-only**: each site trains a model on its own training rows alone and is scored on its own test rows (what
  a site gets without the federation).

Epochs: ``num-server-rounds x local-epochs`` passes over the training rows, the same passes a site makes in a
federation. Nothing here is recorded in a ledger: these are benchmark references on the packaged public data
(README "Hyperparameters"), never something a deployed site runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from client.round import SiteRound
from client.train import TensorDictDataset, resolve_device, train_plain
from common.config import load_scenario, parse_run_config
from common.factory import build_model
from common.models.params import BRANCHES, trainable_state
from simulations.inprocess import FederationResult, SiteResult

__all__ = ["pooled", "local_only", "concat_datasets", "BASELINES"]


def _site_rounds(run_config: Mapping[str, Any]) -> list[SiteRound]:
    run = parse_run_config(run_config)
    n = len(load_scenario(run.paths.scenario_file).sites)
    return [SiteRound.from_flower(run_config, {"partition-id": i, "num-partitions": n},
                                  {"server-round": run.federation.num_rounds, "federation-id": "baseline"}, "baseline")
            for i in range(n)]


def concat_datasets(datasets: list[TensorDictDataset]) -> TensorDictDataset:
    """Rows of every dataset in one; a tensor some sites lack (no notes) is zeros there, its modality masked out.

    The modality mask already says which modalities each row holds (``client/site_data.py``), so a zero feature
    block of an absent modality is never read as data by the model.
    """
    keys = sorted({k for d in datasets for k in d.tensors})
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        like = next(d.tensors[k] for d in datasets if k in d.tensors)
        out[k] = torch.cat([d.tensors[k] if k in d.tensors else torch.zeros((d.n, *like.shape[1:]), dtype=like.dtype)
                            for d in datasets])
    return TensorDictDataset(out)


def _train(site_rounds: list[SiteRound], dataset: TensorDictDataset) -> dict[str, torch.Tensor]:
    first = site_rounds[0]
    run = first.run
    model = build_model(run.model, scenario=first.scenario, seed=run.federation.seed)
    t = run.train
    train_plain(model, dataset, epochs=run.federation.num_rounds * t.local_epochs, batch_size=t.batch_size,
                optimizer=t.plain_optimizer, lr=t.plain_learning_rate, momentum=t.momentum,
                modality_dropout=t.modality_dropout, device=resolve_device(first.site.device),
                seed=run.federation.seed)
    return {k: v.detach().cpu() for k, v in trainable_state(model, branches=BRANCHES).items()}


def _result(rounds: list[SiteRound], states: list[dict[str, torch.Tensor]]) -> FederationResult:
    sites = {r.site.spec.name: SiteResult(site=r.site.spec.name, metrics=r.evaluate(state), epsilon=float("inf"),
                                          delta=float("nan"), rounds_trained=0) for r, state in zip(rounds, states)}
    return FederationResult(sites=sites, arrays={})


def pooled(run_config: Mapping[str, Any]) -> FederationResult:
    """One model trained on every site's training rows, scored on each site's test rows."""
    rounds = _site_rounds(run_config)
    state = _train(rounds, concat_datasets([r.data().train for r in rounds]))
    return _result(rounds, [state] * len(rounds))


def local_only(run_config: Mapping[str, Any]) -> FederationResult:
    """Each site's own model (its training rows alone), scored on its own test rows."""
    rounds = _site_rounds(run_config)
    return _result(rounds, [_train(rounds, r.data().train) for r in rounds])


#: baseline name -> (complete run config) -> per-site results, shaped like a federation's
BASELINES = {"pooled": pooled, "local-only": local_only}
