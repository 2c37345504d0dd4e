"""End to end: a deployed federation on 127.0.0.1, started with the commands DEPLOY.md gives.

One TLS SuperLink with SuperNode authentication (``fedfusion federation init/start/register``)
and four sites (``fedfusion site init/join``), each with its own data folder (a GENERATED export
read through its mapping), state folder and ``FLWR_HOME``; ``va_long_beach`` runs with warm start
off (the cold path). Before the operator's run, an attacker holding only ``ca.crt`` and the sites'
address tries to start a run of its own app and to register, unregister and list nodes, list and
stop runs: all refused, no marker file anywhere. Three hospitals train 2 rounds; the fourth site's
SuperNode is killed (SIGKILL, whole process tree) as soon as it starts its round-1 ClientApp, and
the run must still complete with the others. Then: a run of an app the sites did not approve
(submitted the only way left, from the operator's machine) is refused by every site; an
unregistered key is refused; an ``--insecure`` SuperNode cannot join the TLS SuperLink; a site
that stops can join again at once.

Every process is started through a :class:`ProcessSet` and stopped by PID (the harness is in
conftest.py); ``HOME`` and ``TMPDIR`` point into the test's temp folder, which must stay empty of
anything but what the test expects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.privacy.ledger import Ledger
from common.runtime.processes import descendants, free_port, wait_for_port

pytestmark = pytest.mark.slow

HOSPITALS = ("cleveland", "hungary", "va_long_beach")  # the three that train
VICTIM = "switzerland"  # killed mid-run
COLD = "va_long_beach"  # warm-start = false: every message through Flower's own flwr-clientapp (behind the gate)
ROUNDS = 2
REFUSED = "not served on the Fleet address"  # the sites' port answers anything but the Fleet API with this


def _declared(site_toml: Path) -> list[str]:
    """What the operator registers with a site's key: its modalities and public max-records (from its site.toml)."""
    cfg = tomllib.loads(site_toml.read_text())
    return ["--modalities", ",".join(cfg["site"].get("modalities", ["tabular", "text"])),
            "--max-records", str(cfg["privacy"]["max-records"])]


@pytest.fixture(scope="module")
def kit(deploy_kit):
    return deploy_kit


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, kit):
    tmp = tmp_path_factory.mktemp("deploy")
    dep = kit.Deployment.create(tmp)
    ok = kit.ok
    try:
        ok(dep.cli("federation", "init", str(dep.op), "--host", "127.0.0.1", "--port", str(dep.port)))
        dep.start_superlink()
        names = (*HOSPITALS, VICTIM)

        def init_and_check(name: str) -> None:  # each site on its own machine: the four run at once
            mods = ["--modalities", "tabular"] if name == "va_long_beach" else []
            ok(dep.cli("site", "init", str(tmp / "sites" / name), "--name", name, "--example-data", name, *mods))
            site_toml = tmp / "sites" / name / "site.toml"
            if name == COLD:
                site_toml.write_text(site_toml.read_text().replace("warm-start = true", "warm-start = false"))
            ok(dep.cli("site", "check", str(site_toml)))

        with ThreadPoolExecutor(len(names)) as pool:
            for done in [pool.submit(init_and_check, name) for name in names]:
                done.result()
        for name in names:  # the operator registers them one after the other, then each site joins
            dep.sites[name] = tmp / "sites" / name / "site.toml"
            ok(dep.cli("federation", "register", str(dep.op), str(tmp / "sites" / name / "keys" / "site_ecdsa.pub"),
                       "--name", name, *_declared(dep.sites[name])))
            dep.joins[name] = dep.join(name)
        deadline = time.monotonic() + 120
        while dep.online() < 4:
            assert time.monotonic() < deadline, "the four SuperNodes did not all come online"
            for name, proc in dep.joins.items():
                assert proc.poll() is None, (name, (tmp / f"join-{name}.out").read_text()[-3000:])
            time.sleep(2)

        dep.attack = dep.try_attack()  # before the operator's run: that run must still complete
        victim_log = dep.sites[VICTIM].parent / "state" / "logs" / "supernode.log"

        def kill_victim_once_it_trains() -> None:
            if dep.victim_killed_at or not victim_log.exists():
                return
            text = victim_log.read_text(errors="replace")
            if "Receiving: train message" in text and "Start `flwr-clientapp` process" in text:
                kit.kill_tree(dep.joins[VICTIM])
                dep.victim_killed_at = time.strftime("%H:%M:%S")

        started = time.monotonic()
        dep.run = dep.submit(federation_id="fed-deploy-test", rounds=ROUNDS, out=dep.out,
                             watch=kill_victim_once_it_trains)
        dep.run_seconds = time.monotonic() - started
        yield dep
    finally:
        dep.procs.stop()


