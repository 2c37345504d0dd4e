"""Run one of Flower's long-lived processes (SuperLink, SuperNode) for an operator or a site.

Two ways, both with a log file:

* foreground: the process runs as our child, its output goes to the terminal and to the log;
  Ctrl-C or SIGTERM stops it and every process it spawned (by PID);
* detached: it runs in its own session with its output in the log; its PID goes to a PID file,
  and :func:`stop_pidfile` later stops it and its whole process tree.

Stopping is graceful first: SIGTERM goes to the top process only, once, and it gets time to end its own
children (Flower's SuperNode deactivates its node at the SuperLink on SIGTERM; a second SIGTERM would kill
it before it does, since Flower restores the default handler after the first). Only what is still alive
after that is signalled as a tree (SIGTERM, then SIGKILL).

Built on :mod:`common.runtime.processes`; no Flower imports.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from common.runtime.processes import ProcessSet, descendants, terminate, wait_for_port

__all__ = ["ServiceError", "flower_env", "run_foreground", "start_detached", "stop_pidfile", "read_pid",
           "wait_for_log"]


_EXIT_CODE = re.compile(rb"Exit Code: (\d+)")


class ServiceError(RuntimeError):
    """A service did not start or stop as asked; the message says why and where the log is."""


def flower_env(flwr_home: Path, **extra: str) -> dict[str, str]:
    """Environment for a Flower process: ``FLWR_HOME``, this Python's bin folder first on ``PATH``, offline models.

    Parameters
    ----------
    flwr_home
        Folder Flower keeps its own files in (``config.toml``, installed app bundles).
    **extra
        More variables to set.

    Returns
    -------
    dict[str, str]
        A copy of ``os.environ`` with those variables set.
    """
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)  # flower-superlink/-supernode start flower-superexec etc. by name
    env.update({
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
    })
    # Flower's SuperExec looks for a new message to run every 1 s by default; each message waits half of that
    # on average before its process starts. 0.2 s costs a few loopback requests a second (BENCHMARKS.md).
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.2")
    env.update(extra)
    return env


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(pidfile: Path) -> int | None:
    """The PID in ``pidfile`` if that process is still alive, else ``None``."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def run_foreground(args: Sequence[str], *, env: dict[str, str], log: Path) -> int:
    """Run ``args`` until it exits or we are interrupted; copy its output to the terminal and ``log``.

    Parameters
    ----------
    args
        The command.
    env
        Its environment.
    log
        Log file (appended to).

    Returns
    -------
    int
        Its exit code; Flower's own exit code (e.g. 305) when it logged one and exited non-zero
        (Flower logs ``Exit Code: 305`` but exits with 1); 130 when stopped by Ctrl-C, 143 by SIGTERM.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    procs = ProcessSet()
    proc = subprocess.Popen(list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    procs.procs.append(proc)
    stopped, flower_code = {"code": 0}, {"code": 0}

    def _on_term(signum: int, _frame: object) -> None:
        stopped["code"] = 128 + signum
        raise KeyboardInterrupt

    def _pump() -> None:  # its children may hold the pipe open after it exits: never wait for EOF
        with log.open("ab") as fh:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, b""):
                fh.write(line)
                fh.flush()
                m = _EXIT_CODE.search(line)
                if m:
                    flower_code["code"] = int(m.group(1))
                sys.stdout.buffer.write(line)
                sys.stdout.flush()

    pump = threading.Thread(target=_pump, daemon=True)
    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        pump.start()
        while proc.poll() is None:
            procs.track()
            time.sleep(0.5)
        pump.join(timeout=2.0)
        return (flower_code["code"] or proc.returncode) if proc.returncode else 0
    except KeyboardInterrupt:
        return stopped["code"] or 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        procs.track()
        _end_gracefully(proc.pid, grace=15.0, poll=proc.poll)
        procs.stop()
        pump.join(timeout=2.0)


def start_detached(args: Sequence[str], *, env: dict[str, str], log: Path, pidfile: Path,
                   port: int | None = None, timeout: float = 60.0) -> int:
    """Start ``args`` in its own session, write its PID to ``pidfile``, and wait until it listens on ``port``.

    Parameters
    ----------
    args, env, log
        As for :func:`run_foreground`; output goes only to ``log``.
    pidfile
        Where the PID is written; refused if it names a live process.
    port
        A port on 127.0.0.1 to wait for (``None``: wait only for the process to survive 2 s).
    timeout
        Seconds to wait for ``port``.

    Returns
    -------
    int
        The PID.

    Raises
    ------
    ServiceError
        If one is already running, or it exits before it is up (the log tail is in the message).
    """
    running = read_pid(pidfile)
    if running is not None:
        raise ServiceError(f"already running with PID {running} (PID file {pidfile}); stop it first")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        proc = subprocess.Popen(list(args), env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{proc.pid}\n")
    try:
        if port is not None:
            wait_for_port(port, timeout=timeout, proc=proc, log=log)
        else:
            time.sleep(2.0)
            if proc.poll() is not None:
                raise RuntimeError(f"{args[0]} exited with code {proc.returncode}")
    except (RuntimeError, TimeoutError) as err:
        stop_pidfile(pidfile)
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise ServiceError(f"{err}; log {log}:\n{tail}") from None
    return proc.pid


def stop_pidfile(pidfile: Path, *, grace: float = 15.0) -> bool:
    """Stop the process named in ``pidfile`` and every process it spawned; remove the file.

    Parameters
    ----------
    pidfile
        A file written by :func:`start_detached`.
    grace
        Seconds between SIGTERM and SIGKILL.

    Returns
    -------
    bool
        True if a live process was stopped, False if none was running.
    """
    pid = read_pid(pidfile)
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    tree = descendants(pid)
    _end_gracefully(pid, grace=grace)
    terminate([pid, *tree, *descendants(pid)], groups=[pid], grace=grace)
    pidfile.unlink(missing_ok=True)
    return True


def _end_gracefully(pid: int, *, grace: float, poll=None) -> bool:
    """SIGTERM to ``pid`` alone, once; wait up to ``grace`` s for it to end. True if it did."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if poll is not None:
            poll()  # our own child: reap it, or it stays a zombie
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def wait_for_log(log: Path, *, offset: int, pid: int, patterns: Sequence[str], timeout: float) -> str:
    """Wait until the log, from byte ``offset`` on, holds one of ``patterns``; return the first seen.

    Returns "" if ``pid`` ended, or ``timeout`` s passed, before any did (what it wrote is then in the log).
    """
    deadline = time.monotonic() + timeout
    while True:
        alive = _alive(pid)  # before reading: whatever it wrote before it ended is read below
        try:
            with log.open("rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            text = ""
        hits = [(text.find(p), p) for p in patterns if p in text]
        if hits:
            return min(hits)[1]
        if not alive or time.monotonic() > deadline:
            return ""
        time.sleep(0.25)
