"""A budget refusal end to end: a real site trains, then declines for budget; the audit shows it and passes.

No Flower processes: ``client.round.SiteRound`` runs the site (real data, DP-SGD, ledger, signed
heads) and ``server.recorder.RunRecorder`` records its replies, as ``client/app.py`` and
``server/strategy.py`` would hand them over.
"""

from __future__ import annotations

import pytest

from client.round import SiteRound
from common.config import app_defaults, load_scenario, parse_run_config, resolve_site
from common.factory import build_model, initial_trainable_state
from common.records import STATUS_DECLINED, STATUS_TRAINED
from server.audit import audit_path
from server.recorder import RunRecorder
from server.strategy import SiteReply
from tests.data.heart_schema import SCENARIO_SCHEMA

ONE_SITE = ('[[sites]]\nname = "switzerland"\nsource = "mapped"\nmapping = "mappings/uci-heart.toml"\n'
            'select = { hospital = "switzerland" }\nmodalities = ["tabular", "text"]\nprivacy = { max-records = 100 }\n')


def _job(tmp_path, rnd: int) -> SiteRound:
    scenario = tmp_path / "one.toml"
    scenario.write_text(ONE_SITE + SCENARIO_SCHEMA)
    # one planned round at ε = 1; a lifetime budget of 1.3 leaves no room for a second
    cfg = app_defaults() | {"scenario-file": str(scenario), "out-dir": str(tmp_path / "out"),
                            "site-state-root": str(tmp_path / "sites"), "num-server-rounds": 1,
                            "target-epsilon": 1.0, "epsilon-budget": 1.3, "batch-size": 32,
                            "text-encoder": "tiny-bert", "federation-id": "fed-e2e"}
    run = parse_run_config(cfg)
    return SiteRound(run=run, scenario=load_scenario(scenario), site=resolve_site({"partition-id": 0}, run),
                     server_round=rnd, federation_id="fed-e2e", run_id="run-e2e")


def test_a_budget_refusal_shows_in_the_audit(tmp_path):
    # Prepare / Execute: round 1 trains, round 2 is refused by the site's budget check
    first = _job(tmp_path, 1)
    state = initial_trainable_state(build_model(first.run.model, scenario=first.scenario, seed=0))
    recorder = RunRecorder(out_dir=tmp_path / "out", federation_id="fed-e2e", run_id="run-e2e", run_info={})
    outcomes = []
    for rnd in (1, 2):
        out = (first if rnd == 1 else _job(tmp_path, rnd)).train(state)
        outcomes.append(out)
        n = int(out.metrics["num-examples"])
        recorder.on_train(rnd, [SiteReply("switzerland", 7, out.privacy["status"], n, out.privacy, out.metrics)])
    recorder.flush()
    assert [o.privacy["status"] for o in outcomes] == [STATUS_TRAINED, STATUS_DECLINED]

    report = audit_path(tmp_path / "out", sites_dir=tmp_path / "sites")

    # Assert
    assert report.passed, [f.message for f in report.findings]
    site = report.sites["switzerland"]
    assert site.source == "site ledger" and site.anchor_source == "server" and site.unanchored_rows == 0
    assert (site.rounds_trained, site.rounds_declined) == (1, 1)
    assert site.declined[0]["round"] == 2 and "lifetime budget" in site.declined[0]["reason"]
    assert site.epsilon_budget == 1.3 and site.target_epsilon == 1.0 and not site.ever_exceeded
    spent = outcomes[0].privacy["epsilon"]
    assert site.spent_reported == pytest.approx(spent) and outcomes[1].privacy["epsilon"] == pytest.approx(spent)
    assert site.remaining == pytest.approx(1.3 - max(spent, site.spent_pld))
    assert site.spent_pld <= spent <= site.spent_pld * 1.02  # PRV's upper band end (+0.01) vs dp-accounting PLD
    assert [r.event for r in site.rows] == ["reserve", "confirm", "decline"]
    assert {r.status for r in site.rows} == {"ok"} and site.secure_mode == "off"
