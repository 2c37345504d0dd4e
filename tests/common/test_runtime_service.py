"""common/runtime/service.py with real processes: graceful stop, waiting for a log line.

The stand-in service behaves like a site's supervisor and its ``flower-supernode``: the top process forwards
SIGTERM to its child; the child, like Flower (``flwr/supercore/exit/signal_handler.py``), restores the default
SIGTERM handler as soon as it gets the first one, then takes a moment to deactivate its node. A second SIGTERM
in that moment kills it before it has (what made ``site stop`` + ``site join`` fail with exit code 305).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from common.runtime.service import flower_env, start_detached, stop_pidfile, wait_for_log

CHILD = '''
import signal, sys, time
from pathlib import Path
done = Path(sys.argv[1])
def on_term(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as Flower does: a second SIGTERM now kills
    time.sleep(0.5)  # deactivating the node at the SuperLink
    done.write_text("deactivated")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("SuperNode ID: 42", flush=True)
while True:
    time.sleep(0.1)
'''

TOP = '''
import signal, subprocess, sys
child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]])
signal.signal(signal.SIGTERM, lambda s, f: child.send_signal(s))  # the supervisor forwards it
sys.exit(child.wait())
'''


def test_stop_lets_the_service_end_its_own_children_first(tmp_path):
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "top.py").write_text(TOP)
    log, pidfile, done = tmp_path / "svc.log", tmp_path / "svc.pid", tmp_path / "done"
    pid = start_detached([sys.executable, str(tmp_path / "top.py"), str(tmp_path / "child.py"), str(done)],
                         env=flower_env(tmp_path / "home"), log=log, pidfile=pidfile)
    assert wait_for_log(log, offset=0, pid=pid, patterns=("SuperNode ID: ",), timeout=30) == "SuperNode ID: "
    assert stop_pidfile(pidfile, grace=10)
    assert done.read_text() == "deactivated"  # one SIGTERM reached the child, through its parent
    stat = Path(f"/proc/{pid}/stat")
    assert not pidfile.exists() and (not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_wait_for_log_reports_the_first_line_seen_or_nothing(tmp_path):
    log = tmp_path / "node.log"
    log.write_text("Exit Code: 305 (an earlier join)\n")
    offset = log.stat().st_size
    script = ("import sys, time; time.sleep(0.3); print(sys.argv[1], flush=True); time.sleep(float(sys.argv[2]))")
    cases = (("Exit Code: 305", "0", "Exit Code: "), ("SuperNode ID: 7", "5", "SuperNode ID: "),
             ("nothing useful", "0", ""))
    for line, linger, expected in cases:
        with log.open("ab") as fh:
            proc = subprocess.Popen([sys.executable, "-c", script, line, linger], stdout=fh)
        started = time.monotonic()
        seen = wait_for_log(log, offset=offset, pid=proc.pid, patterns=("SuperNode ID: ", "Exit Code: "), timeout=20)
        assert seen == expected, (line, seen)
        assert time.monotonic() - started < 15  # it answered when the line came or the process ended
        proc.kill()
        proc.wait()
        offset = log.stat().st_size
