"""The operator's side of a deployed federation: certificates, the SuperLink, site registration.

Everything lives in one folder the operator chooses (``DIR``)::

    DIR/federation.toml        name, host, the sites' port and bind address, the operator's (Control) port and
                               bind address (written by `init`, read by `start`)
    DIR/certs/ca.crt           federation CA certificate: give it to every site
    DIR/certs/ca.key           CA private key (0600): keep it with the operator, never share it
    DIR/certs/server.pem|.key  SuperLink certificate (SAN: localhost, 127.0.0.1, host) and key (0600)
    DIR/flwr-home/config.toml  `[superlink.<name>]` connection, so `FLWR_HOME=DIR/flwr-home flwr run . <name>` works
    DIR/state.db               the SuperLink's database (registered sites, runs, messages)
    DIR/registered-sites.json  site name -> SuperNode ID, registered public key, modalities and max-records: who each
                               node is, for the ServerApp (server/identity.py; `flwr supernode list` shows IDs only)
    DIR/logs/superlink.log     the SuperLink's log;  DIR/superlink.pid while started with --detach

Two addresses (:mod:`server.superlink_listeners` runs Flower's SuperLink on both): the sites' address
``HOST:PORT`` serves only the Fleet API; the operator's address (``127.0.0.1:CONTROL_PORT`` unless
``--control-bind`` says otherwise, with a warning) serves the Control API (``flwr run``, ``flwr ls``,
``flwr stop``, ``flwr supernode ...``) and the ServerAppIo API. ``DIR/flwr-home`` points Flower's CLI at the
operator's address, so only someone on the SuperLink's machine (or with an SSH tunnel to it) starts runs or
registers sites.

Plain glue around Flower's own commands (``flwr supernode register``); no Flower imports.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from common.pki import make_federation_certificates
from common.runtime.service import ServiceError, flower_env, read_pid, run_foreground, start_detached, stop_pidfile
from server import superlink_listeners as listeners
from server.superlink_listeners import is_loopback

__all__ = [
    "DEFAULT_CONTROL_BIND",
    "DEFAULT_PORT",
    "FederationError",
    "FederationLayout",
    "Federation",
    "init_federation",
    "load_federation",
    "superlink_command",
    "start_federation",
    "stop_federation",
    "register_site",
]

DEFAULT_PORT = 9092  # the sites' port: Fleet API only
DEFAULT_CONTROL_BIND = "127.0.0.1"  # the operator's APIs (Control, ServerAppIo): loopback unless chosen otherwise
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")


class FederationError(RuntimeError):
    """An operator command cannot go on; the message says what to do."""


@dataclass(frozen=True)
class FederationLayout:
    """Where each file of a federation folder lives."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "federation.toml"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_cert(self) -> Path:
        return self.certs / "ca.crt"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "superlink.log"

    @property
    def pidfile(self) -> Path:
        return self.root / "superlink.pid"


@dataclass(frozen=True)
class Federation:
    layout: FederationLayout
    name: str  # connection name in flwr-home/config.toml (`flwr run . <name>`)
    host: str  # the name or IP sites use in --superlink HOST:PORT (in the certificate's SANs)
    port: int  # the sites' port: Fleet API only
    bind: str  # the interface the sites' port listens on
    control_port: int  # the operator's port: Control and ServerAppIo APIs
    control_bind: str = DEFAULT_CONTROL_BIND  # the interface the operator's port listens on

    @property
    def address(self) -> str:
        """What the sites connect to."""
        return f"{self.host}:{self.port}"

    @property
    def control_address(self) -> str:
        """What the operator's ``flwr`` connects to (a name in the SuperLink certificate)."""
        host = "127.0.0.1" if is_loopback(self.control_bind) or self.control_bind in ("0.0.0.0", "::") \
            else self.control_bind
        return f"{host}:{self.control_port}"

    @property
    def control_exposed(self) -> bool:
        """True if the Control API listens beyond loopback (a deliberate choice: warned at init and start)."""
        return not is_loopback(self.control_bind)

    def control_warning(self) -> str:
        """The warning printed while the Control API is reachable from the network ("" when it is not)."""
        if not self.control_exposed:
            return ""
        return (f"WARNING: the Control API listens on {self.control_bind}:{self.control_port}, not only on loopback. "
                "Flower 1.42 authenticates nobody there: whoever reaches that port and holds ca.crt can start runs "
                "(code every site is asked to execute), list and stop runs, and register or unregister SuperNodes. "
                "Firewall it to the operator's own machines, or re-run `federation init` without --control-bind and "
                "submit through an SSH tunnel (DEPLOY.md).")


