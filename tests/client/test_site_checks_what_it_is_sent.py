"""Issue 12: a deployed site checks what the server sends before it spends (case 36), and no error tells the server
which files exist on the site's machine (case 35). Through the real ClientApp handler, with a real site file and
the UCI heart data that ships with the repository."""

from __future__ import annotations

from pathlib import Path

import re

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message

from client.replay import state_digest
from common.config import app_defaults, load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state
from common.privacy.ledger import Ledger
from common.packing import pack_branches, unpack_branch
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


def _send(site_file: Path, *, change=None, message_config: dict | None = None, packed: bool = True,
          **run_settings) -> Message:
    """A train message as the server sends it (``packed``: one flat array per branch, server/downlink.py; else one
    array per tensor, Flower's own layout), ``change``d, through the site's real handler."""
    run_config = app_defaults() | {"num-server-rounds": 1} | run_settings
    run = parse_run_config(app_defaults())
    state = {k: v.numpy().copy() for k, v in initial_trainable_state(
        build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0)).items()}
    if packed:
        state = pack_branches(state)
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
    reply = _send(_site_file(tmp_path), change=change, packed=False)
    privacy = reply.content.config_records[PRIVACY]
    assert privacy["status"] == STATUS_FAILED and privacy["code"] == "message", (what, dict(privacy))
    assert ARRAYS not in reply.content.array_records
    assert not any(e in ("reserve", "confirm", "release") for e in _spent(tmp_path)), _spent(tmp_path)


def _nan_at_end(flat: np.ndarray) -> np.ndarray:
    out = flat.copy()
    out[-1] = np.nan
    return out


@pytest.mark.parametrize("change, what", [
    (lambda s: s | {"head": s["head"][:-1]}, "one value short"),
    (lambda s: s | {"tabular": np.concatenate([s["tabular"], s["tabular"][:1]])}, "one value too many"),
    (lambda s: s | {"head": s["head"].astype(np.float64)}, "float64"),
    (lambda s: s | {"text": s["text"].reshape(1, -1)}, "2-D"),
    (lambda s: s | {"head": _nan_at_end(s["head"])}, "NaN"),
    (lambda s: s | {"head": np.full_like(s["head"], np.inf)}, "inf"),
    (lambda s: s | {"image": np.zeros(8, dtype=np.float32)}, "a branch the model does not have"),
    (lambda s: {k: v for k, v in s.items() if k != "text"}, "a branch missing"),
    (lambda s: s | {"head.mlp.3.bias": np.zeros(2, dtype=np.float32)}, "a tensor both packed and on its own"),
])
def test_a_packed_branch_that_does_not_fit_this_sites_own_model_fails_before_anything_is_spent(tmp_path, change,
                                                                                               what):
    """The site splits the server's packed branches with its OWN model's names and shapes; a branch of the wrong
    length, dtype or dimensions, non-finite values, or branches its model does not have, fail the message with the
    registry's 'message' code, and nothing is reserved or spent."""
    reply = _send(_site_file(tmp_path), change=change)
    privacy = reply.content.config_records[PRIVACY]
    assert privacy["status"] == STATUS_FAILED and privacy["code"] == "message", (what, dict(privacy))
    assert ARRAYS not in reply.content.array_records
    assert _spent(tmp_path) == [], (what, _spent(tmp_path))


@pytest.mark.parametrize("change, says", [
    (lambda s: s | {"head": s["head"][:-1]}, r"packed 'head' branch is float32 of shape \(12674,\); this site's model "
                                             r"expects float32 of shape \(12675,\)"),
    (lambda s: s | {"head": s["head"].astype(np.float64)}, r"'head' branch is float64 of shape \(12675,\)"),
    (lambda s: s | {"text": s["text"].reshape(1, -1)}, r"'text' branch is float32 of shape \(1, 1088\)"),
    (lambda s: s | {"image": np.zeros(8, dtype=np.float32)}, r"packed 'image' branch; this site's model has no"),
    (lambda s: s | {"head": _nan_at_end(s["head"])}, r"'head.mlp.3.weight' holds NaN or inf"),
])
def test_the_sites_own_log_says_which_branch_and_the_expected_and_received_length(tmp_path, caplog, change, says):
    """The reply carries only the code; the site's log names the branch, the length expected and the one received."""
    with caplog.at_level("ERROR", logger="fedfusion.client"):
        _send(_site_file(tmp_path), change=change)
    logged = "\n".join(str(r.exc_info[1]) for r in caplog.records if r.exc_info)
    assert re.search(says, logged), logged


def test_a_packed_message_gives_the_site_exactly_the_servers_tensors_in_its_models_order():
    from client.downlink import received_state

    run = parse_run_config(app_defaults())
    model = build_model(run.model, scenario=load_scenario(run.paths.scenario_file), seed=0)
    glob = {k: v.numpy() for k, v in initial_trainable_state(model).items()}
    layout = {k: v.shape for k, v in glob.items()}
    got = received_state(pack_branches(glob), layout)
    assert list(got) == list(glob)  # the model's own parameter order (a central-mode reply keeps it)
    for k, v in glob.items():
        assert got[k].dtype == torch.float32 and tuple(got[k].shape) == v.shape
        np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)
    assert state_digest(got) == state_digest({k: torch.from_numpy(v) for k, v in glob.items()})


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
