"""Issue 12 end to end: one malicious site in a real simulated federation (``fedfusion simulate``, Flower's runtime).

Three real hospitals (Cleveland and Hungary with notes, VA Long Beach without) train for 2 rounds. The app
submitted is a copy of this one whose ClientApp wraps fedfusion's own handlers in a Flower mod (CONSTRUCTED
attack code, test only) that turns VA Long Beach's train reply into the probe's attack: its update (new - global)
times 1e6, and ``num-examples = 1e12``. The handlers, the ServerApp and the strategy are the production ones.

The run must complete every round; the server's ledger must name the attacker as failed (rejected by the server)
in every round while the two honest sites trained; the global model must stay what the honest sites make it
(finite, of the initial model's scale: before, the attacker's values became the model). The accuracy cost of
robust aggregation and what it saves is measured in BENCHMARKS.md ("Robust aggregation").
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.config import APP_DIR
from common.privacy.ledger import Ledger
from simulations.driver import SimulationRequest, simulate
from tests.integration.hospitals import hospital, scenario_head

pytestmark = pytest.mark.slow

ROUNDS = 2
SCENARIO = (scenario_head("one-attacker", "test: three real hospitals; VA Long Beach's replies are replaced by an "
                                          "attack (constructed)")
            + hospital("cleveland", ("tabular", "text"), 250) + hospital("hungary", ("tabular", "text"), 250)
            + hospital("va_long_beach", ("tabular",), 160))

ATTACKER_APP = '''"""Test-only ClientApp (CONSTRUCTED attack): fedfusion's handlers; partition 2's train replies are poisoned."""
import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.clientapp import ClientApp

from client.app import evaluate, train


def poison(msg, context, call_next):
    reply = call_next(msg, context)
    if (context.node_config.get("partition-id") != 2 or msg.metadata.message_type != "train"
            or reply.has_error() or "arrays" not in reply.content.array_records):
        return reply
    sent, got = msg.content.array_records["arrays"], reply.content.array_records["arrays"]
    reply.content.array_records["arrays"] = ArrayRecord({
        k: Array((sent[k].numpy() + np.float32(1e6) * (v.numpy() - sent[k].numpy())).astype(np.float32))
        for k, v in got.items()})
    reply.content.metric_records["metrics"]["num-examples"] = 1e12
    return reply


app = ClientApp(mods=[poison])
app.train()(train)
app.evaluate()(evaluate)
'''


def _app_copy(dest: Path) -> Path:
    for part in ("common", "client", "server"):
        shutil.copytree(APP_DIR / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(APP_DIR / "README.md", dest / "README.md")
    (dest / "attacker_app.py").write_text(ATTACKER_APP)
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (dest / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                           'clientapp = "attacker_app:app"'))
    return dest


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacked")
    scenario = tmp / "attacked.toml"
    scenario.write_text(SCENARIO)
    summary = simulate(SimulationRequest(
        scenario=str(scenario), out=tmp / "run", rounds=ROUNDS, progress=False, app_dir=_app_copy(tmp / "app"),
        check_sites=False, overrides={"hidden-dim": 16, "text-encoder": "tiny-bert", "batch-size": 64,
                                      "min-available-nodes": 3, "min-train-nodes": 3}))
    return summary, tmp / "run"


def test_the_run_completes_every_round_and_the_ledger_names_the_attacker_each_round(attacked):
    summary, out = attacked
    written = json.loads((out / "summary.json").read_text())
    assert written["completed"] is True
    rows = [(e.round, e.site, e.event, e.reason) for e in Ledger(out / "ledger.sqlite").entries()]
    for rnd in range(1, ROUNDS + 1):
        this = {site: (event, reason) for r, site, event, reason in rows if r == rnd}
        assert set(this) == {"cleveland", "hungary", "va_long_beach"}, rows
        assert this["cleveland"][0] == this["hungary"][0] == "trained"
        event, reason = this["va_long_beach"]
        assert event == "failed" and reason.startswith("rejected by the server: num-examples is 1000000000000.0")
    assert written["sites"]["va_long_beach"]["rounds_failed"] == ROUNDS


def test_the_global_model_stays_what_the_honest_sites_make_it(attacked):
    from safetensors.numpy import load_file

    _, out = attacked
    model = load_file(str(out / "model.safetensors"))
    largest = max(float(np.max(np.abs(v))) for v in model.values())
    assert np.isfinite(largest) and largest < 50.0, largest  # the attack alone would put values near 1e5 or more
