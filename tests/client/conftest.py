"""Fixtures for one-site tests without Flower: a SiteRound over real data in a temp state folder."""

from __future__ import annotations

import pytest
import torch

from client.round import SiteRound
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.factory import build_model, initial_trainable_state
from tests.data.heart_schema import SCENARIO_SCHEMA

ONE_SITE = """
[[sites]]
name = "switzerland"
source = "mapped"
mapping = "mappings/uci-heart.toml"
select = { hospital = "switzerland" }
modalities = ["tabular", "text"]
"""


@pytest.fixture
def make_job(tmp_path):
    """``make_job(round_=1, run_id="r1", **settings) -> SiteRound`` for Switzerland (82 train rows)."""

    def make(*, round_: int, run_id: str, **settings) -> SiteRound:
        scenario = tmp_path / "one.toml"
        scenario.write_text(ONE_SITE + SCENARIO_SCHEMA)
        cfg = app_defaults() | {
            "scenario-file": str(scenario), "out-dir": str(tmp_path / "out"),
            "site-state-root": str(tmp_path / "sites"), "num-server-rounds": 2, "target-epsilon": 2.0,
            "epsilon-budget": 3.0, "batch-size": 32, "text-encoder": "tiny-bert", "federation-id": "fed-test",
        } | settings
        run = parse_run_config(cfg)
        return SiteRound(run=run, scenario=load_scenario(scenario), site=resolve_site({"partition-id": 0}, run),
                         server_round=round_, federation_id="fed-test", run_id=run_id)

    return make


def global_state(job: SiteRound) -> dict[str, torch.Tensor]:
    return initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0))


@pytest.fixture
def initial_state():
    return global_state
