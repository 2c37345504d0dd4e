"""Warm start: each message's ``flwr-clientapp`` is forked from a Python that has already imported its libraries.

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process, which imports
Flower's runner, torch, Opacus and scikit-learn again: about 6 s of every round on our machines
(BENCHMARKS.md). Flower has no persistent ClientApp process for local sites (its warm pools are for
Kubernetes only), so with ``warm-start = true`` (the site default) ``fedfusion site join`` runs the
SuperNode under this supervisor:

1. it starts ``flower-supernode`` with ``<state-dir>/warm/bin`` first on its ``PATH``. Flower's SuperExec
   starts ``flwr-clientapp`` by name, so it finds the *launcher* written there;
2. it imports the libraries once (:data:`PRELOAD`: third-party only, never the app's own packages,
   which Flower loads from each run's app bundle), then listens on ``<state-dir>/warm/clientapp.sock``
   (folder 0700, and the peer must run as the same user);
3. the launcher hands over its arguments, environment, working folder and standard streams; the
   supervisor forks a child that runs Flower's own ``flwr-clientapp`` entry point with exactly those,
   and tells the launcher the child's PID and, later, its exit status. The launcher forwards signals
   to the child and exits with the child's code.

Without a warm supervisor (``warm-start = false``, or while it is still importing), the launcher execs Flower's
own ``flwr-clientapp`` code through :mod:`client.app_gate`: the cold path, same behaviour.

Either way, the launcher stands in front of every message-process: ``site join`` always runs the SuperNode
under this supervisor (with ``warm-start = false`` it only writes the launchers and sets ``PATH``), and each
message-process calls ``app_gate.guard`` before any of Flower's ClientApp code runs, so a run whose app the
site did not approve is refused before its code is unpacked (:mod:`client.app_gate`). Every other program
Flower's SuperExec may start by name (:data:`REFUSED_COMMANDS`) is a stub there that refuses.

Each child is a fresh fork of a process that has only imported modules, so nothing of one message (data,
model, random draws) reaches the next; DP noise seeds come from OS entropy in the child
(``client/dp_random.py``). CUDA is never initialised here.

This file runs as a script (``python client/warm_start.py``), never as ``client.warm_start``: importing the
``client`` package in the supervisor would make every child load the installed copy of the app instead of
the run's app bundle. Standard library only.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import NoReturn

SOCKET_ENV = "FEDFUSION_WARM_SOCKET"  # the supervisor's socket; set for the SuperNode and what it starts
LAUNCHED_AT_ENV = "FEDFUSION_LAUNCHED_AT"  # wall-clock start of the launcher (client/timing.py)
ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"  # Flower's own flwr-clientapp main
#: what every message-process needs: Flower's runner, torch, Opacus (DP training), metrics, pandas (site data)
PRELOAD = ("flwr.supernode.cli.flwr_clientapp", "torch", "opacus", "sklearn.metrics", "pandas")
#: the app's own top-level packages: Flower imports them from the run's app bundle, so they must not be preloaded
APP_PACKAGES = ("client", "common", "server", "simulations", "benchmarks")
SOCKET_NAME = "clientapp.sock"
GATE = Path(__file__).resolve().with_name("app_gate.py")  # client/app_gate.py: loaded by path, never as client.*
#: every program but flwr-clientapp that Flower's SuperExec starts by name (its TASK_TYPE_TO_COMMAND)
REFUSED_COMMANDS = ("flwr-agentapp", "flwr-model", "flwr-connector", "flwr-serverapp", "flwr-simulation")
_HEADER = struct.Struct("!I")  # length of the JSON request that follows the header (and the 3 fds)


def _say(msg: str) -> None:
    print(f"[warm-start] {msg}", flush=True)


# ---------------------------------------------------------------- the launcher (one per message)
def _write_script(path: Path, body: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"#!{sys.executable} -IS\n# Written by `fedfusion site join` (client/warm_start.py).\n"
                   f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n{body}")
    tmp.chmod(0o755)
    os.replace(tmp, path)


def write_launcher(bindir: Path, *, real: Path, approved: Path, entry: str = ENTRY) -> Path:
    """Write ``bindir/flwr-clientapp`` (warm path if the supervisor answers, else Flower's own through the gate)
    and a refusing stub for every other command of :data:`REFUSED_COMMANDS`."""
    bindir.mkdir(parents=True, exist_ok=True)
    script = bindir / "flwr-clientapp"
    _write_script(script, "# This message's flwr-clientapp: a fork of the site's warm supervisor, or Flower's own\n"
                          "# flwr-clientapp when there is none; only the app the site approved (client/app_gate.py).\n"
                          f"import warm_start\nwarm_start.launch({str(real)!r}, approved={str(approved)!r}, "
                          f"entry={entry!r})\n")
    for command in REFUSED_COMMANDS:
        _write_script(bindir / command, f"import app_gate\napp_gate.refuse_task({command!r})\n")
    return script


def _connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    here = os.getcwd()
    try:
        os.chdir(path.parent)  # a relative name: socket paths are limited to 108 bytes
        sock.connect(path.name)
    except OSError:
        sock.close()
        raise
    finally:
        os.chdir(here)
    return sock


def _read_line(sock: socket.socket) -> dict | None:
    """One JSON line from the supervisor; None when it closed the connection (or reset it) first."""
    buf = b""
    while not buf.endswith(b"\n"):
        try:
            chunk = sock.recv(4096)
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
    return json.loads(buf)


def _exec_cold(real: str, approved: str, entry: str) -> NoReturn:
    """Become Flower's own ``flwr-clientapp`` (``real``; ``entry`` is its main), behind the gate (``app_gate.main``)."""
    os.execv(sys.executable, [sys.executable, str(GATE), "--approved", approved, "--real", real, "--entry", entry,
                              "--", *sys.argv[1:]])


def launch(real: str, *, approved: str, entry: str = ENTRY) -> NoReturn:
    """Body of the launcher: hand this process's job to the supervisor, or become ``real`` behind the gate."""
    launched = time.time()
    argv = [real, *sys.argv[1:]]
    path = os.environ.get(SOCKET_ENV)
    try:
        sock = _connect(Path(path)) if path else None
    except OSError:
        sock = None
    if sock is None:  # cold path: Flower's own flwr-clientapp in this very process
        _exec_cold(real, approved, entry)
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV} | {LAUNCHED_AT_ENV: repr(launched)}
    payload = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd()}).encode()
    try:
        socket.send_fds(sock, [_HEADER.pack(len(payload))], [0, 1, 2])
        sock.sendall(payload)
    except OSError:  # the supervisor forks only after the whole request: nothing runs yet, so run cold
        sock.close()
        _exec_cold(real, approved, entry)
    started = _read_line(sock)
    if not started or "pid" not in started:  # never run cold now: a child may have started after all
        print(f"[warm-start] the supervisor did not start this message's process: {started}", file=sys.stderr)
        sys.exit(1)
    pid = int(started["pid"])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    done = _read_line(sock)
    code = 1 if not done else int(done.get("exit", 1))
    if code < 0:  # the child died of a signal: so do we
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


