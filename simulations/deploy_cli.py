"""``fedfusion federation ...`` (the operator) and ``fedfusion site ...`` (a partner site's IT staff).

Argument parsing only; the work is done in :mod:`server.federation_ops`, :mod:`client.site_ops`
and :mod:`client.site_check`. Imports are lazy so ``fedfusion --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_deploy_commands"]


def _fail(cmd: str, err: Exception) -> int:
    print(f"fedfusion {cmd}: {err}", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------ operator
def _federation_init(a: argparse.Namespace) -> int:
    from server.federation_ops import DEFAULT_PORT, FederationError, init_federation

    try:
        fed = init_federation(a.dir, host=a.host, port=a.port or DEFAULT_PORT, name=a.name, force=a.force,
                              control_port=a.control_port, control_bind=a.control_bind)
    except FederationError as err:
        return _fail("federation init", err)
    lay = fed.layout
    print(f"federation '{fed.name}' in {lay.root}\n"
          f"  CA certificate (give to every site): {lay.ca_cert}\n"
          f"  SuperLink address for sites:         {fed.address} (Fleet API only)\n"
          f"  operator's address (Control API):    {fed.control_address}"
          f"{'' if fed.control_exposed else ' (this machine only; elsewhere: an SSH tunnel, DEPLOY.md)'}\n"
          f"  Flower connection:                   FLWR_HOME={lay.flwr_home} flwr run . {fed.name}\n"
          f"next: fedfusion federation start {lay.root} --detach")
    if fed.control_exposed:
        print(fed.control_warning(), file=sys.stderr)
    return 0


def _federation_start(a: argparse.Namespace) -> int:
    from server.federation_ops import FederationError, start_federation

    try:
        return start_federation(a.dir, detach=a.detach)
    except FederationError as err:
        return _fail("federation start", err)


def _federation_stop(a: argparse.Namespace) -> int:
    from server.federation_ops import FederationError, stop_federation

    try:
        print("SuperLink stopped" if stop_federation(a.dir) else "no SuperLink was running")
    except FederationError as err:
        return _fail("federation stop", err)
    return 0


def _federation_register(a: argparse.Namespace) -> int:
    from server.federation_ops import FederationError, register_site

    try:
        return register_site(a.dir, a.public_key, name=a.name)
    except FederationError as err:
        return _fail("federation register", err)


# ---------------------------------------------------------------------------------- site
def _site_init(a: argparse.Namespace) -> int:
    from client.record_bound import max_records_line
    from client.site_ops import SiteError, SiteInit, init_site

    select = tuple(a.select.split("=", 1)) if a.select and "=" in a.select else None
    if a.select and select is None:
        return _fail("site init", f"--select {a.select!r}: expected FEATURE=VALUE, e.g. hospital=cleveland")
    req = SiteInit(folder=a.dir, name=a.name, source=a.source, data_dir=a.data_dir, mapping=a.mapping or "",
                   select=select, modalities=tuple(m for m in a.modalities.split(",") if m),
                   device=a.device, target_epsilon=a.target_epsilon, epsilon_budget=a.epsilon_budget,
                   delta=a.delta, state_dir=a.state_dir, example_data=a.example_data or "", max_records=a.max_records)
    try:
        config, pub = init_site(req, force=a.force)
    except SiteError as err:
        return _fail("site init", err)
    print(f"site config:  {config}  (edit it, then: fedfusion site check {config})\n"
          f"public key:   {pub}  (send this file to the federation operator)\n"
          f"private key:  {pub.with_suffix('')}  (0600; never leaves this machine)\n"
          f"max-records:  {max_records_line(config)}")
    return 0


def _site_check(a: argparse.Namespace) -> int:
    from client.site_check import check_json, check_site, format_check

    report = check_site(a.config, scenario=a.scenario)
    print(check_json(report) if a.json else format_check(report))
    return 0 if report.ok else 1


def _site_join(a: argparse.Namespace) -> int:
    from client.site_ops import SiteError, join_federation

    try:
        code = join_federation(a.config, superlink=a.superlink, root_cert=a.root_cert, key=a.key, port=a.port,
                               detach=a.detach, wait=a.wait)
    except SiteError as err:
        return _fail("site join", err)
    return code if code < 256 else 1  # Flower's own codes (305: key not registered) do not fit an exit status


def _site_stop(a: argparse.Namespace) -> int:
    from client.site_ops import SiteError, stop_site

    try:
        print("SuperNode stopped" if stop_site(a.config) else "no SuperNode of this site was running")
    except SiteError as err:
        return _fail("site stop", err)
    return 0


def add_deploy_commands(sub: argparse._SubParsersAction) -> None:
    """Add the ``federation`` and ``site`` command groups to the ``fedfusion`` parser."""
    fed = sub.add_parser("federation", help="operator: certificates, SuperLink, site registration")
    fsub = fed.add_subparsers(dest="federation_command", required=True)
    p = fsub.add_parser("init", help="create DIR: federation CA, SuperLink certificate, Flower connection")
    p.add_argument("dir", type=Path)
    p.add_argument("--host", required=True, help="host name or IP sites connect to (put in the certificate)")
    p.add_argument("--port", type=int, default=None, help="the sites' port: Fleet API only (default 9092)")
    p.add_argument("--control-port", type=int, default=None,
                   help="the operator's port: Control API (flwr run/ls/stop/supernode) and ServerAppIo "
                        "(default: --port + 1)")
    p.add_argument("--control-bind", default="127.0.0.1", metavar="ADDR",
                   help="where the operator's port listens (default 127.0.0.1: this machine only). 0.0.0.0 or "
                        "HOST expose the Control API to the network: a deliberate choice, warned about")
    p.add_argument("--name", default="fedfusion", help="connection name for `flwr run . NAME` (default fedfusion)")
    p.add_argument("--force", action="store_true", help="replace the certificates of an existing DIR")
    p.set_defaults(func=_federation_init)
    p = fsub.add_parser("start", help="start the SuperLink (TLS, SuperNode authentication, Control API on loopback)")
    p.add_argument("dir", type=Path)
    p.add_argument("--detach", action="store_true", help="run in the background (PID in DIR/superlink.pid)")
    p.set_defaults(func=_federation_start)
    p = fsub.add_parser("stop", help="stop a SuperLink started with --detach")
    p.add_argument("dir", type=Path)
    p.set_defaults(func=_federation_stop)
    p = fsub.add_parser("register", help="admit a site: register its public key with the running SuperLink")
    p.add_argument("dir", type=Path)
    p.add_argument("public_key", type=Path, help="the site's keys/site_ecdsa.pub")
    p.add_argument("--name", required=True, help="the site's name")
    p.set_defaults(func=_federation_register)

    site = sub.add_parser("site", help="partner site: config and key pair, data check, join / stop")
    ssub = site.add_subparsers(dest="site_command", required=True)
    p = ssub.add_parser("init", help="write DIR/site.toml (commented template) and the site's key pair")
    p.add_argument("dir", type=Path)
    p.add_argument("--name", required=True, help="site name (letters, digits, - or _)")
    p.add_argument("--source", default="mapped", choices=("mapped",))
    p.add_argument("--mapping", default=None, help="mapping TOML of the site's file, relative to the data folder")
    p.add_argument("--select", default=None, metavar="FEATURE=VALUE",
                   help="keep only the rows whose feature has this value (a file holding several sites)")
    p.add_argument("--data-dir", type=Path, default=None, help="the site's data folder (default DIR/data)")
    p.add_argument("--state-dir", type=Path, default=None, help="ledger, caches, logs (default DIR/state)")
    p.add_argument("--modalities", default="tabular,text", help="comma-separated (default tabular,text)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--target-epsilon", type=float, default=4.0)
    p.add_argument("--epsilon-budget", type=float, default=8.0)
    p.add_argument("--delta", type=float, default=0.0, help="0 = default strictly below 1/max-records")
    p.add_argument("--max-records", type=int, default=None,
                   help="PUBLIC upper bound on the site's training records (default: proposed from the data, "
                        "rounded up)")
    p.add_argument("--example-data", metavar="HOSPITAL", default=None,
                   help="copy the repository's GENERATED example export of HOSPITAL into the data folder (demo)")
    p.add_argument("--force", action="store_true", help="overwrite site.toml and make a new key pair")
    p.set_defaults(func=_site_init)
    p = ssub.add_parser("check", help="validate the site config and data; sends nothing")
    p.add_argument("config", type=Path)
    p.add_argument("--scenario", type=Path, default=None,
                   help="the federation's scenario TOML: compare the site's modalities and schema with it")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_site_check)
    p = ssub.add_parser("join", help="start this site's flower-supernode (TLS, authenticated)")
    p.add_argument("config", type=Path)
    p.add_argument("--superlink", required=True, metavar="HOST:PORT")
    p.add_argument("--root-cert", type=Path, required=True, help="the federation's CA certificate (ca.crt)")
    p.add_argument("--key", type=Path, default=None, help="private key (default keys/site_ecdsa next to CONFIG)")
    p.add_argument("--port", type=int, default=None, help="local ClientAppIo port (default: a free one)")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (PID in <state-dir>), once the SuperLink has activated the node")
    p.add_argument("--wait", type=float, default=90.0,
                   help="seconds --detach waits for the activation before it gives up (default 90)")
    p.set_defaults(func=_site_join)
    p = ssub.add_parser("stop", help="stop a SuperNode started with join --detach")
    p.add_argument("config", type=Path)
    p.set_defaults(func=_site_stop)
