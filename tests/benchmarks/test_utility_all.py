"""Issue 14's one command (benchmarks/utility_all.py): its rows, the missing-modality masks and the tables' arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from tests.benchmarks.scripts import load_script as _load


def test_every_row_of_the_issue_is_a_job_once():
    every = _load("utility_all").jobs(["flamby", "hospitals", "alone", "missing", "image"], [0.5, 1, 2, 4, 8])
    names = [(j.part, j.name) for j in every]
    assert len(set(names)) == len(names)
    by_part = {p: [n for q, n in names if q == p] for p in ("flamby", "hospitals", "alone", "missing", "image")}
    assert {"pooled", "local-only", "fedavg", "fedyogi", "dp fedavg, ε = 1, δ = 1e-3"} <= set(by_part["flamby"])
    # the DP sites under the server optimiser chosen on the public proxy (benchmarks/server_opt_proxy.py)
    assert {n for n in by_part["flamby"] if "proxy" in n} == {"dp fedadam (proxy η), ε = 1, δ = 1e-3",
                                                               "dp fedadam (proxy η), ε = 8, δ = 1e-3"}
    assert {"pooled, no DP", "local-only, no DP", "fedavg, no DP", "fedyogi, no DP", "fedavg, ε = 0.5",
            "fedavg, ε = 8"} <= set(by_part["hospitals"])
    assert {"tabular alone, no DP", "tabular alone, ε = 4"} <= set(by_part["alone"])
    assert any("modality-dropout" in n for n in by_part["missing"])
    assert "multimodal, ε = 4" in by_part["image"]
    assert [j.part for j in _load("utility_all").jobs(["image", "alone"], [4])][::3] == ["image", "alone"]
    with pytest.raises(ValueError, match="unknown parts.*'nope'"):
        _load("utility_all").jobs(["nope"], [4])


def test_missing_masks_clear_the_modality_of_nested_eligible_rows():
    masks = _load("missing_modality").missing_masks
    mask = torch.tensor([[1, 1]] * 8 + [[1, 0]] * 2 + [[0, 1]] * 2, dtype=torch.float32)  # 8 eligible for column 1
    cleared = {p: set(torch.nonzero(masks(mask, 1, p, seed=3)[:, 1] == 0).flatten().tolist()) - {8, 9}
               for p in (0.0, 0.25, 0.5, 1.0)}
    assert [len(cleared[p]) for p in (0.0, 0.25, 0.5, 1.0)] == [0, 2, 4, 8]
    assert cleared[0.25] <= cleared[0.5] <= cleared[1.0]  # nested: the rows missing at 25 % miss at 50 % too
    out = masks(mask, 1, 1.0, seed=3)
    assert torch.equal(out[10:], mask[10:])  # a row holding only that modality keeps it (never left empty)
    assert torch.equal(out[:, 0], mask[:, 0])  # the other modality is untouched
    with pytest.raises(ValueError, match="fraction"):
        masks(mask, 1, 1.5, seed=0)


def test_site_mean_weights_by_test_rows_and_skips_missing_values():
    t = _load("utility_tables")
    run = {"sites": {"a": {"accuracy": 0.5, "num-examples": 30.0}, "b": {"accuracy": 0.9, "num-examples": 10.0},
                     "c": {"accuracy": math.nan, "num-examples": 50.0}, "d": {"num-examples": 5.0}}}
    assert t.site_mean(run, "accuracy") == pytest.approx((0.5 * 30 + 0.9 * 10) / 40)
    assert t.site_mean(run, "accuracy", ("b",)) == pytest.approx(0.9)
    assert math.isnan(t.site_mean(run, "accuracy", ("c", "d")))
    assert t.mean_sd([0.5, 0.7]) == "0.600 ± 0.141" and t.mean_sd([math.nan]) == "–"


def test_the_fedmultimodal_row_states_its_relative_drop():
    row = _load("utility_tables")._fedmultimodal_row()
    assert "0.699" in row and "0.666" in row and "0.582" in row and "16.7 %" in row


def test_merged_results_keep_each_row_and_seed_once_in_seed_order(tmp_path):
    import json

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"seeds": [0, 1], "complete": True, "seconds": 5.0,
                             "rows": {"hospitals": {"r": [{"seed": 1, "v": "a1"}, {"seed": 0, "v": "a0"}]}}}))
    b.write_text(json.dumps({"seeds": [0, 2], "complete": False, "seconds": 9.0,
                             "rows": {"hospitals": {"r": [{"seed": 0, "v": "b0"}, {"seed": 2, "v": "b2"}]},
                                      "image": {"i": [{"seed": 0, "v": "i0"}]}}}))
    merged = _load("utility_all").merge_results([a, b], tmp_path / "m.json")
    assert [r["v"] for r in merged["rows"]["hospitals"]["r"]] == ["a0", "a1", "b2"]  # first file wins seed 0
    assert merged["rows"]["image"]["i"][0]["v"] == "i0"
    assert merged["seeds"] == [0, 1, 2] and merged["complete"] is False
    assert json.loads((tmp_path / "m.json").read_text()) == merged
