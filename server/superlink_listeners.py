"""Flower's SuperLink with the sites' Fleet API and the operator's APIs on separate addresses.

Flower 1.42 serves all three APIs of a SuperLink from one FastAPI app on one ``--host``/``--port``
(``flwr/superlink/main.py``; ``--control-api-address`` and ``--fleet-api-address`` are deprecated and
split nothing any more):

* the **Fleet API** (``/v1/fleet/...``): what SuperNodes use; every call is signed with the site's
  registered key (``--enable-supernode-auth``);
* the **Control API** (``/v1/control/...``): ``flwr run``, ``flwr ls``, ``flwr stop``,
  ``flwr supernode register/unregister/list``. Without Flower's account-login add-on it authenticates
  nobody: anyone who can reach it and holds ``ca.crt`` can start a run whose code every site executes;
* the **ServerAppIo/Runtime API** (``/v1/runtime/...``): the operator's own ServerApp process.

So on one port no firewall rule can let the sites in and keep the Control API closed. This module is run
instead of ``flower-superlink``::

    python server/superlink_listeners.py --fleet BIND:PORT -- <flower-superlink arguments>

It parses Flower's own arguments with Flower's own parser, builds Flower's own app and lifespan
(``create_app`` + ``SuperLinkLifespan``, exactly what ``flower-superlink`` runs) and serves that one app
with one uvicorn server (one TLS configuration, one lifespan) on two sockets:

* **the operator's address** (``--host``/``--port`` of Flower's arguments, loopback by default): every API,
  as ``flower-superlink`` would. Flower's SuperExec reaches the ServerAppIo API there too;
* **the sites' address** (``--fleet``): only the paths of Flower's Fleet router. Any other request is
  answered 404 by :class:`FleetOnly`, the outermost layer, before any Flower code sees it, and logged with
  the peer's address.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

__all__ = ["FleetOnly", "fleet_paths", "is_loopback", "main", "split_address"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_REFUSAL = (b'{"detail":"not served on the Fleet address: this SuperLink serves only SuperNodes here; the Control '
            b'and ServerAppIo APIs listen on the operator\'s own address"}')


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any loopback IP (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def fleet_paths() -> frozenset[str]:
    """Every path of Flower's Fleet router (what a SuperNode may call), read from Flower itself."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(route.path for route in router.routes)


class FleetOnly:
    """ASGI wrapper: on the sites' port only Fleet API paths reach the app; anything else gets 404.

    Parameters
    ----------
    app
        Flower's SuperLink app.
    fleet_port
        The local port of the sites' socket (a request's ``scope["server"]`` names the socket it came in on).
    allowed
        Paths served there (:func:`fleet_paths`).
    log
        ``log(level, message)`` for each refused request.
    """

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], *, fleet_port: int,
                 allowed: Iterable[str], log: Callable[[int, str], None]) -> None:
        self.app, self.fleet_port, self.allowed, self.log = app, fleet_port, frozenset(allowed), log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (scope.get("server") or ("", None))[1] == self.fleet_port \
                and scope.get("path") not in self.allowed:
            peer = "%s:%s" % tuple(scope.get("client") or ("?", "?"))
            self.log(WARNING, f"[fleet-only] refused {scope.get('method', 'WS')} {scope.get('path')} from {peer} on "
                              f"the sites' port {self.fleet_port}: only the Fleet API is served there")
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(_REFUSAL)).encode())]})
            await send({"type": "http.response.body", "body": _REFUSAL})
            return
        await self.app(scope, receive, send)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise SystemExit(f"cannot listen on {host}:{port}: {err}") from None
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def main(argv: list[str] | None = None) -> None:
    """Parse ``--fleet BIND:PORT -- <flower-superlink arguments>`` and serve until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(description="Flower's SuperLink; Fleet API alone on the sites' address.")
    ap.add_argument("--fleet", required=True, metavar="BIND:PORT", help="the sites' address (Fleet API only)")
    ap.add_argument("flower", nargs=argparse.REMAINDER, help="-- flower-superlink arguments (--host/--port: "
                                                            "the operator's address, every API)")
    args = ap.parse_args(argv)
    flower_args = args.flower[1:] if args.flower[:1] == ["--"] else args.flower
    fleet_host, fleet_port = split_address(args.fleet)

    import importlib

    import uvicorn
    from flwr.superlink.main import create_app
    from flwr.supercore import log
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.supercore.telemetry import EventType, event

    # the module, not the function of the same name that flwr.superlink.cli exports
    fs = importlib.import_module("flwr.superlink.cli.flower_superlink")

    # Flower's parser reads sys.argv (and names the process by argv[0] in its exit telemetry)
    sys.argv = [str(Path(sys.executable).parent / "flower-superlink"), *flower_args]
    config = fs._parse_superlink_lifespan_config()  # pylint: disable=protected-access
    if (config.host, config.port) == (fleet_host, fleet_port) or config.port == fleet_port:
        raise SystemExit(f"the sites' port and the operator's port must differ (both {fleet_port})")
    log(INFO, "Starting Flower SuperLink")
    event(EventType.RUN_SUPERLINK_ENTER)
    app = FleetOnly(create_app(config, fs.SuperLinkLifespan), fleet_port=fleet_port, allowed=fleet_paths(),
                    log=lambda level, msg: log(level, msg))
    sockets = [_bind(config.host, config.port), _bind(fleet_host, fleet_port)]
    log(INFO, "SuperLink: Control, ServerAppIo and Fleet APIs on %s:%s (the operator's address)", config.host,
        config.port)
    log(INFO, "SuperLink: Fleet API only on %s:%s (the sites' address)", fleet_host, fleet_port)
    if not is_loopback(config.host):
        log(WARNING, "The Control API listens on %s, not on loopback: whoever reaches %s:%s and holds ca.crt can "
                     "start runs that every site executes and register SuperNodes", config.host, config.host,
            config.port)
    # one uvicorn server, as flower-superlink runs (workers=1: the lifespan starts Flower's SuperExec once)
    server = uvicorn.Server(uvicorn.Config(
        app=app, host=config.host, port=config.port, reload=False, access_log=True, workers=1,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile, ssl_certfile=config.ssl_certfile))
    server.run(sockets=sockets)


if __name__ == "__main__":
    sys.path.pop(0)  # run as a script: its folder (server/, the app's own modules) must not shadow anything
    main()
