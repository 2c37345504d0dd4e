"""The message inspector: every message a site sends in a real simulated federation holds nothing of its rows.

Issue 10, "Nothing leaves a site unaccounted". Two real hospitals (Cleveland with notes, VA Long Beach without)
and one site whose export breaks the data contract (a duplicated patient id, planted) run 2 rounds of train and
evaluate on Flower's simulation runtime (``fedfusion simulate``). The app submitted is a copy of this one whose
ClientApp wraps fedfusion's own handlers in a Flower mod that keeps a copy of every reply (the inspector); the
handlers are the production ones.

Every captured message is held to the contract of ``common.records``: each record key is a declared one, each
string value has a declared public shape (a site name, a status, a code and its fixed text, a statement, a hex
digest, a signature, a public key), numbers travel only under declared metric keys, arrays only under the
model's parameter names. Then, explicitly: no note text of any training row, no categorical cell of a training
row, the planted id and the broken export's name appear anywhere; no ``train-loss``; the weight is max-records.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from common.config import APP_DIR
from common.data.sources import load_site_data
from common.models.params import BRANCHES
from common.privacy.entry import NO_DP_STATEMENT, SITE_RECORD_STATEMENT
from common.records import (DECLINES, ERRORS, EVALUATION, FAILED_FIELDS, METRICS, PRIVACY, PRIVACY_FIELDS, SITE,
                            TIMING_KEYS, TRAIN_METRIC_KEYS)
from simulations.driver import SimulationRequest, simulate
from tests.integration.hospitals import hospital, scenario_head

pytestmark = pytest.mark.slow

PLANTED_ID = "88017"  # a duplicated patient id in the broken site's export: a record id that must never leave
MAX_RECORDS = {"cleveland": 250, "va_long_beach": 160, "broken": 300}
SCENARIO = (scenario_head("inspected", "test: two real hospitals and one site whose export breaks the data contract")
            + hospital("cleveland", ("tabular", "text"), MAX_RECORDS["cleveland"])
            + hospital("va_long_beach", ("tabular",), MAX_RECORDS["va_long_beach"]) + """
[[sites]]
name = "broken"
source = "mapped"
mapping = "{mapping}"
modalities = ["tabular"]
privacy = { max-records = %d }
""" % MAX_RECORDS["broken"])

INSPECTOR = '''"""Test-only ClientApp: fedfusion's handlers, wrapped in a mod that keeps a copy of every reply a site sends."""
import json
import uuid
from pathlib import Path

from flwr.clientapp import ClientApp

from client.app import evaluate, train

OUTBOX = Path({outbox!r})


def _record(rec):
    if type(rec).__name__ == "ArrayRecord":
        return {{"kind": "arrays", "keys": list(rec.keys())}}
    return {{"kind": type(rec).__name__, "items": {{k: v for k, v in rec.items()}}}}


def inspect(msg, context, call_next):
    reply = call_next(msg, context)
    seen = {{"partition": context.node_config.get("partition-id"), "type": reply.metadata.message_type}}
    if reply.has_error():
        seen["error"] = str(reply.error.reason)
    else:
        seen["records"] = {{name: _record(rec) for name, rec in reply.content.items()}}
    OUTBOX.mkdir(parents=True, exist_ok=True)
    (OUTBOX / (uuid.uuid4().hex + ".json")).write_text(json.dumps(seen, default=repr))
    return reply


