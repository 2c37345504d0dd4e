"""`fedfusion federation init` and the SuperLink command line, without starting Flower.

(The SuperLink itself, the attack on it and the operator's runs: tests/integration/test_deploy.py.)"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from server import superlink_listeners
from server.federation_ops import FederationError, init_federation, load_federation, superlink_command


def test_init_writes_certificates_settings_and_the_flower_connection(tmp_path):
    fed = init_federation(tmp_path / "fed", host="127.0.0.1", port=29092, name="heart")
    lay = fed.layout
    for f in ("ca.crt", "ca.key", "server.pem", "server.key"):
        assert (lay.certs / f).stat().st_size > 0
    assert stat.S_IMODE((lay.certs / "server.key").stat().st_mode) == 0o600
    conn = tomllib.loads((lay.flwr_home / "config.toml").read_text())["superlink"]
    assert conn["default"] == "heart"
    # the operator's Flower CLI goes to the Control API on loopback, not to the sites' port
    assert conn["heart"] == {"address": "127.0.0.1:29093", "root-certificates": str(lay.ca_cert)}
    again = load_federation(tmp_path / "fed")
    assert (again.name, again.host, again.port, again.bind) == ("heart", "127.0.0.1", 29092, "127.0.0.1")
    assert (again.control_port, again.control_bind, again.control_exposed) == (29093, "127.0.0.1", False)
    assert again.control_warning() == ""


def test_a_public_host_opens_only_the_sites_port_to_the_network(tmp_path):
    fed = init_federation(tmp_path / "f", host="fl.example.org")
    assert (fed.bind, fed.port) == ("0.0.0.0", 9092)
    assert (fed.control_bind, fed.control_port, fed.control_address) == ("127.0.0.1", 9093, "127.0.0.1:9093")
    cmd = superlink_command(fed)
    assert cmd[cmd.index("--fleet") + 1] == "0.0.0.0:9092"
    assert (cmd[cmd.index("--host") + 1], cmd[cmd.index("--port") + 1]) == ("127.0.0.1", "9093")


def test_exposing_the_control_api_is_a_deliberate_choice_with_a_warning(tmp_path):
    fed = init_federation(tmp_path / "f", host="fl.example.org", control_bind="0.0.0.0", control_port=9500)
    assert fed.control_exposed and fed.control_address == "127.0.0.1:9500"
    assert "authenticates nobody" in fed.control_warning() and "SSH tunnel" in fed.control_warning()
    assert 'control-bind = "0.0.0.0"' in fed.layout.settings.read_text()
    assert load_federation(tmp_path / "f").control_exposed
    on_host = init_federation(tmp_path / "g", host="10.1.2.3", control_bind="10.1.2.3")
    assert on_host.control_address == "10.1.2.3:9093"  # a name in the certificate
    with pytest.raises(FederationError, match="--control-bind"):
        init_federation(tmp_path / "h", host="fl.example.org", control_bind="10.9.9.9")  # not in the certificate
    with pytest.raises(FederationError, match="--control-port"):
        init_federation(tmp_path / "i", host="127.0.0.1", port=9200, control_port=9200)


def test_a_federation_toml_from_before_the_split_gets_the_secure_defaults(tmp_path):
    fed = init_federation(tmp_path / "f", host="127.0.0.1", port=9300)
    text = fed.layout.settings.read_text()
    fed.layout.settings.write_text("\n".join(line for line in text.splitlines() if not line.startswith("control-")))
    old = load_federation(tmp_path / "f")
    assert (old.control_port, old.control_bind) == (9301, "127.0.0.1")


def test_init_refuses_an_existing_federation_and_bad_arguments(tmp_path):
    init_federation(tmp_path / "fed", host="127.0.0.1")
    with pytest.raises(FederationError, match="already holds"):
        init_federation(tmp_path / "fed", host="127.0.0.1")
    with pytest.raises(FederationError, match="--name"):
        init_federation(tmp_path / "x", host="127.0.0.1", name="a b")
    with pytest.raises(FederationError, match="--port"):
        init_federation(tmp_path / "y", host="127.0.0.1", port=70000)
    with pytest.raises(FederationError, match="not a federation folder"):
        load_federation(tmp_path / "nothing")


def test_superlink_command_has_tls_auth_database_and_no_runtime_installs(tmp_path):
    fed = init_federation(tmp_path / "fed", host="127.0.0.1", port=29092)
    cmd = superlink_command(fed)
    c = fed.layout.certs

    def arg(flag: str) -> str:
        return cmd[cmd.index(flag) + 1]

    assert (arg("--ssl-ca-certfile"), arg("--ssl-certfile"), arg("--ssl-keyfile")) == (
        str(c / "ca.crt"), str(c / "server.pem"), str(c / "server.key"))
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd
    assert arg("--database") == str(fed.layout.root / "state.db")
    # Flower's SuperLink, run by server/superlink_listeners.py: Fleet API alone on the sites' address
    assert cmd[1] == str(Path(superlink_listeners.__file__).resolve()) and arg("--fleet") == "127.0.0.1:29092"
    assert (arg("--host"), arg("--port")) == ("127.0.0.1", "29093")
