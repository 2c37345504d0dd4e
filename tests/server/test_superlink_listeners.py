"""server/superlink_listeners.py: what the sites' port lets through, read from Flower's own routers.

The real SuperLink on two addresses, and an attacker on the sites' one: tests/integration/test_deploy.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.superlink_listeners import FleetOnly, fleet_paths, is_loopback, split_address

FLEET_PORT, CONTROL_PORT = 9092, 9093


def _call(gate: FleetOnly, *, port: int, path: str, kind: str = "http") -> list[dict]:
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": kind, "method": "POST", "path": path, "server": ("127.0.0.1", port),
             "client": ("10.0.0.7", 50123)}
    asyncio.run(gate(scope, receive, send))
    return sent


@pytest.fixture
def gate():
    reached, logged = [], []

    async def app(scope, receive, send):  # stands in for Flower's SuperLink app
        reached.append(scope["path"])

    return FleetOnly(app, fleet_port=FLEET_PORT, allowed=fleet_paths(),
                     log=lambda level, msg: logged.append(msg)), reached, logged


def test_the_sites_port_serves_exactly_flower_fleet_routes():
    paths = fleet_paths()
    assert {"/v1/fleet/activate-node", "/v1/fleet/deactivate-node", "/v1/fleet/pull-messages",
            "/v1/fleet/push-messages", "/v1/fleet/get-fab", "/v1/fleet/send-node-heartbeat"} <= paths
    assert all(p.startswith("/v1/fleet/") for p in paths)


@pytest.mark.parametrize("path", ["/v1/control/start-run", "/v1/control/register-node", "/v1/control/list-runs",
                                  "/v1/control/list-nodes", "/v1/control/stop-run", "/v1/control/unregister-node",
                                  "/v1/runtime/pull-task-input", "/v1/runtime/get-nodes", "/docs", "/openapi.json",
                                  "/health", "/v1/fleet/../control/start-run", "/v1/fleet"])
def test_anything_but_the_fleet_api_is_refused_on_the_sites_port(gate, path):
    app, reached, logged = gate
    sent = _call(app, port=FLEET_PORT, path=path)
    assert reached == []  # Flower's app never saw it
    assert sent[0]["status"] == 404 and b"not served on the Fleet address" in sent[1]["body"]
    assert logged == [f"[fleet-only] refused POST {path} from 10.0.0.7:50123 on the sites' port 9092: only the "
                      "Fleet API is served there"]


def test_the_fleet_api_passes_on_the_sites_port_and_everything_on_the_operators(gate):
    app, reached, logged = gate
    assert _call(app, port=FLEET_PORT, path="/v1/fleet/pull-messages") == []
    assert _call(app, port=CONTROL_PORT, path="/v1/control/start-run") == []
    assert _call(app, port=CONTROL_PORT, path="/v1/runtime/pull-task-input") == []
    assert reached == ["/v1/fleet/pull-messages", "/v1/control/start-run", "/v1/runtime/pull-task-input"]
    assert logged == []


def test_a_websocket_on_the_sites_port_is_closed(gate):
    app, reached, _ = gate
    assert _call(app, port=FLEET_PORT, path="/v1/control/stream-logs", kind="websocket") == [
        {"type": "websocket.close", "code": 1008}]
    assert reached == []


def test_loopback_and_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("127.8.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("fl.example.org")
    assert split_address("0.0.0.0:9092") == ("0.0.0.0", 9092)
    assert split_address("[::1]:9093") == ("::1", 9093)
    for bad in ("9092", "host:", ":9092", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            split_address(bad)


@given(host=st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True), port=st.integers(1, 65535))
def test_split_address_round_trips(host, port):
    assert split_address(f"{host}:{port}") == (host, port)
