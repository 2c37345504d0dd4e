"""Every way of altering a ledger makes the audit fail and name the site and round.

Each test tampers with a copy of a signed run (see conftest.py): alpha trained rounds 1-3 (site
ledger rows seq 1-6: reserve/confirm per round), beta trained 1-2 and declined 3. Tampering
"without recomputation" is a plain SQL edit; "with recomputed hashes" is what an attacker who
knows the format does (the chain then verifies, so only the signed heads can catch it).
"""

from __future__ import annotations

import json
import shutil

import pytest

from common.privacy.ledger import Ledger
from common.privacy.signing import SERVER_HEAD_FILE, load_or_create_key
from server.audit import audit_compare, audit_path


def _names(findings, site: str, rnd: int) -> bool:
    return any(f.site == site and f.round == rnd and f"round {rnd}" in f.message for f in findings)


def test_the_untouched_run_passes_with_both_budgets(run_copy):
    report = audit_path(run_copy)
    assert report.passed, [f.message for f in report.findings]
    alpha, beta = report.sites["alpha"], report.sites["beta"]
    assert (alpha.rounds_trained, alpha.rounds_declined, alpha.anchored_seq, alpha.anchor_source) == (3, 0, 6, "server")
    assert (beta.rounds_trained, beta.rounds_declined, beta.unanchored_rows) == (2, 1, 0)
    assert beta.declined == [{"federation_id": "fed-audit", "round": 3, "reason": "lifetime budget"}]
    assert not alpha.ever_exceeded and not beta.ever_exceeded and beta.remaining > 0
    assert report.server["anchored_seq"] == 6 and report.server["signed_heads_recorded"] == 6


# ----------------------------------------------------------- plain edits (the chain catches them)
def test_an_edited_row_fails_and_is_named(run_copy, attacker):
    attacker.raw_sql(attacker.site_ledger(run_copy, "alpha"), "UPDATE entries SET epsilon = 0.1 WHERE seq = 3")
    report = audit_path(run_copy)
    chain = attacker.fails(report, check="chain", site="alpha")
    assert not report.passed and _names(chain, "alpha", 2) and "hash does not match" in chain[0].message


def test_a_deleted_row_fails_and_is_named(run_copy, attacker):
    attacker.raw_sql(attacker.site_ledger(run_copy, "alpha"), "DELETE FROM entries WHERE seq = 3")  # round 2 reserve
    report = audit_path(run_copy)
    assert not report.passed
    assert any("expected seq 3" in f.message for f in attacker.fails(report, check="chain", site="alpha"))
    # the server says alpha trained round 2 and the site's reservation for it is gone
    assert _names(attacker.fails(report, check="compare", site="alpha"), "alpha", 2)


def test_swapped_rows_fail_and_are_named(run_copy, attacker):
    attacker.raw_sql(attacker.site_ledger(run_copy, "alpha"), "UPDATE entries SET seq = 99 WHERE seq = 1",
                     "UPDATE entries SET seq = 1 WHERE seq = 3", "UPDATE entries SET seq = 3 WHERE seq = 99")
    report = audit_path(run_copy)
    chain = attacker.fails(report, check="chain", site="alpha")
    assert not report.passed and _names(chain, "alpha", 1) and _names(chain, "alpha", 2)


# --------------------------------------------- forgeries with recomputed hashes (the heads catch them)
def test_a_forged_append_with_recomputed_hashes_fails_and_is_named(run_copy, attacker):
    def append_round_4(rows):
        fake = dict(rows[-1]) | {"round": 4, "event": "decline", "reason": "lifetime budget"}
        return rows + [fake]

    attacker.rewrite(attacker.site_ledger(run_copy, "alpha"), append_round_4)
    report = audit_path(run_copy)
    anchor = attacker.fails(report, check="anchor", site="alpha")
    assert not report.passed and _names(anchor, "alpha", 4) and "UNANCHORED rows seq 7" in anchor[0].message


def test_a_truncated_ledger_fails_and_is_named(run_copy, attacker):
    path = attacker.site_ledger(run_copy, "alpha")
    attacker.raw_sql(path, "DELETE FROM entries WHERE seq > 4")  # round 3 gone; the chain still verifies
    assert Ledger(path, read_only=True).verify() == []
    report = audit_path(run_copy)
    anchor = attacker.fails(report, check="anchor", site="alpha")
    assert not report.passed and anchor[0].message.startswith("alpha: TRUNCATED") and _names(anchor, "alpha", 3)
    assert _names(attacker.fails(report, check="compare", site="alpha"), "alpha", 3)


def test_truncation_is_caught_from_the_site_ledger_alone_by_its_own_signed_heads(run_copy, attacker):
    path = attacker.site_ledger(run_copy, "alpha")
    attacker.raw_sql(path, "DELETE FROM entries WHERE seq > 4")
    report = audit_path(path)
    assert report.kind == "site-ledger" and not report.passed
    assert _names([f for f in report.findings if "TRUNCATED" in f.message], "alpha", 3)


