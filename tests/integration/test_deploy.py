"""End to end: a deployed federation on 127.0.0.1, started with the commands DEPLOY.md gives.

One TLS SuperLink with SuperNode authentication (``fedfusion federation init/start/register``)
and four sites (``fedfusion site init/join``), each with its own data folder (a GENERATED export
read through its mapping), state folder and ``FLWR_HOME``. Three hospitals train 2 rounds; the
fourth site's SuperNode is killed (SIGKILL, whole process tree) as soon as it starts its round-1
ClientApp, and the run must still complete with the others. Then: an unregistered key is refused,
an ``--insecure`` SuperNode cannot join the TLS SuperLink.

Every process is started through a :class:`ProcessSet` and stopped by PID; ``HOME`` and ``TMPDIR``
point into the test's temp folder, which must stay empty of anything but what the test expects.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.privacy.ledger import Ledger
from common.runtime.processes import ProcessSet, descendants, free_port, wait_for_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "simulations.cli"]
HOSPITALS = ("cleveland", "hungary", "va_long_beach")  # the three that train
VICTIM = "switzerland"  # killed mid-run
ROUNDS = 2


@dataclass
class Deployment:
    tmp: Path
    op: Path  # federation folder
    port: int
    env: dict[str, str]
    procs: ProcessSet
    sites: dict[str, Path]  # site name -> site.toml
    joins: dict[str, subprocess.Popen]  # site name -> `fedfusion site join` process
    out: Path  # server out-dir of the run
    run: subprocess.CompletedProcess | None = None
    run_seconds: float = 0.0
    victim_killed_at: str = ""


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env.update({"HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmpdir"), "PATH": f"{BIN}{os.pathsep}{env['PATH']}",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.pop("FLWR_HOME", None)  # every command below sets its own
    return env


def _cli(dep_env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=dep_env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _nodes(dep: Deployment) -> list[dict]:
    """``flwr supernode list`` as JSON rows (empty while the SuperLink does not answer)."""
    env = {**dep.env, "FLWR_HOME": str(dep.op / "flwr-home")}
    proc = subprocess.run([str(BIN / "flwr"), "supernode", "list", "fedfusion", "--format", "json"], env=env,
                          cwd=dep.tmp, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(proc.stdout[proc.stdout.index("{"):])["nodes"]
    except (ValueError, KeyError):
        return []


def _online(dep: Deployment) -> int:
    return sum(n.get("status") == "online" for n in _nodes(dep))


def _start_superlink(dep: Deployment) -> subprocess.Popen:
    link = dep.procs.start([*CLI, "federation", "start", str(dep.op)], env=dep.env, log=dep.tmp / "superlink.out",
                           cwd=REPO)
    wait_for_port(dep.port, timeout=90, proc=link, log=dep.tmp / "superlink.out")
    return link


def _join(dep: Deployment, name: str) -> subprocess.Popen:
    return dep.procs.start([*CLI, "site", "join", str(dep.sites[name]), "--superlink", f"127.0.0.1:{dep.port}",
                            "--root-cert", str(dep.op / "certs" / "ca.crt")],
                           env=dep.env, log=dep.tmp / f"join-{name}.out", cwd=REPO)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a `site join` process and everything under it (SuperNode, SuperExec, ClientApp): a crash."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def _ledger_rows(path: Path) -> list[tuple[str, int, str]]:
    """(site, round, event) rows of a ledger, read-only (never creates or locks it for writing)."""
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        try:
            return conn.execute("SELECT site, round, event FROM entries ORDER BY seq").fetchall()
        except sqlite3.OperationalError:
            return []


def _submit(dep: Deployment, *, federation_id: str, rounds: int, out: Path,
            watch=None, timeout: float = 540) -> subprocess.CompletedProcess:
    """`flwr run` the app against the federation and wait; ``watch()`` is polled every 0.3 s meanwhile."""
    cfg = dep.tmp / f"run-{federation_id}.toml"
    cfg.write_text(f'num-server-rounds = {rounds}\nbatch-size = 64\ntext-encoder = "minilm-frozen"\n'
                   'min-train-nodes = 3\nmin-available-nodes = 3\nround-timeout = 300.0\n'
                   f'federation-id = "{federation_id}"\nout-dir = "{out}"\n')
    env = {**dep.env, "FLWR_HOME": str(dep.op / "flwr-home")}
    log = dep.tmp / f"flwr-run-{federation_id}.out"
    runner = dep.procs.start([str(BIN / "flwr"), "run", str(REPO), "fedfusion", "--run-config", str(cfg), "--stream"],
                             env=env, log=log, cwd=REPO)
    deadline = time.monotonic() + timeout
    while runner.poll() is None and time.monotonic() < deadline:
        if watch is not None:
            watch()
        time.sleep(0.3)
    if runner.poll() is None:
        pytest.fail(f"`flwr run` did not finish within {timeout:.0f}s:\n{log.read_text()[-4000:]}")
    return subprocess.CompletedProcess(runner.args, runner.returncode, log.read_text(errors="replace"), "")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    env, port = _env(tmp), free_port()
    dep = Deployment(tmp=tmp, op=tmp / "op", port=port, env=env, procs=ProcessSet(), sites={}, joins={},
                     out=tmp / "op" / "runs" / "r1")
    try:
        _ok(_cli(env, "federation", "init", str(dep.op), "--host", "127.0.0.1", "--port", str(port)))
        _start_superlink(dep)
        for name in (*HOSPITALS, VICTIM):
            mods = ["--modalities", "tabular"] if name == "va_long_beach" else []
            _ok(_cli(env, "site", "init", str(tmp / "sites" / name), "--name", name, "--example-data", name, *mods))
            dep.sites[name] = tmp / "sites" / name / "site.toml"
            _ok(_cli(env, "site", "check", str(dep.sites[name])))
            _ok(_cli(env, "federation", "register", str(dep.op), str(tmp / "sites" / name / "keys" / "site_ecdsa.pub"),
                     "--name", name))
            dep.joins[name] = _join(dep, name)
        deadline = time.monotonic() + 120
        while _online(dep) < 4:
            assert time.monotonic() < deadline, "the four SuperNodes did not all come online"
            for name, proc in dep.joins.items():
                assert proc.poll() is None, (name, (tmp / f"join-{name}.out").read_text()[-3000:])
            time.sleep(2)

        victim_log = dep.sites[VICTIM].parent / "state" / "logs" / "supernode.log"

        def kill_victim_once_it_trains() -> None:
            if dep.victim_killed_at or not victim_log.exists():
                return
            text = victim_log.read_text(errors="replace")
            if "Receiving: train message" in text and "Start `flwr-clientapp` process" in text:
                _kill_tree(dep.joins[VICTIM])
                dep.victim_killed_at = time.strftime("%H:%M:%S")

        started = time.monotonic()
        dep.run = _submit(dep, federation_id="fed-deploy-test", rounds=ROUNDS, out=dep.out,
                          watch=kill_victim_once_it_trains)
        dep.run_seconds = time.monotonic() - started
        yield dep
    finally:
        dep.procs.stop()


def test_run_completes_despite_a_killed_supernode(deployment):
    dep = deployment
    assert dep.run is not None and dep.run.returncode == 0, dep.run.stdout[-4000:]
    assert dep.victim_killed_at, "the victim SuperNode never started a round-1 ClientApp"
    summary = json.loads((dep.out / "summary.json").read_text())
    assert summary["completed"] is True and summary["federation_id"] == "fed-deploy-test"
    assert (dep.out / "model.safetensors").stat().st_size > 0
    for name in HOSPITALS:
        assert summary["sites"][name]["rounds_trained"] == ROUNDS, summary["sites"][name]
    assert VICTIM not in summary["sites"] or summary["sites"][VICTIM]["rounds_trained"] == 0
    for name in HOSPITALS:  # warm-start = true (site init's default): the message-processes were forked
        log = (dep.sites[name].parent / "state" / "logs" / "supernode.log").read_text(errors="replace")
        assert "[warm-start] message process PID" in log, log[-3000:]
    print(f"deployed run: {dep.run_seconds:.0f}s for {ROUNDS} rounds; victim killed at {dep.victim_killed_at}")


def test_every_ledger_has_its_rows(deployment):
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
    victim = _ledger_rows(dep.sites[VICTIM].parent / "state" / "ledger.sqlite")
    assert all(event != "confirm" for _, _, event in victim), victim  # killed before it finished a round


def test_unregistered_key_is_refused(deployment):
    dep = deployment
    site = dep.tmp / "sites" / "stranger"
    _ok(_cli(dep.env, "site", "init", str(site), "--name", "stranger", "--example-data", "switzerland"))
    proc = _cli(dep.env, "site", "join", str(site / "site.toml"), "--superlink", f"127.0.0.1:{dep.port}",
                "--root-cert", str(dep.op / "certs" / "ca.crt"), timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Exit Code: 305" in out and "Failed to activate" in out, out[-3000:]
    assert "refused this site's key" in out


def test_the_operator_can_tell_which_node_is_which_site(deployment):
    dep = deployment
    sites = json.loads((dep.op / "registered-sites.json").read_text())
    assert set(sites) == {*HOSPITALS, VICTIM}
    listed = {int(n["node-id"]) for n in _nodes(dep)}
    assert {s["node-id"] for s in sites.values()} <= listed and len({s["node-id"] for s in sites.values()}) == 4
    for name, s in sites.items():
        assert Path(s["public-key"]) == (dep.sites[name].parent / "keys" / "site_ecdsa.pub").resolve()


def test_insecure_supernode_cannot_join_the_tls_superlink(deployment):
    dep = deployment
    site = dep.tmp / "sites" / "plaintext"
    _ok(_cli(dep.env, "site", "init", str(site), "--name", "plaintext", "--example-data", "switzerland"))
    env = {**dep.env, "FLWR_HOME": str(site / "state" / "flwr-home")}
    log = dep.tmp / "insecure.out"
    # no --auth-supernode-private-key: Flower itself refuses a key over a plaintext channel (exit code 303)
    node = dep.procs.start([str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{dep.port}",
                            "--port", str(free_port()), "--max-retries", "2",
                            "--node-config", f'site-config="{site / "site.toml"}"'], env=env, log=log)
    try:
        rc = node.wait(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the --insecure SuperNode kept running:\n{log.read_text()[-3000:]}")
    out = log.read_text(errors="replace")
    assert rc != 0 and "Exit Code: 305" in out, out[-3000:]
    assert "Server disconnected" in out and "SuperNode ID" not in out  # TLS refused it: it never got a node id


def test_detached_superlink_stops_with_its_whole_process_tree(deployment):
    dep = deployment
    other, port = dep.tmp / "op-detached", free_port()
    _ok(_cli(dep.env, "federation", "init", str(other), "--host", "127.0.0.1", "--port", str(port)))
    try:
        _ok(_cli(dep.env, "federation", "start", str(other), "--detach"))
        pid = int((other / "superlink.pid").read_text())
        wait_for_port(port, timeout=30)
        deadline = time.monotonic() + 30
        while not descendants(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        tree = [pid, *descendants(pid)]
        assert len(tree) >= 2  # the SuperLink and the SuperExec it starts
        again = _cli(dep.env, "federation", "start", str(other), "--detach")
        assert again.returncode != 0 and "already running" in again.stderr
        assert "SuperLink stopped" in _ok(_cli(dep.env, "federation", "stop", str(other))).stdout
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


def test_nothing_was_written_outside_the_temp_folder(deployment):
    dep = deployment
    assert list((dep.tmp / "home").iterdir()) == []  # no ~/.flwr, no caches in the (redirected) home
    assert not (REPO / ".flwr").exists()
    assert not list(REPO.glob("*.fab"))


def test_superlink_restart_resumes_from_checkpoint_without_double_spend(deployment):
    dep = deployment
    fid, out = "fed-restart-test", dep.tmp / "op" / "runs" / "restart"
    link = dep.procs.procs[0]  # `federation start`, the first process of the module
    assert _online(dep) >= 3

    def kill_superlink_after_round_1() -> None:
        if link.poll() is None and any(r == 1 for _, r, ev in _ledger_rows(out / "ledger.sqlite") if ev == "trained"):
            _kill_tree(link)

    first = _submit(dep, federation_id=fid, rounds=3, out=out, watch=kill_superlink_after_round_1, timeout=300)
    assert link.poll() is not None, first.stdout[-3000:]  # the SuperLink died mid-run
    _start_superlink(dep)  # same database, same port: the SuperNodes reconnect
    deadline = time.monotonic() + 120
    while _online(dep) < 3:
        assert time.monotonic() < deadline
        time.sleep(2)
    second = _submit(dep, federation_id=fid, rounds=3, out=out)
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
