"""``missing-modality-evaluation = false`` (scale runs) drops only the extra evaluations with a modality hidden.

A site evaluates the global model as it is and, by default, with each held modality removed and alone (the
robustness metrics of the report). Turning those off must change nothing else: the fused metrics, the trained update
(bit for bit, with the run-seeded noise) and the ledger rows are those of the default run. Data: the real UCI
Switzerland site with its constructed notes (tests/client/conftest.py).
"""

from __future__ import annotations

import torch

from common.privacy.ledger import Ledger

# run-seeded noise: the site's own table allows it and the run asks for it (tests/client/test_dp_random.py)
LEAN = {"batch-size": 100, "hidden-dim": 16, "num-server-rounds": 1, "noise-seed": "run-seed",
        "site_privacy": {"noise-seed": "run-seed"}}
ABLATIONS = {f"{kind}-{tag}-{m}" for kind in ("bacc", "auc") for tag in ("without", "only")
             for m in ("tabular", "text")}


def _rows(job) -> list[tuple]:
    return [(e.round, e.event, e.noise_multiplier, e.sample_rate, e.steps, e.epsilon, e.delta)
            for e in Ledger(job.site.state_dir / "ledger.sqlite").entries(site=job.site.spec.name)]


def test_off_drops_the_ablation_metrics_and_keeps_every_other_value(make_job, initial_state, tmp_path):
    on = make_job(round_=1, run_id="r1", **LEAN, **{"site-state-root": str(tmp_path / "on")})
    off = make_job(round_=1, run_id="r1", **LEAN, **{"site-state-root": str(tmp_path / "off"),
                                                     "missing-modality-evaluation": False})
    assert on.run.train.missing_modality_evaluation and not off.run.train.missing_modality_evaluation
    state = initial_state(on)
    full, lean = on.evaluate(state), off.evaluate(state)
    assert ABLATIONS <= set(full) and not ABLATIONS & set(lean)
    assert {k: v for k, v in full.items() if k not in ABLATIONS} == lean  # the fused metrics, exactly

    a, b = on.train(state), off.train(state)
    assert a.privacy["status"] == b.privacy["status"] == "trained"
    assert a.arrays.keys() == b.arrays.keys()
    assert all(torch.equal(a.arrays[k], b.arrays[k]) for k in a.arrays)  # the update, bit for bit
    assert _rows(on) == _rows(off) and [r[:2] for r in _rows(on)] == [(1, "reserve"), (1, "confirm")]
    assert a.privacy["epsilon"] == b.privacy["epsilon"]
