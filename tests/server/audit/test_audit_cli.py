"""``fedfusion audit``: terminal, --json and --html output, exit status, --compare."""

from __future__ import annotations

import json
import re

from simulations.cli import main


def test_terminal_report_passes_and_states_what_the_numbers_mean(run_copy, capsys):
    assert main(["audit", str(run_copy)]) == 0
    out = capsys.readouterr().out
    assert "audit PASSED" in out and "alpha" in out and "beta" in out
    for statement in ("δ per site", "adding or removing one record", "secure_mode", "NOT privatised",
                      "dp-accounting"):
        assert statement in out
    assert "declined round 3" in out


def test_json_has_stable_keys_and_exit_status_follows_the_verdict(run_copy, capsys, attacker):
    assert main(["audit", str(run_copy), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "fedfusion-audit/1" and doc["passed"] is True and doc["kind"] == "run"
    assert set(doc) >= {"target", "counts", "thresholds", "statements", "server", "sites", "findings"}
    beta = doc["sites"]["beta"]
    for key in ("spent_reported", "spent_pld", "spent_rdp", "epsilon_budget", "target_epsilon", "remaining",
                "rounds_trained", "rounds_declined", "declined", "ever_exceeded", "secure_mode", "deltas",
                "key_fingerprint", "anchored_seq", "rows", "verdict"):
        assert key in beta
    assert beta["rounds_declined"] == 1 and beta["rows"][0]["pld_epsilon"] > 0
    # tampered: exit 1 and the finding names the site and round
    attacker.raw_sql(attacker.site_ledger(run_copy, "beta"), "DELETE FROM entries WHERE seq = 5")
    assert main(["audit", str(run_copy), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert any(f["level"] == "FAIL" and f["site"] == "beta" and f["round"] == 3 for f in doc["findings"])


def test_html_is_self_contained_with_plot_mechanisms_and_statements(run_copy, tmp_path, capsys):
    out = tmp_path / "audit.html"
    assert main(["audit", str(run_copy), "--html", str(out)]) == 0
    page = out.read_text()
    assert "data:image/png;base64," in page and "Audit PASSED" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]https?:", page)  # nothing fetched from outside
    for text in ("δ per site", "adding or removing one record", "secure_mode", "NOT privatised", "σ", "ε PLD",
                 "lifetime budget"):
        assert text in page


def test_compare_exits_1_on_a_disagreement_and_2_without_a_file(run_copy, attacker, capsys):
    site, server = attacker.site_ledger(run_copy, "alpha"), run_copy / "ledger.sqlite"
    assert main(["audit", "--compare", str(site), str(server)]) == 0
    attacker.raw_sql(server, "UPDATE entries SET steps = 1 WHERE site = 'alpha' AND round = 2")
    assert main(["audit", "--compare", str(site), str(server)]) == 1
    assert "alpha round 2" in capsys.readouterr().out
    assert main(["audit", str(run_copy / "nowhere")]) == 2