@pytest.mark.parametrize("how", ["edit", "insert", "delete", "swap"])
def test_a_mid_chain_forgery_with_recomputed_hashes_fails_and_names_the_round(run_copy, attacker, how):
    def forge(rows):
        if how == "edit":  # pretend round 2 ran with more noise
            rows[2] = rows[2] | {"noise_multiplier": 3.0}
        elif how == "insert":  # a fake decline before round 2
            rows.insert(2, rows[1] | {"event": "decline", "reason": "forged"})
        elif how == "delete":  # round 2's reservation vanishes
            del rows[2]
        else:  # round 1 and 2 reservations change places
            rows[0], rows[2] = rows[2], rows[0]
        return rows

    attacker.rewrite(attacker.site_ledger(run_copy, "alpha"), forge)
    report = audit_path(run_copy)
    rewritten = [f for f in attacker.fails(report, check="anchor", site="alpha") if "REWRITTEN" in f.message]
    assert not report.passed and rewritten, [f.message for f in report.findings]
    assert "round 2" in rewritten[0].message or "rounds 1" in rewritten[0].message
    if how == "swap":  # each row still matches the server's row for its round, but not its place in history
        assert _names(attacker.fails(report, check="recompute", site="alpha"), "alpha", 1)
    else:  # and the server's record of the round disagrees
        assert attacker.fails(report, check="compare", site="alpha")


def test_a_re_signed_forgery_with_the_attackers_key_is_caught(run_copy, attacker, tmp_path):
    path = attacker.site_ledger(run_copy, "alpha")
    attacker.rewrite(path, lambda rows: [r | {"epsilon": r["epsilon"] * 0.5} for r in rows])
    # the attacker also replaces the site's own heads and its public key file with their own signatures
    attacker.raw_sql(path, "DELETE FROM heads")
    key = load_or_create_key(tmp_path / "evil_key")
    Ledger(path).sign_head(key, site="alpha", round=3)
    shutil.copy(tmp_path / "evil_key.pub", path.parent / "site_key.pub")
    report = audit_path(run_copy)
    anchor = attacker.fails(report, check="anchor", site="alpha")
    assert any("not the site's key" in f.message for f in anchor)  # the server recorded the real key
    assert any("REWRITTEN" in f.message for f in anchor)


# --------------------------------------------------------------------------- the server ledger
def test_a_forged_server_row_with_recomputed_hashes_is_caught_and_named(run_copy, attacker):
    attacker.rewrite(run_copy / "ledger.sqlite",
                     lambda rows: [r | {"epsilon": 0.5} if (r["site"], r["round"]) == ("beta", 2) else r
                                   for r in rows])
    report = audit_path(run_copy)
    assert any("REWRITTEN" in f.message for f in attacker.fails(report, check="anchor"))
    assert _names(attacker.fails(report, check="compare", site="beta"), "beta", 2)


def test_a_removed_server_signature_file_fails(run_copy, attacker):
    (run_copy / SERVER_HEAD_FILE).unlink()
    report = audit_path(run_copy)
    assert any("ledger-head.json missing" in f.message for f in attacker.fails(report, check="anchor"))


def test_an_appended_server_row_is_unanchored(run_copy, attacker):
    attacker.rewrite(run_copy / "ledger.sqlite", lambda rows: rows + [rows[-1] | {"round": 4}])
    report = audit_path(run_copy)
    assert any("UNANCHORED" in f.message and f.round == 4 for f in attacker.fails(report, check="anchor"))


# ---------------------------------------------------------------------------------- --compare
def test_compare_passes_on_agreement_and_names_every_disagreement(run_copy, attacker):
    site, server = attacker.site_ledger(run_copy, "beta"), run_copy / "ledger.sqlite"
    assert audit_compare(site, server).passed
    attacker.raw_sql(server, "UPDATE entries SET epsilon = 9.0 WHERE site = 'beta' AND round = 1",
                     "DELETE FROM entries WHERE site = 'beta' AND round = 3")
    report = audit_compare(site, server)
    compare = attacker.fails(report, check="compare", site="beta")
    assert _names(compare, "beta", 1) and "epsilon: site" in compare[0].message
    assert not report.passed and report.kind == "compare"
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["passed"] is False and as_json["sites"]["beta"]["verdict"] == "FAIL"


def test_noise_derived_from_the_run_seed_is_a_warning_and_stated(run_copy):
    assert audit_path(run_copy).sites["alpha"].noise_seed == "secret"
    summary = json.loads((run_copy / "summary.json").read_text())
    summary["sites"]["alpha"]["noise_seed"] = "run-seed"
    (run_copy / "summary.json").write_text(json.dumps(summary))
    report = audit_path(run_copy)
    assert report.passed  # a warning: the accounting is right, the threat model is narrower
    assert [(f.level, f.check, f.site) for f in report.findings if f.check == "noise"] == [("WARN", "noise", "alpha")]
    assert report.sites["alpha"].noise_seed == "run-seed" and report.sites["beta"].noise_seed == "secret"