def _bind_for(host: str) -> str:
    return "127.0.0.1" if host in ("127.0.0.1", "localhost") else "0.0.0.0"


def init_federation(folder: Path, *, host: str, port: int = DEFAULT_PORT, name: str = "fedfusion",
                    force: bool = False, control_port: int | None = None,
                    control_bind: str = DEFAULT_CONTROL_BIND) -> Federation:
    """Create a federation folder: CA, SuperLink certificate, Flower connection, settings.

    Parameters
    ----------
    folder
        The operator's federation folder (created).
    host
        Host name or IP the sites will connect to; it goes into the certificate.
    port
        The sites' port (Fleet API only).
    name
        Connection name for ``flwr run . <name>``; letters, digits, ``-``, ``_``.
    force
        Overwrite an existing federation folder's certificates and settings.
    control_port
        The operator's port (Control and ServerAppIo APIs); default ``port + 1``.
    control_bind
        Where the operator's port listens: loopback (default); ``0.0.0.0`` or ``host`` only as a deliberate
        choice (:meth:`Federation.control_warning`).

    Returns
    -------
    Federation
        The new federation.

    Raises
    ------
    FederationError
        If the folder already holds a federation (and not ``force``) or an argument is invalid.
    """
    if not _NAME.match(name):
        raise FederationError(f"--name must be letters, digits, '-' or '_' (got {name!r})")
    if not 0 < port < 65536:
        raise FederationError(f"--port must be 1-65535 (got {port})")
    if not host or any(c in host for c in " /:\"'"):
        raise FederationError(f"--host must be a host name or IPv4 address (got {host!r})")
    control_port = port + 1 if control_port is None else control_port
    if not 0 < control_port < 65536 or control_port == port:
        raise FederationError(f"--control-port must be 1-65535 and differ from --port {port} (got {control_port}): "
                              "the sites' port serves only the Fleet API")
    if not (is_loopback(control_bind) or control_bind in ("0.0.0.0", host)):
        raise FederationError(f"--control-bind must be 127.0.0.1 (the default), 0.0.0.0 or the --host {host!r} "
                              f"(a name in the SuperLink certificate); got {control_bind!r}")
    layout = FederationLayout(Path(folder).expanduser().resolve())
    if layout.settings.exists() and not force:
        raise FederationError(f"{layout.root} already holds a federation ({layout.settings}); "
                              "use another folder, or --force to replace its certificates")
    layout.root.mkdir(parents=True, exist_ok=True)
    make_federation_certificates(layout.certs, host=host, federation=name)
    fed = Federation(layout=layout, name=name, host=host, port=port, bind=_bind_for(host), control_port=control_port,
                     control_bind=control_bind)
    layout.settings.write_text(
        "# Written by `fedfusion federation init`; read by `fedfusion federation start`.\n"
        "[federation]\n"
        f"name = {json.dumps(name)}   # connection name: FLWR_HOME={layout.flwr_home} flwr run . {name}\n"
        f"host = {json.dumps(host)}   # what sites put in --superlink HOST:PORT (in the certificate)\n"
        f"port = {port}   # the sites' port: Fleet API only\n"
        f"bind = {json.dumps(fed.bind)}   # interface the sites' port listens on\n"
        f"control-port = {control_port}   # the operator's port: Control API (flwr run/ls/stop/supernode) and "
        "ServerAppIo\n"
        f"control-bind = {json.dumps(control_bind)}   # 127.0.0.1: only this machine (or an SSH tunnel) reaches it\n")
    layout.flwr_home.mkdir(exist_ok=True)
    (layout.flwr_home / "config.toml").write_text(
        "# Flower CLI connections of this federation (written by `fedfusion federation init`).\n"
        "# The operator's address: the Control API listens there, not on the sites' port.\n"
        "[superlink]\n"
        f"default = {json.dumps(name)}\n\n"
        f"[superlink.{name}]\n"
        f"address = {json.dumps(fed.control_address)}\n"
        f"root-certificates = {json.dumps(str(layout.ca_cert))}\n")
    return fed


