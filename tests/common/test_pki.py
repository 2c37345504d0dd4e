"""Federation certificates and site keys: SANs, signatures, OpenSSH format, file modes."""

from __future__ import annotations

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key, load_ssh_public_key

from common.pki import make_federation_certificates, make_site_keypair, san_entries


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_server_certificate_names_localhost_loopback_and_host_and_is_signed_by_the_ca(tmp_path):
    paths = make_federation_certificates(tmp_path, host="fl.example.org", federation="demo")
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    srv = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "fl.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    srv.verify_directly_issued_by(ca)  # raises if not signed by the CA
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    key = load_pem_private_key(paths.server_key.read_bytes(), None)
    assert key.public_key().public_numbers() == srv.public_key().public_numbers()


def test_private_keys_are_0600_and_certificates_readable(tmp_path):
    paths = make_federation_certificates(tmp_path, host="127.0.0.1", federation="demo")
    assert _mode(paths.ca_key) == 0o600 and _mode(paths.server_key) == 0o600
    assert _mode(paths.ca_cert) == 0o644 and _mode(paths.server_cert) == 0o644


@pytest.mark.parametrize("host, dns, ips", [
    ("127.0.0.1", ["localhost"], ["127.0.0.1"]),
    ("localhost", ["localhost"], ["127.0.0.1"]),
    ("10.1.2.3", ["localhost"], ["127.0.0.1", "10.1.2.3"]),
])
def test_san_entries_have_no_repeats(host, dns, ips):
    names = san_entries(host)
    assert [n.value for n in names if isinstance(n, x509.DNSName)] == dns
    assert [str(n.value) for n in names if isinstance(n, x509.IPAddress)] == ips


def test_site_key_pair_is_openssh_ecdsa_p384_like_ssh_keygen(tmp_path):
    keys = make_site_keypair(tmp_path / "keys" / "site_ecdsa", comment="fedfusion-site-x")
    assert keys.public_key == tmp_path / "keys" / "site_ecdsa.pub"
    assert _mode(keys.private_key) == 0o600
    text = keys.private_key.read_text()
    assert text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    priv = load_ssh_private_key(keys.private_key.read_bytes(), None)
    assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.curve.name == "secp384r1"
    line = keys.public_key.read_text().strip()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.endswith(" fedfusion-site-x")
    pub = load_ssh_public_key(line.encode())
    assert pub.public_numbers() == priv.public_key().public_numbers()
