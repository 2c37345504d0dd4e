"""The privacy record an honest site sends after ``rnd`` DP rounds (CONSTRUCTED for server-side tests).

A real signed ledger head and the ε the accountants give for the site's mechanism, so that the server's reply
checks (``server/replies.py``) accept it; tests alter it to play a hostile site.
"""

from __future__ import annotations

import functools

from common.privacy.accountant import epsilon_from_history, plan_steps
from common.privacy.signing import public_key_line, sign_head

SIGMA, DELTA = 1.1, 1e-5


@functools.cache
def _epsilon(history: tuple, accountant: str) -> float:
    return epsilon_from_history(list(history), delta=DELTA, accountant=accountant)


def honest_privacy(name: str, max_records: int, key, rnd: int, *, batch_size: int, local_epochs: int) -> dict:
    """The PRIVACY record of site ``name`` (registered with ``max_records``) after ``rnd`` trained rounds."""
    plan = plan_steps(max_records=max_records, batch_size=batch_size, epochs=local_epochs)
    history = [(SIGMA, plan.sample_rate, plan.steps)] * rnd
    head_hash = f"{rnd:064x}"
    return {
        "status": "trained", "reason": "", "code": "", "site": name, "mode": "sample", "dataset-id": "d",
        "max-records": max_records, "accountant": "prv", "delta": DELTA,
        "epsilon": _epsilon(tuple(history), "prv"), "epsilon-rdp": _epsilon(tuple(history), "rdp"),
        "target-epsilon": 5.0, "epsilon-budget": 10.0, "noise-multiplier": SIGMA, "sample-rate": plan.sample_rate,
        "steps": plan.steps, "total-steps": plan.steps * rnd, "max-grad-norm": 1.0, "rounds-trained": rnd,
        "secure-mode": False, "noise-seed": "secret", "ledger-head-seq": 2 * rnd, "ledger-head-hash": head_hash,
        "ledger-head-signature": sign_head(key, kind="site-ledger", site=name, seq=2 * rnd, head_hash=head_hash),
        "site-public-key": public_key_line(key)}
