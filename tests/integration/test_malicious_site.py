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
    # the message and the reply both carry whole branches packed in the same order (common/packing.py)
    sent = {k: a.numpy() for k, a in msg.content.array_records["arrays"].items()}
    got = {k: a.numpy() for k, a in reply.content.array_records["arrays"].items()}
    poisoned = {k: (sent[k] + np.float32(1e6) * (v - sent[k])).astype(np.float32) for k, v in got.items()}
    reply.content.array_records["arrays"] = ArrayRecord({k: Array(v) for k, v in poisoned.items()})
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


# ------------------------------------------------------------------------------- the benign comparison, in process
# The issue: the attacked federation's global model "stays within 1% of the benign run's accuracy". When the server
# fails every reply of the attacker, the attacked run must be exactly the federation without that site: this is
# checked bit for bit, with every site's DP noise derived from the run seed (noise-seed = "run-seed" in the sites'
# own tables of this test's scenario and in the run's request: simulation only), in one process with the
# production ClientApp handler and ModalityFedAvg (benchmarks/robust_aggregation.py run_once): the attacked run
# (Hungary's update x 1e6 and num-examples = 1e12, CONSTRUCTED) and the run in which Hungary never replies. How far
# that is from the benign run (Hungary honest) is the value of Hungary's data, measured in BENCHMARKS.md ("Robust
# aggregation", `--compare`: 8 rounds, 5 seeds); a 2-round test federation would still be at the constant predictor
# (0.544 for benign and attacked alike), so an accuracy assertion here could not fail.
COMPARE_ROUNDS = 2


def _bench():
    import importlib.util

    path = APP_DIR / "benchmarks" / "robust_aggregation.py"
    spec = importlib.util.spec_from_file_location("robust_aggregation_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def attacked_and_without(tmp_path_factory):
    from common.config import write_with_site_privacy

    tmp = tmp_path_factory.mktemp("compare")
    plain = tmp / "plain.toml"
    sites = (("cleveland", 250), ("hungary", 250), ("switzerland", 120), ("va_long_beach", 160))
    plain.write_text(scenario_head("attacked-vs-without", "test: four real hospitals, tabular only")
                     + "".join(hospital(h, ("tabular",), m) for h, m in sites))
    scenario = write_with_site_privacy(plain, tmp / "run-seed.toml", {"noise-seed": "run-seed"})
    bench = _bench()
    bench.TaskIdentity.task_id, bench.TaskIdentity.run_id, bench.TaskIdentity.node_id = 1, 1, 1
    return {attack: bench.run_once(aggregator="weighted-mean", attack=attack, seed=0, rounds=COMPARE_ROUNDS,
                                   work=tmp / "work", scenario=scenario, with_state=True,
                                   overrides=bench.RUN_SEED_NOISE | {"accountant": "rdp"})  # RDP: cheaper calibration
            for attack in ("both", "absent")}


def test_the_attacked_run_is_bit_for_bit_the_run_without_the_attacker(attacked_and_without):
    attacked, without = attacked_and_without["both"], attacked_and_without["absent"]
    assert attacked["arrays"].keys() == without["arrays"].keys()
    for name, value in attacked["arrays"].items():
        np.testing.assert_array_equal(value, without["arrays"][name], err_msg=name)
    assert attacked["accuracy"] == without["accuracy"]
    for rnd in range(1, COMPARE_ROUNDS + 1):  # the server's ledger names the attacker in every round
        rows = {site: (event, reason) for site, r, event, reason in attacked["ledger"] if r == rnd}
        assert rows["hungary"][0] == "failed" and rows["hungary"][1].startswith("rejected by the server"), rows
        assert {rows[s][0] for s in ("cleveland", "switzerland", "va_long_beach")} == {"trained"}
        assert {site: event for site, r, event, _ in without["ledger"] if r == rnd}["hungary"] == "no-reply"
