"""The harness of tests/integration/test_deploy.py: a deployed federation on 127.0.0.1, driven by its commands.

:class:`Deployment` runs ``fedfusion federation/site ...`` and Flower's ``flwr`` the way DEPLOY.md tells the
operator and the sites to, every process through a :class:`ProcessSet` (stopped by PID). The ``deploy_kit``
fixture hands it, the rogue app (CONSTRUCTED attack code, below) and helpers to the test module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.pki import make_site_keypair
from common.runtime.processes import ProcessSet, descendants, free_port, wait_for_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "simulations.cli"]


@dataclass
class Deployment:
    tmp: Path
    op: Path  # federation folder
    port: int  # the sites' port (the operator's: port + 1, federation init's default)
    env: dict[str, str]
    procs: ProcessSet = field(default_factory=ProcessSet)
    sites: dict[str, Path] = field(default_factory=dict)  # site name -> site.toml
    joins: dict[str, subprocess.Popen] = field(default_factory=dict)  # site name -> `fedfusion site join` process
    out: Path | None = None  # server out-dir of the run
    run: subprocess.CompletedProcess | None = None
    run_seconds: float = 0.0
    victim_killed_at: str = ""
    attack: dict[str, subprocess.CompletedProcess] | None = None  # what the attacker's commands answered
    rogue: Path | None = None  # the attacker's app
    markers: Path | None = None  # where the rogue ClientApp would write, had any site run it

    @classmethod
    def create(cls, tmp: Path) -> "Deployment":
        env = dict(os.environ)
        for d in ("home", "tmpdir"):
            (tmp / d).mkdir(exist_ok=True)
        env.update({"HOME": str(tmp / "home"), "TMPDIR": str(tmp / "tmpdir"),
                    "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        env.pop("FLWR_HOME", None)  # every command below sets its own
        dep = cls(tmp=tmp, op=tmp / "op", port=two_free_ports(), env=env, out=tmp / "op" / "runs" / "r1",
                  markers=tmp / "markers")
        dep.rogue = _write_rogue_app(tmp / "rogue", markers=dep.markers, result=tmp / "rogue-result.json",
                                     timeout=180)
        return dep

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``fedfusion ARGS`` (from the repository, as DEPLOY.md runs it)."""
        return subprocess.run([*CLI, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)

    def flwr(self, *args: str, home: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Flower's ``flwr ARGS`` with the operator's flwr-home (its Control API on loopback) unless ``home``."""
        env = {**self.env, "FLWR_HOME": str(home or self.op / "flwr-home")}
        return subprocess.run([str(BIN / "flwr"), *args], env=env, cwd=home or self.tmp, capture_output=True,
                              text=True, timeout=timeout)

    def nodes(self) -> list[dict]:
        """``flwr supernode list`` as JSON rows (empty while the SuperLink does not answer)."""
        proc = self.flwr("supernode", "list", "fedfusion", "--format", "json", timeout=60)
        try:
            return json.loads(proc.stdout[proc.stdout.index("{"):])["nodes"]
        except (ValueError, KeyError):
            return []

    def online(self) -> int:
        return sum(n.get("status") == "online" for n in self.nodes())

    def start_superlink(self) -> subprocess.Popen:
        link = self.procs.start([*CLI, "federation", "start", str(self.op)], env=self.env,
                                log=self.tmp / "superlink.out", cwd=REPO)
        wait_for_port(self.port, timeout=90, proc=link, log=self.tmp / "superlink.out")
        return link

    def join(self, name: str) -> subprocess.Popen:
        return self.procs.start([*CLI, "site", "join", str(self.sites[name]), "--superlink",
                                 f"127.0.0.1:{self.port}", "--root-cert", str(self.op / "certs" / "ca.crt")],
                                env=self.env, log=self.tmp / f"join-{name}.out", cwd=REPO)

    def submit(self, *, federation_id: str, rounds: int, out: Path, watch=None,
               timeout: float = 540) -> subprocess.CompletedProcess:
        """`flwr run` the app against the federation and wait; ``watch()`` is polled every 0.3 s meanwhile."""
        cfg = self.tmp / f"run-{federation_id}.toml"
        cfg.write_text(f'num-server-rounds = {rounds}\nbatch-size = 64\ntext-encoder = "minilm-frozen"\n'
                       'min-train-nodes = 3\nmin-available-nodes = 3\nround-timeout = 300.0\n'
                       f'federation-id = "{federation_id}"\nout-dir = "{out}"\n')
        env = {**self.env, "FLWR_HOME": str(self.op / "flwr-home")}
        log = self.tmp / f"flwr-run-{federation_id}.out"
        runner = self.procs.start([str(BIN / "flwr"), "run", str(REPO), "fedfusion", "--run-config", str(cfg),
                                   "--stream"], env=env, log=log, cwd=REPO)
        deadline = time.monotonic() + timeout
        while runner.poll() is None and time.monotonic() < deadline:
            if watch is not None:
                watch()
            time.sleep(0.3)
        if runner.poll() is None:
            pytest.fail(f"`flwr run` did not finish within {timeout:.0f}s:\n{log.read_text()[-4000:]}")
        return subprocess.CompletedProcess(runner.args, runner.returncode, log.read_text(errors="replace"), "")

    def try_attack(self) -> dict[str, subprocess.CompletedProcess]:
        """A party with ``ca.crt`` and the sites' address, no key: its own connection, app and SuperNode key."""
        home = self.tmp / "attacker"
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "evil"\n\n[superlink.evil]\n'
                                          f'address = "127.0.0.1:{self.port}"\n'
                                          f'root-certificates = "{self.op / "certs" / "ca.crt"}"\n')
        rogue_key = make_site_keypair(home / "rogue_key", comment="rogue").public_key
        commands = {"run": ["run", str(self.rogue), "evil"],
                    "register": ["supernode", "register", str(rogue_key), "evil", "--name", "rogue"],
                    "list-nodes": ["supernode", "list", "evil"], "list-runs": ["ls", "evil"],
                    "stop": ["stop", "1", "evil"], "unregister": ["supernode", "unregister", "1", "evil"]}
        # each must be refused on its own: they are sent at once (each is a `flwr` process of its own)
        with ThreadPoolExecutor(len(commands)) as pool:
            sent = {name: pool.submit(self.flwr, *args, home=home) for name, args in commands.items()}
        return {name: future.result() for name, future in sent.items()}


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def two_free_ports() -> int:
    """A port p with p + 1 free too: the sites' port and the operator's (federation init's default: p + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            if port + 1 < 65536 and s.connect_ex(("127.0.0.1", port + 1)) != 0:
                return port
    raise RuntimeError("no two adjacent free ports")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a `site join` process and everything under it (SuperNode, SuperExec, ClientApp): a crash."""
    for pid in [*descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def ledger_rows(path: Path) -> list[tuple[str, int, str]]:
    """(site, round, event) rows of a ledger, read-only (never creates or locks it for writing)."""
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        try:
            return conn.execute("SELECT site, round, event FROM entries ORDER BY seq").fetchall()
        except sqlite3.OperationalError:
            return []


def run_id(flwr_run_output: str) -> str:
    """The run id ``flwr run`` printed."""
    return flwr_run_output.split("Successfully started run ", 1)[1].split()[0]


@pytest.fixture(scope="session")
def deploy_kit() -> SimpleNamespace:
    """The harness for tests/integration/test_deploy.py (conftest helpers cannot be imported by name)."""
    return SimpleNamespace(Deployment=Deployment, ok=ok, kill_tree=kill_tree, ledger_rows=ledger_rows,
                           run_id=run_id, two_free_ports=two_free_ports, REPO=REPO, BIN=BIN)


# ------------------------------------------------------------------ the rogue app (CONSTRUCTED attack code)
# A Flower app that is NOT fedfusion: publisher ``not-the-operator``. Its ClientApp, if a site ever ran it,
# would write a marker file to ``markers``; its ServerApp sends one ``train`` message to every node and writes
# what came back (error code and reason per node) to ``result``. Both paths are baked into the code, as an
# attacker's would be.
_PYPROJECT = '''\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "rogue"
version = "1.0.0"
description = "not the operator's app"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "not-the-operator"

[tool.flwr.app.components]
serverapp = "rogue.server_app:app"
clientapp = "rogue.client_app:app"

[tool.flwr.app.config]
'''

_CLIENT = '''\
import json, os, socket
from pathlib import Path
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    markers = Path({markers!r})
    markers.mkdir(parents=True, exist_ok=True)
    site = str(context.node_config.get("site-config", "?"))
    (markers / f"client-ran-{{os.getpid()}}").write_text(json.dumps({{"site-config": site, "cwd": os.getcwd()}}))
    return Message(RecordDict({{"m": MetricRecord({{"ran": 1}})}}), reply_to=msg)
'''

_SERVER = '''\
import json
from pathlib import Path
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    nodes = list(grid.get_node_ids())
    out = [Message(RecordDict({{"m": MetricRecord({{"x": 1}})}}), dst_node_id=n, message_type="train")
           for n in nodes]
    replies = list(grid.send_and_receive(out, timeout={timeout}))
    result = {{"nodes": len(nodes), "replies": [
        {{"node": r.metadata.src_node_id, "error": r.has_error(),
          "code": r.error.code if r.has_error() else None,
          "reason": r.error.reason if r.has_error() else ""}} for r in replies]}}
    Path({result!r}).write_text(json.dumps(result))
'''


def _write_rogue_app(folder: Path, *, markers: Path, result: Path, timeout: float = 120.0) -> Path:
    """Write the rogue app into ``folder`` (created); return it."""
    pkg = folder / "rogue"
    pkg.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(_PYPROJECT)
    (pkg / "__init__.py").write_text("")
    (pkg / "client_app.py").write_text(textwrap.dedent(_CLIENT.format(markers=str(markers))))
    (pkg / "server_app.py").write_text(textwrap.dedent(_SERVER.format(result=str(result), timeout=timeout)))
    return folder
