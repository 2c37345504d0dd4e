"""Per-modality clipping budgets: each trained branch gets C/sqrt(G), shared by its tensors by size; total C."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from common.config.settings import CLIPPINGS as SETTING_CHOICES
from common.models.clipping import CLIPPINGS, branch_budgets, tensor_budgets


def _named(shapes: dict[str, tuple[int, ...]]) -> list[tuple[str, nn.Parameter]]:
    return [(n, nn.Parameter(torch.zeros(s))) for n, s in shapes.items()]


def test_exact_budgets_of_a_small_model() -> None:
    named = _named({"encoders.tabular.net.0.weight": (3, 4), "encoders.tabular.net.0.bias": (4,),
                    "projections.text.0.weight": (2, 8), "head.mlp.0.weight": (5, 5)})
    budgets = tensor_budgets(named, 3.0)
    c_g = 3.0 / math.sqrt(3)  # three branches: tabular, text, head
    assert budgets == pytest.approx([c_g * math.sqrt(12 / 16), c_g * math.sqrt(4 / 16), c_g, c_g])


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.tuples(st.sampled_from(["tabular", "text", "image", "head"]), st.integers(1, 50)),
                      min_size=1, max_size=12),
       clip=st.floats(1e-3, 1e3))
def test_budgets_add_up_to_c_and_split_equally_among_branches(sizes: list[tuple[str, int]], clip: float) -> None:
    named = [((f"projections.{b}.{i}.weight" if b != "head" else f"head.{i}.weight"), nn.Parameter(torch.zeros(d)))
             for i, (b, d) in enumerate(sizes)]
    budgets = tensor_budgets(named, clip)
    assert math.sqrt(sum(c * c for c in budgets)) == pytest.approx(clip, rel=1e-9)  # Opacus' noise: σ C, unchanged
    branches = {b for b, _ in sizes}
    for b in branches:
        share = sum(c * c for (bb, _), c in zip(sizes, budgets) if bb == b)
        assert share == pytest.approx(clip * clip / len(branches), rel=1e-9)


def test_bad_inputs_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="at least one trainable"):
        branch_budgets([], 1.0)
    with pytest.raises(ValueError, match="finite number > 0"):
        branch_budgets(["head"], 0.0)


def test_the_run_setting_offers_exactly_the_registered_clippings() -> None:
    assert set(SETTING_CHOICES) == set(CLIPPINGS)
    assert CLIPPINGS["per-modality"].required_mode == "hooks"  # Opacus 1.6: per_layer has no ghost optimizer
