"""Keys and certificates of a federation: the operator's CA and SuperLink certificate, a site's key pair.

Plain :mod:`cryptography`; no Flower imports. Everything private is written with mode 0600
(created so, never chmod-ed after the bytes are on disk).

* The federation CA signs the SuperLink's TLS certificate; sites verify the SuperLink with the
  CA certificate (``--root-certificates``). The SuperLink certificate names ``localhost``,
  ``127.0.0.1`` and the operator's host as subject alternative names.
* A site authenticates to the SuperLink with an ECDSA P-384 key pair in OpenSSH format, the
  same files ``ssh-keygen -t ecdsa -b 384`` writes; the operator registers its public key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificatePaths",
    "SiteKeyPaths",
    "write_private",
    "make_federation_certificates",
    "make_site_keypair",
    "san_entries",
]

_CURVE = ec.SECP384R1


@dataclass(frozen=True)
class CertificatePaths:
    ca_cert: Path  # the federation CA certificate (PEM): sites and `flwr` verify the SuperLink with it
    ca_key: Path  # the CA private key (PEM, 0600): stays with the operator
    server_cert: Path  # the SuperLink certificate (PEM), signed by the CA
    server_key: Path  # the SuperLink private key (PEM, 0600)


@dataclass(frozen=True)
class SiteKeyPaths:
    private_key: Path  # OpenSSH private key (0600): never leaves the site
    public_key: Path  # OpenSSH public key line: the operator registers it


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from the start (replacing any older file).

    Parameters
    ----------
    path
        Destination; its folder is created if missing.
    data
        Bytes to write.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def san_entries(host: str) -> list[x509.GeneralName]:
    """Subject alternative names for a SuperLink reachable as ``host``: always localhost and 127.0.0.1.

    Parameters
    ----------
    host
        The name or IP address sites use in ``--superlink HOST:PORT``.

    Returns
    -------
    list[x509.GeneralName]
        ``DNS:localhost``, ``IP:127.0.0.1`` and ``host`` (as an IP or DNS entry), without repeats.
    """
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    return names


def _name(common_name: str, federation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"fedfusion federation {federation}"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_federation_certificates(folder: Path, *, host: str, federation: str, days: int = 825) -> CertificatePaths:
    """Create the federation CA and the SuperLink certificate under ``folder``.

    Parameters
    ----------
    folder
        Output folder (``ca.crt``, ``ca.key``, ``server.pem``, ``server.key``); private keys get mode 0600.
    host
        Host name or IP sites connect to; added to the SuperLink certificate's SANs.
    federation
        Federation name, written into the certificates' subject.
    days
        Validity of both certificates.

    Returns
    -------
    CertificatePaths
        Where the four files were written.
    """
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(_CURVE())
    ca_name = _name(f"{federation} CA", federation)
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    srv_key = ec.generate_private_key(_CURVE())
    srv_cert = (
        x509.CertificateBuilder().subject_name(_name(host, federation)).issuer_name(ca_name)
        .public_key(srv_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(san_entries(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths = CertificatePaths(ca_cert=folder / "ca.crt", ca_key=folder / "ca.key",
                             server_cert=folder / "server.pem", server_key=folder / "server.key")
    write_private(paths.ca_key, ca_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    write_private(paths.server_key, srv_key.private_bytes(pem, pkcs8, serialization.NoEncryption()))
    _write_public(paths.ca_cert, ca_cert.public_bytes(pem))
    _write_public(paths.server_cert, srv_cert.public_bytes(pem))
    return paths


def make_site_keypair(private_key: Path, *, comment: str) -> SiteKeyPaths:
    """Write an ECDSA P-384 key pair in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384``).

    Parameters
    ----------
    private_key
        Path of the private key (mode 0600); the public key goes to the same path plus ``.pub``.
    comment
        Comment appended to the public key line (e.g. ``fedfusion-site-cleveland``).

    Returns
    -------
    SiteKeyPaths
        Where the two files were written.
    """
    key = ec.generate_private_key(_CURVE())
    priv = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption())
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_key = private_key.with_name(private_key.name + ".pub")
    write_private(private_key, priv)
    _write_public(public_key, pub + b" " + comment.encode("ascii", "replace") + b"\n")
    return SiteKeyPaths(private_key=private_key, public_key=public_key)
