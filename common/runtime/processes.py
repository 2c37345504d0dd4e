"""Start Flower's own processes and stop every one of them, whatever happens.

``flwr run . local`` reuses any SuperLink that answers on fixed ports and never tells its
PID, so the driver starts its own ``flower-superlink`` on free ports and tracks the whole
process tree it spawns (the simulation runtime, Ray's workers) by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Sequence

__all__ = ["free_port", "wait_for_port", "descendants", "terminate", "ProcessSet"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, *, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Block until 127.0.0.1:``port`` accepts connections (or fail clearly)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[0]} exited with code {proc.returncode} before listening on {port}\n{tail}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux /proc walk)."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def terminate(pids: list[int], *, groups: list[int] = (), grace: float = 10.0, poll=None) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s, every pid and process group given, until all are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for g in groups:
            try:
                os.killpg(g, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for pid in pids:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            if poll is not None:
                poll()  # reap our own children so they do not linger as zombies
            time.sleep(0.2)
        if not any(_alive(pid) for pid in pids):
            break


class ProcessSet:
    """Processes started here; :meth:`stop` ends them and every descendant they spawned."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self._seen: set[int] = set()

    def start(self, args: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
        fh = log.open("ab")
        proc = subprocess.Popen(list(args), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True)
        fh.close()
        self.procs.append(proc)
        return proc

    def track(self) -> None:
        """Remember the current descendants (so orphans re-parented to init are still stopped)."""
        for p in self.procs:
            self._seen.update(descendants(p.pid))

    def stop(self, *, grace: float = 10.0) -> None:
        self.track()
        terminate([p.pid for p in self.procs] + sorted(self._seen), groups=[p.pid for p in self.procs],
                  grace=grace, poll=lambda: [p.poll() for p in self.procs])
        for p in self.procs:
            try:
                p.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "ProcessSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