def test_run_completes_despite_a_killed_supernode(deployment, kit):
    dep = deployment
    assert dep.run is not None and dep.run.returncode == 0, dep.run.stdout[-4000:]
    assert dep.victim_killed_at, "the victim SuperNode never started a round-1 ClientApp"
    summary = json.loads((dep.out / "summary.json").read_text())
    assert summary["completed"] is True and summary["federation_id"] == "fed-deploy-test"
    assert (dep.out / "model.safetensors").stat().st_size > 0
    for name in HOSPITALS:
        assert summary["sites"][name]["rounds_trained"] == ROUNDS, summary["sites"][name]
    assert VICTIM not in summary["sites"] or summary["sites"][VICTIM]["rounds_trained"] == 0
    run_id = kit.run_id(dep.run.stdout)
    for name in HOSPITALS:
        log = (dep.sites[name].parent / "state" / "logs" / "supernode.log").read_text(errors="replace")
        assert f"[app-gate] approved run {run_id}: app fedfusion/fedfusion" in log, log[-3000:]
        if name == COLD:  # Flower's own flwr-clientapp for every message, behind the same gate
            assert "warm start is off" in log and "[warm-start] message process PID" not in log, log[-3000:]
        else:  # warm-start = true (site init's default): the message-processes were forked
            assert "[warm-start] message process PID" in log, log[-3000:]
    print(f"deployed run: {dep.run_seconds:.0f}s for {ROUNDS} rounds; victim killed at {dep.victim_killed_at}")


def test_a_party_with_only_ca_crt_can_neither_start_runs_nor_touch_nodes(deployment):
    """The attack of issue 13: every Control API call on the sites' address is refused, nothing ran anywhere."""
    dep = deployment
    for name, proc in dep.attack.items():
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0 and REFUSED in out, f"{name}: rc {proc.returncode}\n{out[-2000:]}"
    link_log = (dep.op / "logs" / "superlink.log").read_text(errors="replace")
    for path in ("start-run", "register-node", "list-nodes", "list-runs", "stop-run", "unregister-node"):
        assert f"[fleet-only] refused POST /v1/control/{path} from 127.0.0.1:" in link_log, path
    assert not dep.markers.exists() and not list(dep.tmp.rglob("client-ran-*"))  # no site ran the rogue app
    assert not (dep.tmp / "rogue-result.json").exists()  # its ServerApp never ran at the operator either
    assert "not-the-operator" not in dep.flwr("ls", "fedfusion").stdout  # no run of it was ever created
    registered = {s["node-id"] for s in json.loads((dep.op / "registered-sites.json").read_text()).values()}
    assert {int(n["node-id"]) for n in dep.nodes()} == registered  # the rogue key was not registered


