"""Issue 12, case 19: 50 copies of one record under new ids must not pass for 50 people.

DP's unit is the record = one person. The site compares its training records by content (every mapped feature but
the id; notes and images from its own files by content) and refuses to train on copies unless its OWN privacy file
says they are different people (``duplicate-records = "allow"``); its release rows then state the largest number
of copies (group privacy). The data is the breast-cancer clinic "north" (real WDBC values; layout CONSTRUCTED), with
one real record copied 50 times under new ids by this test (CONSTRUCTED).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client.privacy import SitePrivacy
from client.site_check import check_site_data
from client.site_data import load_site
from common.config import ConfigError, app_defaults, load_scenario, parse_run_config, resolve_site
from common.data.schema import DataContractError
from common.privacy.entry import statement_copies, statement_mode
from tests.data.north_copies import COPY_IDS, copy_example


def _scenario(tmp_path: Path, *, copies: bool, privacy: str = "") -> Path:
    copy_example(tmp_path / "data", copies=copies)
    path = tmp_path / "north.toml"
    path.write_text(f"""[scenario]
name = "north-only"
schema = "data/schema.toml"
data-dir = "data"

[[sites]]
name = "north"
source = "mapped"
mapping = "north.toml"
modalities = ["tabular"]
privacy = {{ max-records = 300{privacy} }}
""")
    return path


def _site(scenario: Path, tmp_path: Path):
    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario), "site-state-root": str(tmp_path / "st")})
    return resolve_site({"partition-id": 0}, run), load_scenario(scenario)


def _load(scenario: Path, tmp_path: Path):
    site, scen = _site(scenario, tmp_path)
    return load_site(site, model_modalities=scen.modalities, text_encoder="minilm-frozen")


def test_the_shipped_clinic_has_no_copies_and_trains_as_before(tmp_path):
    assert _load(_scenario(tmp_path, copies=False), tmp_path).max_copies == 1


def test_fifty_copies_under_new_ids_are_refused_naming_the_file_the_ids_and_what_to_do(tmp_path):
    with pytest.raises(DataContractError) as err:
        _load(_scenario(tmp_path, copies=True), tmp_path)
    text = str(err.value)
    assert "north.csv" in text and "north.toml" in text  # the file and the mapping
    assert "are copies of one another" in text and "duplicate-records = \"allow\"" in text
    assert "remove the copies" in text
    assert any(i in text for i in COPY_IDS)  # the copies are named by id (in the site's own log only)
    from client.errors import failure_code

    assert failure_code(err.value).code == "data-contract"  # the reply carries the code, never the ids


def test_the_site_check_and_simulate_preflight_report_the_copies(tmp_path):
    site, scen = _site(_scenario(tmp_path, copies=True), tmp_path)
    report = check_site_data(site, fed=scen, where="north", privacy_where="north privacy")
    assert any("are copies of one another" in e for e in report.errors), report.errors


def test_the_sites_own_file_may_allow_them_and_every_release_row_states_the_largest_multiplicity(tmp_path):
    from common.data.sources import load_site_data

    scenario = _scenario(tmp_path, copies=True, privacy=', duplicate-records = "allow"')
    site, scen = _site(scenario, tmp_path)
    data = load_site(site, model_modalities=scen.modalities, text_encoder="minilm-frozen")
    # independently: how many of the 51 identical records (the original, id 1, and its 50 copies) the keyed split
    # put among the training rows
    train, _ = load_site_data(site.spec.source, site.spec.source_args, data_dir=site.data_dir)
    expected = sum(str(i) in {"1", *COPY_IDS} for i in train.ids)
    assert expected > 20 and data.max_copies == expected
    sp = SitePrivacy(site="north", dataset_id=data.dataset_id, settings=site.privacy, num_examples=len(data.train),
                     state_dir=tmp_path / "state", max_copies=data.max_copies)
    plan = sp.plan(sample_rate=1 / 10, steps=1, planned_steps=1)
    assert statement_copies(plan.statement) == expected
    assert statement_mode(plan.statement) == "sample"  # still a DP-SGD row for the audit
    reserved = sp.reserve(plan, round=1, federation_id="f", run_id="1")
    assert reserved.allowed and statement_copies(sp.ledger.entries()[-1].reason) == expected


def test_only_the_sites_own_file_decides_and_only_refuse_or_allow(tmp_path):
    with pytest.raises(ConfigError, match="duplicate-records"):
        _site(_scenario(tmp_path, copies=False, privacy=', duplicate-records = "ignore"'), tmp_path)
    # a run (the server) asking to allow copies changes nothing: the site's own file decides
    scenario = _scenario(tmp_path / "run", copies=True)
    run = parse_run_config(app_defaults() | {"scenario-file": str(scenario), "site-state-root": str(tmp_path / "st"),
                                             "duplicate-records": "allow"})
    site = resolve_site({"partition-id": 0}, run)
    assert site.privacy.duplicate_records == "refuse"
    with pytest.raises(DataContractError, match="copies of one another"):
        load_site(site, model_modalities=("tabular",), text_encoder="minilm-frozen")


def test_the_audit_states_the_group_privacy_of_a_ledger_with_copies(tmp_path):
    from server.audit import audit_path

    site, _ = _site(_scenario(tmp_path, copies=False, privacy=', duplicate-records = "allow"'), tmp_path)
    sp = SitePrivacy(site="north", dataset_id="d", settings=site.privacy, num_examples=150,
                     state_dir=tmp_path / "state", max_copies=7)
    sp.reserve(sp.plan(sample_rate=1 / 10, steps=1, planned_steps=1), round=1, federation_id="f", run_id="1")
    report = audit_path(tmp_path / "state" / "ledger.sqlite", allow_unsigned=True)
    warned = [f for f in report.findings if f.check == "group-privacy"]
    assert len(warned) == 1 and "up to 7 of one record" in warned[0].message and warned[0].level == "WARN"
