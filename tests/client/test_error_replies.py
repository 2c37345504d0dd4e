"""Issue 10, finding 5: a failed reply carries a code and a category, never data.

Every malformed-input case of the data contract (the cases of ``tests/common/data/test_mapping_errors.py``, each
a real mapping and export with one thing broken) goes through the real ClientApp handler of a deployed site
(``client.app.app`` called with a Flower train Message and Context). Before, the reply carried ``str(err)``: the
file, line, column and raw cell text, which the server kept in its append-only ledger and summary.json.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, Message

from common.config import app_defaults, parse_run_config
from common.data.cleaning import load_mapped
from common.data.schema import DataContractError
from common.factory import build_model, initial_trainable_state
from common.records import ERRORS, FAILED_FIELDS, METRICS, NUM_EXAMPLES, PRIVACY, STATUS_FAILED
from tests.client.messages import send_train

ROOT = Path(__file__).resolve().parents[2]


def _contract_cases():
    spec = importlib.util.spec_from_file_location("mapping_error_cases",
                                                  ROOT / "tests" / "common" / "data" / "test_mapping_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _contract_cases()


def _site_file(tmp_path: Path, mapping: Path, *, privacy: str = "max-records = 400") -> Path:
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "cleveland"\nsource = "mapped"\nmapping = "{mapping.name}"\n'
                 f'data-dir = "{mapping.parent}"\nstate-dir = "{tmp_path / "state"}"\nmodalities = ["tabular"]\n'
                 f'[privacy]\n{privacy}\n')
    return f


def _send_train(site_file: Path) -> Message:
    """One train message through the site's real ClientApp; the reply it sends."""
    run_config = app_defaults() | {"num-server-rounds": 1}
    run = parse_run_config(run_config)
    from common.config import load_scenario

    state = initial_trainable_state(build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0))
    return send_train(site_file, run_config, ArrayRecord(state), federation_id="fed-errors")


def _everything_said(reply: Message) -> str:
    """Every text a reply carries: record names, keys and values, and an error's reason."""
    parts: list[str] = []
    if reply.has_error():
        parts.append(str(reply.error.reason))
    else:
        for name, record in reply.content.items():
            parts.append(name)
            for key, value in (record.items() if hasattr(record, "items") else []):
                parts.append(str(key))
                if not hasattr(value, "numpy"):
                    parts.append(str(value))
    return "\n".join(parts)


def _secrets(message: str, data_file: str) -> list[str]:
    """What the site's error message says that must never leave: itself, its quoted values, the file's name."""
    quoted = [q for q in re.findall(r"'([^']+)'", message) if len(q) >= 3]
    return [message, data_file, *quoted]


@pytest.mark.parametrize("case", sorted(CASES.CASES))
def test_a_data_contract_error_replies_with_a_code_and_no_data(tmp_path: Path, case: str) -> None:
    site, edits, _ = CASES.CASES[case]
    (tmp_path / "data").mkdir()
    mapping = CASES._site(tmp_path / "data", site, **edits)
    with pytest.raises(DataContractError) as caught:  # what the site's own log gets (its data engineer reads it)
        load_mapped(mapping)
    reply = _send_train(_site_file(tmp_path, mapping))
    # a normal reply, not a Flower error: the federation goes on
    assert not reply.has_error()
    privacy = dict(reply.content.config_records[PRIVACY])
    assert set(privacy) <= set(FAILED_FIELDS) and privacy["status"] == STATUS_FAILED
    assert privacy["code"] in ("data-contract", "data-unreadable", "site-config")
    assert (privacy["category"], privacy["reason"]) == (ERRORS[privacy["code"]].category, ERRORS[privacy["code"]].text)
    assert dict(reply.content.metric_records[METRICS]) == {NUM_EXAMPLES: 0.0}
    said = _everything_said(reply)
    fixed = " ".join([*FAILED_FIELDS, *(c.text for c in ERRORS.values()), *(c.category for c in ERRORS.values()),
                      PRIVACY, METRICS, NUM_EXAMPLES, STATUS_FAILED, "cleveland"])  # the registry's own words
    for secret in _secrets(str(caught.value), site[1].name):
        if secret not in fixed:
            assert secret not in said, f"the reply quotes {secret!r} from the site's error"


def test_a_healthy_deployed_site_sends_only_public_metrics_and_no_timing(tmp_path: Path) -> None:
    """A deployed site without `report-timing = true` sends no timing split (a side channel of its row count)."""
    data = ROOT / "data"
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "switzerland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "switzerland" }}\n'
                 f'data-dir = "{data}"\nstate-dir = "{tmp_path / "state"}"\nmodalities = ["tabular"]\n'
                 f'[privacy]\nmax-records = 120\n')
    reply = _send_train(f)
    metrics = dict(reply.content.metric_records[METRICS])
    assert metrics == {NUM_EXAMPLES: 120.0}, metrics  # the declared bound; no train-loss, no seconds
    assert reply.content.config_records[PRIVACY]["status"] == "trained"