def test_a_site_refuses_a_run_of_an_app_it_did_not_approve(deployment, kit):
    """Submitted from the operator's machine (the only way left): every site refuses before it unpacks the app."""
    dep = deployment
    online = dep.online()
    proc = dep.flwr("run", str(dep.rogue), "fedfusion", "--stream", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((dep.tmp / "rogue-result.json").read_text())
    assert result["nodes"] == online >= len(HOSPITALS) and len(result["replies"]) == online, result
    for reply in result["replies"]:  # a failed reply, naming the refusal
        assert reply["error"] and "AppNotApproved" in reply["reason"] and "another app altogether" in reply["reason"]
    assert not dep.markers.exists() and not list(dep.tmp.rglob("client-ran-*"))
    run_id = kit.run_id(proc.stdout)
    for name in HOSPITALS:  # warm and cold path alike: one line in the site's log, and nothing installed
        state = dep.sites[name].parent / "state"
        log = (state / "logs" / "supernode.log").read_text(errors="replace")
        assert f"[app-gate] REFUSED run {run_id}: app not-the-operator/rogue 1.0.0" in log, log[-3000:]
        assert not list((state / "flwr-home").rglob("*rogue*"))


def test_every_ledger_has_its_rows(deployment, kit):
    dep = deployment
    server = Ledger(dep.out / "ledger.sqlite")
    assert server.verify() == []
    rows = server.entries()
    assert {e.federation_id for e in rows} == {"fed-deploy-test"}
    trained = sorted((e.site, e.round) for e in rows if e.event == "trained")
    assert trained == sorted((s, r) for s in HOSPITALS for r in range(1, ROUNDS + 1))
    others = [(e.site, e.round, e.event) for e in rows if e.event != "trained"]
    assert all(event == "failed" and rnd == 1 for _, rnd, event in others), others  # only the victim, round 1
    for name in HOSPITALS:
        ledger = Ledger(dep.sites[name].parent / "state" / "ledger.sqlite")
        assert ledger.verify() == []
        entries = ledger.entries(site=name)
        assert [(e.round, e.event) for e in entries] == [
            (r, ev) for r in range(1, ROUNDS + 1) for ev in ("reserve", "confirm")]
        assert {e.federation_id for e in entries} == {"fed-deploy-test"}
        srv = {e.round: e for e in rows if e.site == name}
        for e in entries:
            if e.event == "confirm":  # the server recorded the ε the site reported for that round
                assert srv[e.round].epsilon == pytest.approx(e.epsilon)
        assert entries[-1].epsilon <= 4.0 + 1e-6  # planned training meets target-epsilon (default 4.0)
        # the ledger heads the server recorded were signed with the key the operator registered
        registered = (dep.sites[name].parent / "keys" / "site_ecdsa.pub").read_text().split()[1]
        heads = server.heads(site=name)
        assert heads and {h.public_key.split()[1] for h in heads} == {registered}
    victim = kit.ledger_rows(dep.sites[VICTIM].parent / "state" / "ledger.sqlite")
    assert all(event != "confirm" for _, _, event in victim), victim  # killed before it finished a round


def test_unregistered_key_is_refused(deployment, kit):
    dep = deployment
    site = dep.tmp / "sites" / "stranger"
    kit.ok(dep.cli("site", "init", str(site), "--name", "stranger", "--example-data", "switzerland"))
    proc = dep.cli("site", "join", str(site / "site.toml"), "--superlink", f"127.0.0.1:{dep.port}",
                "--root-cert", str(dep.op / "certs" / "ca.crt"), timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Exit Code: 305" in out and "Failed to activate" in out, out[-3000:]
    assert "refused this site's key" in out


def test_the_operator_can_tell_which_node_is_which_site(deployment):
    dep = deployment
    sites = json.loads((dep.op / "registered-sites.json").read_text())
    assert set(sites) == {*HOSPITALS, VICTIM}
    listed = {int(n["node-id"]) for n in dep.nodes()}
    assert {s["node-id"] for s in sites.values()} <= listed and len({s["node-id"] for s in sites.values()}) == 4
    for name, s in sites.items():
        assert Path(s["public-key"]) == (dep.sites[name].parent / "keys" / "site_ecdsa.pub").resolve()


def test_insecure_supernode_cannot_join_the_tls_superlink(deployment, kit):
    dep = deployment
    site = dep.tmp / "sites" / "plaintext"
    kit.ok(dep.cli("site", "init", str(site), "--name", "plaintext", "--example-data", "switzerland"))
    env = {**dep.env, "FLWR_HOME": str(site / "state" / "flwr-home")}
    log = dep.tmp / "insecure.out"
    # no --auth-supernode-private-key: Flower itself refuses a key over a plaintext channel (exit code 303)
    node = dep.procs.start([str(kit.BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{dep.port}",
                            "--port", str(free_port()), "--max-retries", "2",
                            "--node-config", f'site-config="{site / "site.toml"}"'], env=env, log=log)
    try:
        rc = node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the --insecure SuperNode kept running:\n{log.read_text()[-3000:]}")
    out = log.read_text(errors="replace")
    assert rc != 0 and "Exit Code: 305" in out, out[-3000:]
    assert "Server disconnected" in out and "SuperNode ID" not in out  # TLS refused it: it never got a node id


def test_a_stopped_site_can_join_again_at_once(deployment, kit):
    """`site stop` deactivates the node, so an immediate `site join --detach` is activated (not exit code 305)."""
    dep = deployment
    site = dep.tmp / "sites" / "rejoiner"
    kit.ok(dep.cli("site", "init", str(site), "--name", "rejoiner", "--example-data", "switzerland",
             "--modalities", "tabular"))
    config = site / "site.toml"
    config.write_text(config.read_text().replace("warm-start = true", "warm-start = false"))  # lean
    kit.ok(dep.cli("federation", "register", str(dep.op), str(site / "keys" / "site_ecdsa.pub"), "--name",
             "rejoiner", *_declared(config)))
    join = ["site", "join", str(config), "--superlink", f"127.0.0.1:{dep.port}", "--root-cert",
            str(dep.op / "certs" / "ca.crt"), "--detach"]
    try:
        for attempt in (1, 2):
            joined = kit.ok(dep.cli(*join, timeout=180))
            assert "activated by the SuperLink" in joined.stdout, joined.stdout
            assert "SuperNode stopped" in kit.ok(dep.cli("site", "stop", str(config))).stdout
        assert (dep.op / "logs" / "superlink.log").read_text(errors="replace").count(
            "[Fleet.DeactivateNode] Deactivated node_id") >= 2
    finally:
        dep.cli("site", "stop", str(config))


def test_a_detached_join_with_an_unregistered_key_says_so_and_leaves_nothing_running(deployment, kit):
    dep = deployment
    site = dep.tmp / "sites" / "unknown"
    kit.ok(dep.cli("site", "init", str(site), "--name", "unknown", "--example-data", "switzerland",
             "--modalities", "tabular"))
    config = site / "site.toml"
    config.write_text(config.read_text().replace("warm-start = true", "warm-start = false"))
    proc = dep.cli("site", "join", str(config), "--superlink", f"127.0.0.1:{dep.port}", "--root-cert",
                str(dep.op / "certs" / "ca.crt"), "--detach", timeout=180)
    assert proc.returncode != 0 and "joined" not in proc.stdout, proc.stdout + proc.stderr
    assert "refused this site's key" in proc.stderr
    assert not (site / "state" / "supernode.pid").exists()


def test_detached_superlink_stops_with_its_whole_process_tree(deployment, kit):
    dep = deployment
    other, port = dep.tmp / "op-detached", kit.two_free_ports()
    kit.ok(dep.cli("federation", "init", str(other), "--host", "127.0.0.1", "--port", str(port)))
    try:
        kit.ok(dep.cli("federation", "start", str(other), "--detach"))
        pid = int((other / "superlink.pid").read_text())
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while not descendants(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        tree = [pid, *descendants(pid)]
        assert len(tree) >= 2  # the SuperLink and the SuperExec it starts
        again = dep.cli("federation", "start", str(other), "--detach")
        assert again.returncode != 0 and "already running" in again.stderr
        assert "SuperLink stopped" in kit.ok(dep.cli("federation", "stop", str(other))).stdout
        assert not (other / "superlink.pid").exists()
        assert not [p for p in tree if Path(f"/proc/{p}").exists()
                    and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    finally:
        pidfile = other / "superlink.pid"
        if pidfile.exists():  # the test failed midway: stop it by PID
            for p in [int(pidfile.read_text()), *descendants(int(pidfile.read_text()))]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_nothing_was_written_outside_the_temp_folder(deployment, kit):
    dep = deployment
    assert list((dep.tmp / "home").iterdir()) == []  # no ~/.flwr, no caches in the (redirected) home
    assert not (kit.REPO / ".flwr").exists()
    assert not list(kit.REPO.glob("*.fab"))


def test_superlink_restart_resumes_from_checkpoint_without_double_spend(deployment, kit):
    dep = deployment
    fid, out = "fed-restart-test", dep.tmp / "op" / "runs" / "restart"
    link = dep.procs.procs[0]  # `federation start`, the first process of the module
    assert dep.online() >= 3

    def kill_superlink_after_round_1() -> None:
        if link.poll() is None and any(r == 1 for _, r, ev in kit.ledger_rows(out / "ledger.sqlite")
                                       if ev == "trained"):
            kit.kill_tree(link)

    first = dep.submit(federation_id=fid, rounds=3, out=out, watch=kill_superlink_after_round_1, timeout=300)
    assert link.poll() is not None, first.stdout[-3000:]  # the SuperLink died mid-run
    dep.start_superlink()  # same database, same port: the SuperNodes reconnect
    deadline = time.monotonic() + 120
    while dep.online() < 3:
        assert time.monotonic() < deadline
        time.sleep(2)
    second = dep.submit(federation_id=fid, rounds=3, out=out)
    assert second.returncode == 0, second.stdout[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] is True
    server = Ledger(out / "ledger.sqlite")
    assert server.verify() == []
    for name in HOSPITALS:
        rounds = [e.round for e in server.entries(site=name) if e.event == "trained" and e.federation_id == fid]
        assert sorted(rounds) == [1, 2, 3], f"{name}: server logged a round twice or never: {rounds}"
        site_rows = [e for e in Ledger(dep.sites[name].parent / "state" / "ledger.sqlite").entries(site=name)
                     if e.federation_id == fid]
        reserves = [e.round for e in site_rows if e.event == "reserve"]
        assert sorted(reserves) == [1, 2, 3], f"{name}: a round was spent twice or never: {reserves}"
