"""client/warm_start.py with real processes: a stand-in SuperNode runs ``flwr-clientapp`` from its PATH.

The stand-ins replace Flower (its flwr-clientapp entry point and the SuperNode) so that each case takes
about a second; the deployment tests (tests/integration/test_deploy.py) run the real ones through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from client import warm_start

SCRIPT = Path(warm_start.__file__).resolve()

GUARDED = '''
def guarded():  # did client/app_gate.guard wrap Flower's ClientApp install before this entry ran?
    import sys
    runner = sys.modules.get("flwr.supernode.runtime.run_clientapp")
    return getattr(getattr(runner, "install_from_fab", None), "__name__", "") == "install_if_approved"
'''

ENTRY = GUARDED + '''
import json, os, sys, time
def main():
    print(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(), "pid": os.getpid(), "ppid": os.getppid(),
                      "probe": os.environ.get("PROBE"), "socket_env": "FEDFUSION_WARM_SOCKET" in os.environ,
                      "launched": os.environ.get("FEDFUSION_LAUNCHED_AT"), "preloaded": "fake_preload" in sys.modules,
                      "app": [m for m in ("client", "common", "warm_start") if m in sys.modules],
                      "path0": sys.path[0], "guarded": guarded()}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if sys.argv[1] == "sleep":
        time.sleep(60)
    sys.exit(int(sys.argv[1]))
'''

# the stand-in SuperNode: runs `flwr-clientapp` by name, as Flower's SuperExec does, and records what happened
NODE = '''
import json, os, signal, subprocess, sys, time
from pathlib import Path
out, work = Path(sys.argv[1]), Path(sys.argv[2])
sock = os.environ.get("FEDFUSION_WARM_SOCKET")
deadline = time.time() + 30
while sock and not Path(sock).exists() and time.time() < deadline:
    time.sleep(0.05)
env = dict(os.environ, PROBE="from-the-node")
runs = []
for code in ("0", "3"):
    p = subprocess.run(["flwr-clientapp", code, "--token", "t"], cwd=work, env=env, capture_output=True, text=True)
    runs.append({"rc": p.returncode, "stdout": p.stdout, "stderr": p.stderr})
p = subprocess.Popen(["flwr-clientapp", "sleep"], cwd=work, env=env, stdout=subprocess.PIPE, text=True)
first = json.loads(p.stdout.readline())
p.send_signal(signal.SIGTERM)
runs.append({"rc": p.wait(timeout=20), "first": first})
out.write_text(json.dumps({"node_pid": os.getpid(), "runs": runs}))
sys.exit(5)
'''


@pytest.fixture
def stand_ins(tmp_path):
    (tmp_path / "fake_entry.py").write_text(ENTRY)
    (tmp_path / "fake_cold.py").write_text(GUARDED + "import sys\ndef main():\n    print('cold', *sys.argv[1:], "
                                                     "'guarded' if guarded() else 'UNGUARDED')\n    sys.exit(7)\n")
    (tmp_path / "fake_preload.py").write_text("X = 1\n")
    (tmp_path / "node.py").write_text(NODE)
    real = tmp_path / "real-flwr-clientapp"
    real.write_text('#!/bin/sh\necho "cold $*"\nexit 7\n')
    real.chmod(0o755)
    (tmp_path / "work dir").mkdir()
    return tmp_path, real


def _supervise(tmp: Path, real: Path) -> tuple[subprocess.CompletedProcess, dict]:
    env = dict(os.environ, PYTHONPATH=str(tmp))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(tmp / "state"), "--real", str(real),
                           "--approved", str(tmp / "approved-app.json"),
                           "--preload", "fake_preload", "--entry", "fake_entry:main", "--",
                           sys.executable, str(tmp / "node.py"), str(tmp / "out.json"), str(tmp / "work dir")],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc, json.loads((tmp / "out.json").read_text())


def test_children_are_forked_from_the_supervisor_and_behave_like_the_launched_process(stand_ins):
    tmp, real = stand_ins
    proc, out = _supervise(tmp, real)
    assert proc.returncode == 5, proc.stdout + proc.stderr  # the SuperNode's own exit code
    ok, failed, killed = out["runs"]
    for run, code in ((ok, 0), (failed, 3)):
        assert run["rc"] == code
        seen = json.loads(run["stdout"])
        assert seen["argv"] == [str(code), "--token", "t"]
        assert seen["cwd"] == str(tmp / "work dir") and seen["probe"] == "from-the-node"
        assert seen["preloaded"] and seen["app"] == [] and not seen["socket_env"]
        assert seen["ppid"] != out["node_pid"]  # forked by the supervisor, not started by the node
        assert float(seen["launched"]) > 0
        assert seen["path0"] == str(real.parent)  # what a cold flwr-clientapp would have first on sys.path
        assert seen["guarded"]  # the app gate was in place before Flower's entry point ran
        assert run["stderr"] == "to stderr\n"  # the launcher's own streams
    assert killed["rc"] == -15  # SIGTERM to the launcher reached the child; the launcher died of it too
    assert "message process PID" in proc.stdout
    assert not (tmp / "state" / "warm" / warm_start.SOCKET_NAME).exists()  # removed on exit
    assert oct((tmp / "state" / "warm").stat().st_mode & 0o777) == "0o700"


def test_without_a_supervisor_the_launcher_runs_flower_own_clientapp_behind_the_gate(stand_ins, tmp_path):
    tmp, real = stand_ins
    bindir = warm_start.write_launcher(tmp / "bin", real=real, approved=tmp / "approved-app.json",
                                       entry="fake_cold:main").parent
    for sock in ("", str(tmp / "nobody-listens.sock")):
        env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", FEDFUSION_WARM_SOCKET=sock)
        p = subprocess.run(["flwr-clientapp", "--token", "t"], env=env, capture_output=True, text=True, timeout=60)
        assert (p.returncode, p.stdout) == (7, "cold --token t guarded\n"), p.stderr


def test_a_module_that_fails_to_import_is_skipped_and_children_still_fork(stand_ins):
    tmp, real = stand_ins
    env = dict(os.environ, PYTHONPATH=str(tmp))
    (tmp / "node.py").write_text(textwrap.dedent('''
        import os, subprocess, sys, time
        time.sleep(1.0)
        p = subprocess.run(["flwr-clientapp", "x"], capture_output=True, text=True)
        print("node saw:", p.returncode, "ValueError" in p.stderr)
    '''))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(tmp / "state"), "--real", str(real),
                           "--approved", str(tmp / "approved-app.json"),
                           "--preload", "no_such_module_anywhere", "--entry", "fake_entry:main", "--",
                           sys.executable, str(tmp / "node.py")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "could not import no_such_module_anywhere" in proc.stdout
    # it listens anyway and forks: the stand-in entry's int("x") raises, and a child that raises exits 1
    assert "node saw: 1 True" in proc.stdout, proc.stdout


def test_the_supervisor_refuses_to_preload_the_app_packages(stand_ins):
    tmp, real = stand_ins
    (tmp / "node.py").write_text("import time; time.sleep(0.5)\n")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(tmp / "state"), "--real", str(real),
                           "--approved", str(tmp / "approved-app.json"),
                           "--preload", "client", "--", sys.executable, str(tmp / "node.py")],
                          env=dict(os.environ, PYTHONPATH=str(SCRIPT.parents[1])), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    assert "warm start is off" in proc.stdout
    assert not (tmp / "state" / "warm" / warm_start.SOCKET_NAME).exists()


def test_with_warm_start_off_the_launchers_still_run_every_message_behind_the_gate(stand_ins):
    """`warm-start = false` in site.toml: the supervisor only writes the launchers; each message runs cold."""
    tmp, real = stand_ins
    (tmp / "node.py").write_text(textwrap.dedent('''
        import os, subprocess, sys
        p = subprocess.run(["flwr-clientapp", "--token", "t"], capture_output=True, text=True)
        print("node saw:", p.returncode, p.stdout.strip(), "socket" if os.environ.get("FEDFUSION_WARM_SOCKET") and
              os.path.exists(os.environ["FEDFUSION_WARM_SOCKET"]) else "no socket")
    '''))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--state-dir", str(tmp / "state"), "--real", str(real),
                           "--approved", str(tmp / "approved-app.json"), "--cold", "--entry", "fake_cold:main", "--",
                           sys.executable, str(tmp / "node.py")], env=dict(os.environ, PYTHONPATH=str(tmp)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warm start is off" in proc.stdout
    assert "node saw: 7 cold --token t guarded no socket" in proc.stdout
    assert {p.name for p in (tmp / "state" / "warm" / "bin").iterdir()} == {"flwr-clientapp",
                                                                            *warm_start.REFUSED_COMMANDS}
