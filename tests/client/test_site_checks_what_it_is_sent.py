"""Issue 12: a deployed site checks what the server sends before it spends (case 36), and no error tells the server
which files exist on the site's machine (case 35). Through the real ClientApp handler, with a real site file and
the UCI heart data that ships with the repository."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.privacy.ledger import Ledger
from common.packing import unpack_branch
from common.records import ARRAYS, EVALUATE_GLOBAL, EVALUATION, PRIVACY, STATUS_FAILED
from tests.client.messages import send_train

ROOT = Path(__file__).resolve().parents[2]


def _site_file(tmp_path: Path) -> Path:
    f = tmp_path / "site.toml"
    f.write_text(f'[site]\nname = "switzerland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
                 f'select = {{ hospital = "switzerland" }}\n'
                 f'data-dir = "{ROOT / "data"}"\nstate-dir = "{tmp_path / "state"}"\nmodalities = ["tabular"]\n'
                 f'[privacy]\nmax-records = 120\n')
    return f


def _send(site_file: Path, *, change=None, message_config: dict | None = None, **run_settings) -> Message:
    run_config = app_defaults() | {"num-server-rounds": 1} | run_settings
    run = parse_run_config(app_defaults())
    state = {k: v.numpy().copy() for k, v in initial_trainable_state(
        build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0)).items()}
    if change is not None:
        state = change(state)
    return send_train(site_file, run_config, ArrayRecord({k: Array(v) for k, v in state.items()}),
                      federation_id="fed-checks", message_config=message_config)


def _spent(tmp_path: Path) -> list[str]:
    path = tmp_path / "state" / "ledger.sqlite"
    return [e.event for e in Ledger(path).entries()] if path.exists() else []


def _first(state: dict) -> str:
    return next(k for k in state if k.startswith("head"))


@pytest.mark.parametrize("change, what", [
    (lambda s: s | {_first(s): np.full_like(s[_first(s)], np.nan)}, "NaN"),  # case 36
    (lambda s: s | {_first(s): np.full_like(s[_first(s)], np.inf)}, "inf"),
    (lambda s: s | {_first(s): s[_first(s)].astype(np.float64)}, "float64"),
    (lambda s: s | {_first(s): np.zeros(3, dtype=np.float32)}, "shape"),
    (lambda s: {k: v for k, v in s.items() if k != _first(s)}, "missing tensor"),
])
def test_case36_unusable_global_weights_fail_before_anything_is_spent(tmp_path, change, what):
    reply = _send(_site_file(tmp_path), change=change)
    privacy = reply.content.config_records[PRIVACY]
    assert privacy["status"] == STATUS_FAILED and privacy["code"] == "message", (what, dict(privacy))
    assert ARRAYS not in reply.content.array_records
    assert not any(e in ("reserve", "confirm", "release") for e in _spent(tmp_path)), _spent(tmp_path)


def test_case35_a_scenario_path_from_the_server_is_never_opened(tmp_path):
    """/etc/passwd exists, the other path does not: the site answers both the same way, without opening either."""
    site = _site_file(tmp_path)
    replies = [_send(site, **{"scenario-file": p}) for p in ("/etc/passwd", str(tmp_path / "no-such-file.toml"))]
    said = [dict(r.content.config_records[PRIVACY]) for r in replies]
    assert said[0] == said[1]
    assert said[0]["status"] == STATUS_FAILED and said[0]["code"] == "run-config"
    assert _spent(tmp_path) == []


def test_case35_a_valid_scenario_the_server_names_is_not_read_either(tmp_path):
    """A copy of the very scenario the site accepts, at a path the server chose: still refused (before, the site
    read and trained on whatever scenario file the run named)."""
    copy = tmp_path / "server-chosen.toml"
    copy.write_text(parse_run_config(app_defaults()).paths.scenario_file.read_text())
    reply = _send(_site_file(tmp_path), **{"scenario-file": str(copy)})
    assert dict(reply.content.config_records[PRIVACY])["code"] == "run-config"
    assert _spent(tmp_path) == []


def test_a_healthy_site_still_trains(tmp_path):
    reply = _send(_site_file(tmp_path))
    assert reply.content.config_records[PRIVACY]["status"] == "trained"
    assert _spent(tmp_path)[:2] == ["reserve", "confirm"]


def _default_reply(tmp_path: Path) -> tuple[Message, dict]:
    """A real train reply of a deployed site holding both modalities of the default model (tabular + text), with
    the folded evaluation of the received global model (and its missing-modality ablations); and the model's
    trainable tensors."""
    site_file = _site_file(tmp_path)
    site_file.write_text(site_file.read_text().replace('modalities = ["tabular"]', 'modalities = ["tabular", "text"]'))
    run = parse_run_config(app_defaults())
    model = build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0)
    trainable = {n: p.detach().numpy() for n, p in model.named_parameters() if p.requires_grad}
    reply = _send(site_file, message_config={EVALUATE_GLOBAL: True})
    assert reply.content.config_records[PRIVACY]["status"] == "trained"
    assert EVALUATION in reply.content.metric_records
    return reply, trainable


def test_a_reply_carries_exactly_the_trainable_tensors_of_its_branches_and_never_the_frozen_encoder(tmp_path):
    """Bytes per site (issue 15): the frozen MiniLM (22.7 M parameters) is never sent; the reply's arrays are the
    trainable tensors of the branches the site holds (tabular, text projection, head), float32, nothing else: one
    flat array per branch (common/packing.py), which the global model's names and shapes split exactly."""
    from common.models.params import branch_of

    reply, trainable = _default_reply(tmp_path)

    record = reply.content.array_records[ARRAYS]
    assert list(record) == ["tabular", "text", "head"]
    assert all(a.dtype == "float32" and len(a.shape) == 1 for a in record.values())
    sent = {k: v for b, a in record.items() for k, v in unpack_branch(b, a.numpy(), trainable).items()}
    expected = {n for n in trainable if branch_of(n) in ("tabular", "text", "head")}
    assert set(sent) == expected and any(branch_of(n) == "text" for n in sent)
    assert all(sent[n].dtype == np.float32 and sent[n].shape == trainable[n].shape for n in sent)
    assert sum(v.size for v in sent.values()) == sum(trainable[n].size for n in expected) < 100_000
    assert not any("minilm" in n.lower() or "embeddings" in n for n in sent)


def test_a_default_model_reply_is_at_most_1_05_times_its_trainable_bytes(tmp_path):
    """Issue 15's goal, computed on the bytes Flower ships for a real reply (message, records, arrays, chunks):
    names, shapes, metrics and the privacy record with its signed ledger head add at most 5 % to the update."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    reply, trainable = _default_reply(tmp_path)

    wire = sum(len(obj.deflate()) for obj in get_all_nested_objects(reply).values())
    tensor_bytes = sum(v.nbytes for v in trainable.values())
    assert tensor_bytes == 75_660  # 18,915 float32: every trainable tensor of the default model is sent
    assert wire <= 1.05 * tensor_bytes, (wire, wire / tensor_bytes)
