"""`fedfusion federation init` and the SuperLink command line, without starting Flower."""

from __future__ import annotations

import stat
import tomllib

import pytest

from server.federation_ops import FederationError, init_federation, load_federation, superlink_command


def test_init_writes_certificates_settings_and_the_flower_connection(tmp_path):
    fed = init_federation(tmp_path / "fed", host="127.0.0.1", port=29092, name="heart")
    lay = fed.layout
    for f in ("ca.crt", "ca.key", "server.pem", "server.key"):
        assert (lay.certs / f).stat().st_size > 0
    assert stat.S_IMODE((lay.certs / "server.key").stat().st_mode) == 0o600
    conn = tomllib.loads((lay.flwr_home / "config.toml").read_text())["superlink"]
    assert conn["default"] == "heart"
    assert conn["heart"] == {"address": "127.0.0.1:29092", "root-certificates": str(lay.ca_cert)}
    again = load_federation(tmp_path / "fed")
    assert (again.name, again.host, again.port, again.bind) == ("heart", "127.0.0.1", 29092, "127.0.0.1")


def test_a_public_host_binds_every_interface(tmp_path):
    assert init_federation(tmp_path / "f", host="fl.example.org").bind == "0.0.0.0"


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
    assert arg("--database") == str(fed.layout.root / "state.db") and arg("--port") == "29092"
