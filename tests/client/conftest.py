"""Fixtures for one-site tests without Flower: a SiteRound over real data in a temp state folder."""

from __future__ import annotations

import json

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
MAX_RECORDS = 100  # Switzerland's public bound in these tests (it holds 86 training rows)


@pytest.fixture
def make_job(tmp_path):
    """``make_job(round_=1, run_id="r1", site_privacy=None, **settings) -> SiteRound`` for Switzerland (82 train
    rows). ``site_privacy``: the site's own privacy table (its file), over ``max-records = 100``; ``settings``: the
    run config (the server's requests)."""

    def make(*, round_: int, run_id: str, site_privacy: dict | None = None, message_config: dict | None = None,
             **settings) -> SiteRound:
        scenario = tmp_path / "one.toml"
        own = {"max-records": MAX_RECORDS} | (site_privacy or {})
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in own.items())
        scenario.write_text(ONE_SITE + f"privacy = {{ {table} }}\n" + SCENARIO_SCHEMA)
        cfg = app_defaults() | {
            "scenario-file": str(scenario), "out-dir": str(tmp_path / "out"),
            "site-state-root": str(tmp_path / "sites"), "num-server-rounds": 2, "target-epsilon": 2.0,
            "epsilon-budget": 3.0, "batch-size": 32, "text-encoder": "tiny-bert", "federation-id": "fed-test",
        } | settings
        run = parse_run_config(cfg)
        return SiteRound(run=run, scenario=load_scenario(scenario), site=resolve_site({"partition-id": 0}, run),
                         server_round=round_, federation_id="fed-test", run_id=run_id, message_config=message_config)

    return make


def global_state(job: SiteRound) -> dict[str, torch.Tensor]:
    return initial_trainable_state(build_model(job.run.model, scenario=job.scenario, seed=0))


@pytest.fixture
def initial_state():
    return global_state
