"""Missing modality at test time: the final global model scored as 0-50 % of each site's test rows lose a modality.

Used by ``benchmarks/utility_all.py`` (issue 14's one command): every hospitals federation row is trained once by
``simulations.inprocess.run_federation`` and then, with :func:`with_missing_curve`, its final global model is scored
again at every site:

* ``acc-missing-<m>@<p>`` / ``bacc-missing-<m>@<p>``: a fraction ``p`` of the site's test rows that hold modality
  ``m`` (and at least one other) lose ``m`` (their mask bit is cleared, as a row that never had it); the rest keep
  everything. The rows that lose it are the first ``round(p n)`` of a random permutation, so the rows missing at
  10 % also miss at 20 % (nested: the curve is not jagged by the draw). Averaged over :data:`DRAWS` permutations
  from a fixed public seed (the test rows are fixed; only which ones lose the modality is drawn).
* ``acc-only-<m>``: accuracy of the fused model with every other modality hidden (the site's own evaluation
  already reports balanced accuracy and AUC of that, ``bacc-only-<m>`` / ``auc-only-<m>``).

The training side is unchanged: ``modality-dropout`` (a run setting, ``client/train.py``) hides a present modality
of a training sample with that probability; the curve compares models trained with and without it.
Nothing here touches a ledger: it is evaluation of a model that is public after the run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from client.round import SiteRound
from client.train import MODALITY_MASK, TensorDictDataset, evaluate, resolve_device
from common.config import load_scenario, parse_run_config
from simulations.inprocess import FederationResult

__all__ = ["FRACTIONS", "DRAWS", "missing_masks", "score_missing", "with_missing_curve"]

#: fractions of test rows that lose the modality (FedMultimodal's curve runs 0-50 %)
FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DRAWS = 5  # permutations averaged per fraction


def missing_masks(mask: torch.Tensor, column: int, fraction: float, *, seed: int) -> torch.Tensor:
    """``mask`` with column ``column`` cleared for the first ``round(fraction n)`` eligible rows of a permutation.

    Eligible: rows that hold the modality and at least one other one (a row is never left with no modality).
    The permutation depends on ``seed`` only, so the rows cleared at a smaller fraction are cleared at every
    larger one.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    eligible = torch.nonzero((mask[:, column] > 0) & ((mask > 0).sum(dim=1) > 1)).flatten()
    order = eligible[torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))]
    out = mask.clone()
    out[order[: int(round(fraction * len(eligible)))], column] = 0
    return out


def score_missing(site: SiteRound, state: Mapping[str, torch.Tensor], *, fractions=FRACTIONS,
                  draws: int = DRAWS) -> dict[str, float]:
    """The site's missing-modality metrics (module docstring) for the global model ``state``."""
    data = site.data()
    if len(data.modalities) < 2:
        return {}
    model = site.model(state, data)
    device = resolve_device(site.site.device)
    mods = site.scenario.modalities
    test = data.test
    out: dict[str, float] = {}
    for m in data.modalities:
        j = mods.index(m)
        only = evaluate(model, test, device=device, drop_modalities=tuple(i for i, o in enumerate(mods) if o != m))
        out[f"acc-only-{m}"] = only.accuracy
        for p in fractions:
            accs, baccs = [], []
            for d in range(draws if p > 0 else 1):
                masked = TensorDictDataset({**test.tensors,
                                            MODALITY_MASK: missing_masks(test.tensors[MODALITY_MASK], j, p,
                                                                         seed=1000 * d + j)})
                r = evaluate(model, masked, device=device)
                accs.append(r.accuracy)
                baccs.append(r.balanced_accuracy)
            out[f"acc-missing-{m}@{p:g}"] = float(np.mean(accs))
            out[f"bacc-missing-{m}@{p:g}"] = float(np.mean(baccs))
    return out


def with_missing_curve(train: Callable[[Mapping[str, Any]], FederationResult]
                       ) -> Callable[[Mapping[str, Any]], FederationResult]:
    """``train`` (e.g. ``run_federation``), whose per-site metrics also carry :func:`score_missing`'s."""
    def run(run_config: Mapping[str, Any]) -> FederationResult:
        result = train(run_config)
        if not result.arrays:  # baselines keep no global model (pooled / local-only): no curve
            return result
        state = {k: torch.from_numpy(np.array(v)) for k, v in result.arrays.items()}
        n = len(load_scenario(parse_run_config(run_config).paths.scenario_file).sites)
        sites = dict(result.sites)
        for i in range(n):
            job = SiteRound.from_flower(run_config, {"partition-id": i, "num-partitions": n},
                                        {"server-round": 0, "federation-id": "missing-curve"}, "missing-curve")
            name = job.site.spec.name
            sites[name] = replace(sites[name], metrics={**sites[name].metrics, **score_missing(job, state)})
        return replace(result, sites=sites)
    return run
