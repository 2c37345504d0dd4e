"""``fedfusion audit`` on a deployment's layout: the operator's run folder, the sites' state folders.

A deployed site keeps ``SITE/state/ledger.sqlite`` (DEPLOY.md), in a folder named as its IT chose; its
seeds are always secret (its config refuses anything else), though its ledger does not say so itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from server.audit.core import audit_path
from simulations.cli import main


def _deployed(run: Path, root: Path) -> tuple[Path, Path]:
    """The run split the way a deployment holds it: the operator's run folder, and copies of each site's state."""
    server, sites = root / "operator-run", root / "site-copies"
    server.mkdir()
    for f in ("ledger.sqlite", "ledger-head.json", "server_key.pub", "summary.json"):
        shutil.copy2(run / f, server / f)
    for site, folder in (("alpha", "hospital-A"), ("beta", "b")):  # folder names are not the site names
        shutil.copytree(run / "sites" / site, sites / folder / "state", symlinks=True)
        (sites / folder / "state" / "flwr-home").mkdir()  # what `site join` leaves in a state folder
    return server, sites


def test_sites_in_the_deployed_layout_are_audited_from_their_own_ledgers(run_copy, tmp_path):
    server, sites = _deployed(run_copy, tmp_path)
    report = audit_path(server, sites_dir=sites)
    assert report.passed, [f.message for f in report.findings if f.level == "FAIL"]
    for site, folder in (("alpha", "hospital-A"), ("beta", "b")):
        audit = report.sites[site]
        assert audit.source == "site ledger" and audit.ledger == str(sites / folder / "state" / "ledger.sqlite")
        assert audit.anchor_source == "server" and audit.history_complete
    without = audit_path(server)  # no --sites: only the server's rows, a lower bound
    assert {a.source for a in without.sites.values()} == {"server ledger"}


def test_a_site_only_audit_reports_secret_seeds_where_they_are_known(run_copy, tmp_path):
    sim = audit_path(run_copy / "sites" / "alpha" / "ledger.sqlite")  # a simulation's: the run's summary says
    assert sim.sites["alpha"].noise_seed == "secret"
    _, sites = _deployed(run_copy, tmp_path)
    deployed = audit_path(sites / "hospital-A" / "state")
    assert deployed.sites["alpha"].noise_seed == "secret"
    assert any(f.check == "noise" and "deployed site" in f.message for f in deployed.findings)
    loose = tmp_path / "loose"
    shutil.copytree(run_copy / "sites" / "beta", loose, symlinks=True)  # no run folder, no deployed state
    assert audit_path(loose).sites["beta"].noise_seed == "not recorded"


def test_compare_names_whose_key_anchors_the_site_ledger(run_copy, capsys):
    site, server = run_copy / "sites" / "alpha" / "ledger.sqlite", run_copy / "ledger.sqlite"
    assert main(["audit", "--compare", str(site), str(server)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "signed up to seq 6 (r3) by a head the server recorded; alpha's key SHA256:" in out
    assert "by server" not in out