def load_federation(folder: Path) -> Federation:
    """Read ``DIR/federation.toml`` (written by :func:`init_federation`)."""
    layout = FederationLayout(Path(folder).expanduser().resolve())
    try:
        raw = tomllib.loads(layout.settings.read_text())["federation"]
        port = int(raw["port"])
        return Federation(layout=layout, name=str(raw["name"]), host=str(raw["host"]), port=port,
                          bind=str(raw.get("bind", _bind_for(str(raw["host"])))),
                          control_port=int(raw.get("control-port", port + 1)),
                          control_bind=str(raw.get("control-bind", DEFAULT_CONTROL_BIND)))
    except FileNotFoundError:
        raise FederationError(f"{layout.root} is not a federation folder (no federation.toml); "
                              "create it with `fedfusion federation init DIR --host HOST`") from None
    except (KeyError, ValueError, tomllib.TOMLDecodeError) as err:
        raise FederationError(f"{layout.settings}: unreadable ({err})") from None


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def superlink_command(fed: Federation) -> list[str]:
    """The SuperLink's command line: Flower's SuperLink (TLS, SuperNode authentication, database in the folder)
    run by :mod:`server.superlink_listeners`, Fleet API alone on the sites' address."""
    c = fed.layout.certs
    return [sys.executable, str(Path(listeners.__file__).resolve()), "--fleet", f"{fed.bind}:{fed.port}", "--",
            "--ssl-ca-certfile", str(c / "ca.crt"), "--ssl-certfile", str(c / "server.pem"),
            "--ssl-keyfile", str(c / "server.key"),
            "--enable-supernode-auth",
            "--database", str(fed.layout.database),
            "--disable-runtime-dependency-installation",
            "--host", fed.control_bind, "--port", str(fed.control_port)]