# ---------------------------------------------------------------- the supervisor (one per site)
def _recv_request(conn: socket.socket) -> tuple[dict, list[int]]:
    if struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[1] != os.getuid():
        raise PermissionError("peer runs as another user")
    header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
    try:
        if len(header) != _HEADER.size or len(fds) != 3:
            raise ValueError("malformed request header")
        (length,) = _HEADER.unpack(header)
        body = b""
        while len(body) < length:
            chunk = conn.recv(length - len(body))
            if not chunk:
                raise ValueError("request cut short")
            body += chunk
        return json.loads(body), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _run_child(request: dict, fds: list[int], entry: str, guard) -> NoReturn:
    """In the forked child: become the launcher's process (streams, folder, environment, argv), ``guard()``,
    then run ``entry``."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        guard()  # before any of Flower's ClientApp code runs: only the approved app is installed
        module, func = entry.split(":")
        getattr(importlib.import_module(module), func)()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - report whatever it was, then exit like a crashed process
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


class Supervisor:
    """Runs ``command`` (the SuperNode) and forks message-processes for launchers until it exits."""

    def __init__(self, command: list[str], *, state_dir: Path, real: Path, approved: Path, warm: bool = True,
                 preload=PRELOAD, entry: str = ENTRY):
        self.command, self.real, self.preload, self.entry = command, real, tuple(preload), entry
        self.approved, self.warm = approved, warm
        self.gate = _load_gate()
        self.dir = state_dir / "warm"
        self.children: dict[int, socket.socket] = {}  # forked PID -> its launcher's connection
        self.listener: socket.socket | None = None

    def run(self) -> int:
        import subprocess

        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        (self.dir / SOCKET_NAME).unlink(missing_ok=True)  # a stale one from a killed supervisor
        write_launcher(self.dir / "bin", real=self.real, approved=self.approved, entry=self.entry)
        env = dict(os.environ)
        env["PATH"] = f"{self.dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env[SOCKET_ENV] = str(self.dir / SOCKET_NAME)
        node = subprocess.Popen(self.command, env=env)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda signum, _frame: node.send_signal(signum))
        try:
            if not self.warm:
                _say("warm start is off: each message runs Flower's own flwr-clientapp, behind the app gate")
            elif self._preload(node):
                self._listen()
            while node.poll() is None:
                if self.listener is None:  # warm start off: just keep the SuperNode company
                    time.sleep(0.2)
                elif select.select([self.listener], [], [], 0.2)[0]:
                    self._fork_one()
                self._reap()
            return node.returncode if node.returncode >= 0 else 128 - node.returncode  # killed: 128 + signal
        finally:
            self._shutdown()

    def _preload(self, node) -> bool:
        t0 = time.monotonic()
        for name in self.preload:
            if node.poll() is not None:
                return False
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - the cold path still works without it
                _say(f"could not import {name} ({type(err).__name__}: {err}); message processes import it themselves")
        leaked = sorted(p for p in APP_PACKAGES if p in sys.modules)
        if leaked:
            _say(f"a preloaded library imported the app's own packages {leaked}; warm start is off "
                 "(children would run them instead of the run's app bundle)")
            return False
        _say(f"imported {', '.join(self.preload)} in {time.monotonic() - t0:.1f} s; message processes fork "
             f"from here ({self.dir / SOCKET_NAME})")
        return True

    def _listen(self) -> None:
        here = os.getcwd()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.chdir(self.dir)  # a relative name: socket paths are limited to 108 bytes
            sock.bind(SOCKET_NAME)
            os.chmod(SOCKET_NAME, 0o600)
        finally:
            os.chdir(here)
        sock.listen(16)
        self.listener = sock

    def _fork_one(self) -> None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(5.0)
            request, fds = _recv_request(conn)
            conn.settimeout(None)
        except (OSError, ValueError, PermissionError) as err:
            _say(f"refused a launcher: {err}")
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            for other in self.children.values():
                other.close()
            conn.close()
            _run_child(request, fds, self.entry, guard=lambda: self.gate.guard(self.approved))
        for fd in fds:
            os.close(fd)
        self.children[pid] = conn
        _say(f"message process PID {pid} forked for {' '.join(request['argv'][:1])}")
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:
            pass  # the launcher is gone; the child runs on and is reaped like any other

    def _reap(self) -> None:
        for pid in list(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 1 << 8
            if not done:
                continue
            conn = self.children.pop(pid)
            try:
                conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            except OSError:
                pass
            conn.close()

    def _shutdown(self) -> None:
        if self.listener is not None:
            self.listener.close()
            (self.dir / SOCKET_NAME).unlink(missing_ok=True)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)


def _load_gate():
    """client/app_gate.py as module :data:`app_gate.MODULE_NAME` (not ``client.app_gate``: see the module doc)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fedfusion_app_gate", GATE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def supervisor_command(command: list[str], *, state_dir: Path, approved: Path, warm: bool = True) -> list[str]:
    """The command line that runs ``command`` (``flower-supernode ...``) under this supervisor."""
    return [sys.executable, str(Path(__file__).resolve()), "--state-dir", str(state_dir), "--approved",
            str(approved), *([] if warm else ["--cold"]), "--", *command]


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Run a SuperNode whose message-processes fork from a warm Python.")
    ap.add_argument("--state-dir", type=Path, required=True, help="the site's state folder (warm/ goes there)")
    ap.add_argument("--real", type=Path, default=Path(sys.executable).parent / "flwr-clientapp",
                    help="Flower's flwr-clientapp (the cold path)")
    ap.add_argument("--approved", type=Path, required=True, help="the site's approved-app.json (client/app_gate.py)")
    ap.add_argument("--cold", action="store_true", help="no warm start: launchers run Flower's own flwr-clientapp")
    ap.add_argument("--preload", default=",".join(PRELOAD), help="modules imported once, comma-separated")
    ap.add_argument("--entry", default=ENTRY, help="module:function each child runs")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- flower-supernode ...")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the SuperNode command after --")
    # a child must see what a cold flwr-clientapp sees: its own script folder first on sys.path, not ours
    sys.path[0] = str(args.real.parent)
    return Supervisor(command, state_dir=args.state_dir.resolve(), real=args.real, approved=args.approved.resolve(),
                      warm=not args.cold, preload=[m for m in args.preload.split(",") if m], entry=args.entry).run()


if __name__ == "__main__":
    sys.exit(main())