app = ClientApp(mods=[inspect])
app.train()(train)
app.evaluate()(evaluate)
'''

_HEX32, _HEX64 = re.compile(r"[0-9a-f]{32}"), re.compile(r"[0-9a-f]{64}")
_REASONS = {"", NO_DP_STATEMENT, SITE_RECORD_STATEMENT, *(c.text for c in ERRORS.values())}
#: PRIVACY key -> the shape its value must have (anything else is a leak)
_SHAPES = {
    "status": lambda v: v in ("trained", "declined", "failed", "replayed"),
    "reason": lambda v: v in _REASONS or re.fullmatch(r"lifetime budget: [^']*", v) is not None,
    "code": lambda v: v == "" or v in ERRORS or v in DECLINES,
    "category": lambda v: v in {c.category for c in ERRORS.values()},
    "site": lambda v: v in MAX_RECORDS,
    "name": lambda v: v in MAX_RECORDS,  # the SITE record of an evaluate reply
    "mode": lambda v: v in ("sample", "central", "none"),
    "dataset-id": lambda v: _HEX32.fullmatch(v) is not None,
    "accountant": lambda v: v in ("prv", "rdp"),
    "noise-seed": lambda v: v in ("secret", "run-seed"),
    "ledger-head-hash": lambda v: _HEX64.fullmatch(v) is not None,
    "ledger-head-signature": lambda v: re.fullmatch(r"[A-Za-z0-9+/=]+", v) is not None,
    "site-public-key": lambda v: re.fullmatch(r"ecdsa-sha2-nistp384 [A-Za-z0-9+/=]+( fedfusion-site-\w+)?", v)
    is not None,
}
_EVAL_KEYS = re.compile(r"num-examples|loss|accuracy|balanced-accuracy|auc|positives|(bacc|auc)-(without|only)-\w+|"
                        + "|".join(TIMING_KEYS))


def _app_copy(dest: Path, outbox: Path) -> Path:
    """This Flower app, with the inspector as its ClientApp (the handlers are the production ones)."""
    for part in ("common", "client", "server"):
        shutil.copytree(APP_DIR / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(APP_DIR / "README.md", dest / "README.md")
    (dest / "inspector_app.py").write_text(INSPECTOR.format(outbox=str(outbox)))
    pyproject = (APP_DIR / "pyproject.toml").read_text()
    assert 'clientapp = "client.app:app"' in pyproject
    (dest / "pyproject.toml").write_text(pyproject.replace('clientapp = "client.app:app"',
                                                           'clientapp = "inspector_app:app"'))
    return dest


def _broken_site(folder: Path) -> Path:
    """Hungary's variant export (first records) with one patient id duplicated: a data-contract error."""
    folder.mkdir(parents=True)
    exports = APP_DIR / "data" / "uci-heart-disease" / "exports"
    lines = (exports / "hungarian-variant.csv").read_text().splitlines()[:8]
    for i in (1, 3):  # records on lines 2 and 4 get the same (planted) id
        lines[i] = ";".join([PLANTED_ID, *lines[i].split(";")[1:]])
    (folder / "broken-export.csv").write_text("\n".join(lines) + "\n")
    mapping = (APP_DIR / "data" / "mappings" / "hungary-variant.toml").read_text()
    mapping = mapping.replace('"../schemas/heart.toml"', json.dumps(str(APP_DIR / "data" / "schemas" / "heart.toml")))
    mapping = re.sub(r'(?m)^path = ".*"$', 'path = "broken-export.csv"', mapping, count=1)
    (folder / "broken.toml").write_text(mapping)
    return folder / "broken.toml"


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspector")
    outbox = tmp / "outbox"
    scenario = tmp / "inspected.toml"
    scenario.write_text(SCENARIO.replace("{mapping}", str(_broken_site(tmp / "broken"))))
    summary = simulate(SimulationRequest(
        scenario=str(scenario), out=tmp / "run", rounds=2, progress=False, app_dir=_app_copy(tmp / "app", outbox),
        check_sites=False,  # the broken site must reach Flower: its error reply is what is inspected
        overrides={"fold-evaluation": False, "hidden-dim": 16, "text-encoder": "tiny-bert", "batch-size": 64,
                   "min-available-nodes": 3}))
    messages = [json.loads(f.read_text()) for f in sorted(outbox.glob("*.json"))]
    return summary, messages


def test_every_site_sent_train_and_evaluate_replies_and_the_broken_site_failed(inspected):
    summary, messages = inspected
    by = {}
    for m in messages:
        by.setdefault((m["partition"], m["type"]), []).append(m)
    for partition in (0, 1, 2):
        assert len(by[(partition, "train")]) == 2 and len(by[(partition, "evaluate")]) == 2, sorted(by)
    broken = [m["records"][PRIVACY]["items"] for m in by[(2, "train")]]
    assert all((p["status"], p["code"]) == ("failed", "data-contract") for p in broken)
    assert summary["sites"]["cleveland"]["rounds_trained"] == 2


def test_every_record_key_and_string_is_a_declared_public_one(inspected):
    _, messages = inspected
    for m in messages:
        assert "error" not in m, m  # handlers answer with records, never a Flower error (which would carry text)
        records = m["records"]
        for name, rec in records.items():
            if rec["kind"] == "arrays":
                # a trained branch, packed (common/packing.py), or a tensor of the model: nothing else
                assert all(k in BRANCHES or (k.count(".") >= 1 and " " not in k) for k in rec["keys"]), rec["keys"]
                continue
            items = rec["items"]
            if name == PRIVACY:
                allowed = FAILED_FIELDS if items.get("status") == "failed" else PRIVACY_FIELDS
                assert set(items) <= set(allowed), set(items) - set(allowed)
            elif name == SITE:
                assert set(items) == {"name"} and items["name"] in MAX_RECORDS
            elif name == METRICS and m["type"] == "train":
                assert set(items) <= set(TRAIN_METRIC_KEYS), set(items)  # no train-loss, no row count
            elif name in (METRICS, EVALUATION):
                assert all(_EVAL_KEYS.fullmatch(k) for k in items), sorted(items)
            else:
                pytest.fail(f"undeclared record {name!r}")
            for key, value in items.items():
                if isinstance(value, str):
                    assert key in _SHAPES and _SHAPES[key](value), (key, value)


def test_no_note_cell_or_record_id_leaves_and_the_weight_is_the_public_bound(inspected):
    _, messages = inspected
    said = json.dumps(messages)
    for site in ("cleveland", "va_long_beach"):
        train, _ = load_site_data("mapped", {"mapping": "mappings/uci-heart.toml", "select": {"hospital": site}},
                                  data_dir=APP_DIR / "data", modalities=("tabular", "text"))
        for note in train.text:
            assert not note or note not in said
    for word in ("typical angina", "asymptomatic", "lv hypertrophy", "downsloping", "fixed defect", "reversable"):
        assert word not in said.lower()  # categorical cells of the training rows
    for planted in (PLANTED_ID, "broken-export.csv", "also appears on line"):
        assert planted not in said
    assert "train-loss" not in said
    for m in messages:
        if m["type"] == "train" and m["records"][PRIVACY]["items"].get("status") == "trained":
            site = m["records"][PRIVACY]["items"]["site"]
            assert m["records"][METRICS]["items"]["num-examples"] == MAX_RECORDS[site]
