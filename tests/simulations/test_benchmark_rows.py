"""The parts the privacy-utility benchmarks stand on: fresh site state per run, pooled rows, the row registry."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from client.train import TensorDictDataset
from common.privacy.ledger_guard import HEAD_MARK_FILE, history_evidence
from simulations.baselines import BASELINES, concat_datasets
from simulations.inprocess import fresh_ledgers

REPO = Path(__file__).resolve().parents[2]


def _utility():
    spec = importlib.util.spec_from_file_location("fedfusion_utility_t", REPO / "benchmarks" / "utility.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fresh_ledgers_leaves_no_evidence_of_an_earlier_run_but_keeps_the_caches(tmp_path):
    site = tmp_path / "cleveland"
    (site / "replay").mkdir(parents=True)
    (site / "cache").mkdir()
    for name in ("ledger.sqlite", "ledger.sqlite-wal", HEAD_MARK_FILE, "replay/r1.safetensors", "cache/text.st"):
        (site / name).write_bytes(b"x")
    assert history_evidence(site)  # the site's guard would refuse a run without the ledger
    fresh_ledgers(tmp_path)
    assert history_evidence(site) == []
    assert sorted(p.name for p in site.rglob("*")) == ["cache", "text.st"]


def test_pooled_rows_fill_an_absent_modality_with_zeros_and_keep_its_mask():
    a = TensorDictDataset({"tabular": torch.ones((2, 3)), "text": torch.full((2, 4), 5.0),
                           "modality_mask": torch.ones((2, 2)), "label": torch.tensor([0, 1])})
    b = TensorDictDataset({"tabular": torch.full((1, 3), 2.0), "modality_mask": torch.tensor([[1.0, 0.0]]),
                           "label": torch.tensor([1])})
    both = concat_datasets([a, b])
    assert both.n == 3
    assert torch.equal(both.tensors["text"], torch.cat([torch.full((2, 4), 5.0), torch.zeros((1, 4))]))
    assert torch.equal(both.tensors["modality_mask"], torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0]]))
    assert torch.equal(both.tensors["label"], torch.tensor([0, 1, 1]))


def test_the_row_registry_orders_families_and_refuses_duplicates():
    u = _utility()
    names = [r.name for r in u.rows([1.0, 4.0])]
    assert names == ["pooled, no DP", "local-only, no DP", "fedavg, no DP", "fedyogi, no DP", "fedavg, ε = 1",
                     "fedavg, ε = 4"]
    assert [r.name for r in u.rows([2.0], ["dp"])] == ["fedavg, ε = 2"]
    by_name = {r.name: r for r in u.rows([1.0])}
    assert by_name["pooled, no DP"].train is BASELINES["pooled"]
    assert by_name["fedavg, ε = 1"].epsilon == 1.0 and math.isinf(by_name["fedavg, no DP"].epsilon)

    @u.register_rows("extra")
    def extra(epsilons):
        return [u.Row(f"text alone, ε = {e:g}", {}, {"fusion": "late"}, e) for e in epsilons]

    assert [r.name for r in u.rows([4.0])][-1] == "text alone, ε = 4"
    with pytest.raises(ValueError, match="already registered"):
        u.register_rows("extra")(extra)
    with pytest.raises(ValueError, match="unknown row families"):
        u.rows([1.0], ["nope"])
    u.register_rows("clash")(lambda eps: [u.Row("fedavg, no DP", {}, {}, math.inf)])
    with pytest.raises(ValueError, match="duplicate row names"):
        u.rows([1.0])