def start_federation(folder: Path, *, detach: bool = False, timeout: float = 60.0) -> int:
    """Start the SuperLink of a federation folder.

    Parameters
    ----------
    folder
        A folder made by :func:`init_federation`.
    detach
        Run in the background (PID in ``DIR/superlink.pid``) and return once it listens; otherwise run
        in the foreground until Ctrl-C.
    timeout
        Seconds to wait for the port when detaching.

    Returns
    -------
    int
        0 when detached and up; otherwise the SuperLink's exit code.
    """
    fed = load_federation(folder)
    lay = fed.layout
    if read_pid(lay.pidfile) is not None:
        raise FederationError(f"the SuperLink of {lay.root} is already running (PID file {lay.pidfile}); "
                              f"stop it with `fedfusion federation stop {lay.root}`")
    env = flower_env(lay.flwr_home, FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    cmd = superlink_command(fed)
    if fed.control_exposed:
        print(fed.control_warning(), file=sys.stderr, flush=True)
    where = (f"sites: {fed.address} (Fleet API only); operator: {fed.control_address} "
             f"(Control and ServerAppIo APIs{'' if fed.control_exposed else ', this machine only'})")
    if not detach:
        print(f"SuperLink {where} (log {lay.log}); Ctrl-C stops it", flush=True)
        return run_foreground(cmd, env=env, log=lay.log)
    try:  # the operator's port answers on loopback whatever the binding
        pid = start_detached(cmd, env=env, log=lay.log, pidfile=lay.pidfile, port=fed.control_port, timeout=timeout)
    except ServiceError as err:
        raise FederationError(f"the SuperLink did not start: {err}") from None
    print(f"SuperLink running, PID {pid}: {where} (PID file {lay.pidfile}, log {lay.log})")
    return 0


def stop_federation(folder: Path) -> bool:
    """Stop a SuperLink started with ``--detach`` (and every process it spawned). True if one was running."""
    return stop_pidfile(load_federation(folder).layout.pidfile)


def register_site(folder: Path, public_key: Path, *, name: str, modalities: tuple[str, ...] = (),
                  max_records: int | None = None, timeout: float = 60.0) -> int:
    """Register a site's public key with the running SuperLink (``flwr supernode register``).

    Parameters
    ----------
    folder
        The federation folder (its ``flwr-home`` holds the connection).
    public_key
        The site's ``.pub`` file (OpenSSH ECDSA, as written by ``fedfusion site init``).
    name
        The site's name, shown by ``flwr supernode list``.
    modalities
        The modalities the site holds (its ``site.toml`` ``modalities``): the branches its replies may carry.
    max_records
        The site's declared, public ``max-records`` (its ``site.toml`` ``[privacy]``): the weight of its update.
    timeout
        Seconds before giving up on the SuperLink.

    Returns
    -------
    int
        The exit code of ``flwr supernode register`` (0 = registered).
    """
    fed = load_federation(folder)
    key = Path(public_key).expanduser().resolve()
    if not key.is_file():
        raise FederationError(f"public key {key} not found (the site's keys/<name>.pub from `fedfusion site init`)")
    if not _NAME.match(name):
        raise FederationError(f"--name must be letters, digits, '-' or '_' (got {name!r})")
    if not modalities or "tabular" not in modalities or any(m not in ("tabular", "text", "image") for m in modalities):
        raise FederationError(f"--modalities must list the site's modalities, with tabular, e.g. tabular,text "
                              f"(its site.toml 'modalities'); got {','.join(modalities)!r}")
    if max_records is None or max_records < 1:
        raise FederationError(f"--max-records must be the site's declared max-records (its site.toml [privacy], a "
                              f"whole number >= 1); got {max_records!r}")
    cmd = [_bin("flwr"), "supernode", "register", str(key), fed.name, "--name", name]
    try:
        done = subprocess.run(cmd, env=flower_env(fed.layout.flwr_home), capture_output=True, text=True,
                              timeout=timeout, cwd=fed.layout.root)
    except subprocess.TimeoutExpired:
        raise FederationError(f"no answer from the SuperLink at {fed.address} within {timeout:.0f}s; "
                              f"is it running? (`fedfusion federation start {fed.layout.root}`)") from None
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode == 0 and (m := re.search(r"SuperNode (\d+) registered", done.stdout)):
        record = fed.layout.root / "registered-sites.json"
        _record_site(record, name=name, node_id=int(m.group(1)), key=key, modalities=modalities,
                     max_records=max_records)
        print(f"site {name} = SuperNode {m.group(1)} (recorded in {record})")
    return done.returncode


def _record_site(path: Path, *, name: str, node_id: int, key: Path, modalities: tuple[str, ...],
                 max_records: int) -> None:
    """Keep the operator's map from site name to SuperNode ID (Flower 1.42's list shows IDs, not names), with what
    the server binds to that node: the registered key, the site's modalities and its public max-records."""
    import hashlib
    from datetime import datetime, timezone

    from common.storage import atomic_write_text

    sites = json.loads(path.read_text()) if path.is_file() else {}
    sites[name] = {"node-id": node_id, "public-key": str(key),
                   "key-sha256": hashlib.sha256(key.read_bytes()).hexdigest(),
                   "public-key-line": " ".join(key.read_text().split()[:2]),
                   "modalities": list(modalities), "max-records": int(max_records),
                   "registered-at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(path, json.dumps(sites, indent=2, sort_keys=True) + "\n")
