"""Signed ledger heads: ECDSA keys, the signed message, and the record of a signed head.

Why
---
A hash chain alone detects an edited, deleted or reordered row, but not a truncated file or
a rewrite that recomputes every hash after the edit. A signed *head* fixes that: after every
confirm or decline the site signs ``(kind, site, seq, hash)`` of its newest row with its own
key and sends it to the server, which records it (append-only). Any later rewrite of a row at
or before ``seq`` changes the hash at ``seq``; any truncation removes it. Neither can be made to
match the signature without the site's private key.

Keys
----
ECDSA on NIST P-384 with SHA-384, the key type of Flower's SuperNode authentication
(``ssh-keygen -t ecdsa -b 384``): a deployed site can reuse that key by placing it (or a link to
it) at ``<state-dir>/site_key``. In simulation :func:`load_or_create_key` creates a key of the
site's own on first use (OpenSSH private-key format, mode 0600, created atomically: two
processes racing get the same key) and writes the public half beside it (``site_key.pub``).
Public keys travel and are stored as one OpenSSH line (``ecdsa-sha2-nistp384 AAAA...``);
:func:`fingerprint` prints them the way ``ssh-keygen -l`` does (``SHA256:...``).

What a signature does not prove
-------------------------------
It binds the head to whoever holds the private key. Whoever holds the key (the site itself)
can re-sign a rewritten ledger; the server's copy of the heads it received earlier is what
catches that. The audit therefore prefers heads recorded by the server, and reports which key
(fingerprint) anchors each ledger so that a privacy officer can pin it.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "HEAD_KINDS",
    "SERVER_HEAD_FILE",
    "SERVER_KEY_FILE",
    "SIGNATURE_DOMAIN",
    "HeadRecord",
    "SignedHead",
    "fingerprint",
    "head_message",
    "head_record_hash",
    "load_or_create_key",
    "load_private_key",
    "load_public_key",
    "public_key_line",
    "read_signed_heads",
    "sign_head",
    "verify_head",
    "write_signed_heads",
]

SIGNATURE_DOMAIN = "fedfusion/ledger-head/v1"  # domain separation: this signature means nothing elsewhere
#: what a signed head is the head of: a site's ledger, the server's ledger rows, the server's heads table
HEAD_KINDS: tuple[str, ...] = ("site-ledger", "server-ledger", "server-heads")
_HASH = hashes.SHA384()
SERVER_KEY_FILE = "server_key"  # in the run folder: the server's ECDSA P-384 key (+ .pub)
SERVER_HEAD_FILE = "ledger-head.json"  # in the run folder: the server's signed heads of its own ledger file
_HEAD_FILE_KIND = "fedfusion-signed-ledger-heads"


# ------------------------------------------------------------------------------- keys
def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An unencrypted EC private key from an OpenSSH (``ssh-keygen``) or PEM file.

    Raises
    ------
    ValueError
        If the file holds no EC private key (e.g. an RSA or ed25519 key, or an encrypted one).
    """
    data = Path(path).read_bytes()
    try:
        if b"BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not an unencrypted OpenSSH or PEM private key ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: an ECDSA key is required (ssh-keygen -t ecdsa -b 384), got {type(key).__name__}")
    return key


def load_or_create_key(path: Path, *, comment: str = "fedfusion") -> ec.EllipticCurvePrivateKey:
    """The private key at ``path``; a new P-384 key is created there (0600) if there is none.

    Creation is atomic and exclusive (write a temp file, then hard-link it into place): if two
    processes create at once, the loser discards its key and loads the winner's. The public key
    is (re)written to ``path + ".pub"`` if absent.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            try:
                os.link(tmp, path)  # fails if another process created the key first
            except FileExistsError:
                pass
        finally:
            Path(tmp).unlink(missing_ok=True)
    key = load_private_key(path)
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():
        from common.storage import atomic_write_text

        atomic_write_text(pub, f"{public_key_line(key.public_key())} {comment}\n")
    return key


def public_key_line(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The OpenSSH one-line public key (``ecdsa-sha2-nistp384 AAAA...``), no comment."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        key = key.public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode("ascii")


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """Parse an OpenSSH public-key line (a trailing comment is ignored) or a PEM public key.

    Memoised per text (a key object is immutable and parsing is a pure function of the text): the server checks
    every reply's head signature against the key its site sent, the same text round after round, and parsing it
    was a third of that check.

    Raises
    ------
    ValueError
        If it is not an EC public key (failures are not memoised: they raise every time).
    """
    return _parse_public_key(text)


@functools.lru_cache(maxsize=4096)
def _parse_public_key(text: str) -> ec.EllipticCurvePublicKey:
    raw = text.strip().encode("ascii", "replace")
    try:
        if raw.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(raw)
        else:
            key = serialization.load_ssh_public_key(b" ".join(raw.split()[:2]))
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"not an OpenSSH or PEM public key: {text[:40]!r}... ({exc})") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"an ECDSA public key is required, got {type(key).__name__}")
    return key


def fingerprint(public_key: str) -> str:
    """``SHA256:<base64>`` of the key blob, as ``ssh-keygen -l`` prints it ("?" if unparsable)."""
    try:
        line = public_key_line(load_public_key(public_key))
    except ValueError:
        return "?"
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


# --------------------------------------------------------------------- the message
def head_message(*, kind: str, site: str, seq: int, head_hash: str) -> bytes:
    """The exact bytes a head signature covers: canonical JSON with a domain tag.

    ``{"domain":"fedfusion/ledger-head/v1","head_hash":...,"kind":...,"seq":...,"site":...}``
    (keys sorted, no whitespace, ASCII).
    """
    if kind not in HEAD_KINDS:
        raise ValueError(f"head kind {kind!r}: expected one of {HEAD_KINDS}")
    payload = {"domain": SIGNATURE_DOMAIN, "kind": kind, "site": site, "seq": int(seq), "head_hash": head_hash}
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign_head(key: ec.EllipticCurvePrivateKey, *, kind: str, site: str, seq: int, head_hash: str) -> str:
    """Base64 of the DER ECDSA-SHA384 signature over :func:`head_message`."""
    sig = key.sign(head_message(kind=kind, site=site, seq=seq, head_hash=head_hash), ec.ECDSA(_HASH))
    return base64.b64encode(sig).decode("ascii")


def verify_head(public_key: str, signature: str, *, kind: str, site: str, seq: int, head_hash: str) -> bool:
    """True iff ``signature`` is ``public_key``'s signature over this head (never raises)."""
    try:
        key = load_public_key(public_key)
        key.verify(base64.b64decode(signature, validate=True),
                   head_message(kind=kind, site=site, seq=seq, head_hash=head_hash), ec.ECDSA(_HASH))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class SignedHead:
    """A signed head: what the server writes for its own ledger (``ledger-head.json``)."""

    kind: str  # one of HEAD_KINDS
    site: str  # whose ledger ("server" for the server's own)
    seq: int  # seq of the newest row the signature covers (0 = empty)
    head_hash: str  # hash of that row (GENESIS_HASH when empty)
    public_key: str  # OpenSSH line of the signer's key
    signature: str  # base64 DER ECDSA-SHA384 over head_message(kind, site, seq, head_hash)

    @classmethod
    def sign(cls, key: ec.EllipticCurvePrivateKey, *, kind: str, site: str, seq: int, head_hash: str) -> "SignedHead":
        return cls(kind=kind, site=site, seq=seq, head_hash=head_hash, public_key=public_key_line(key),
                   signature=sign_head(key, kind=kind, site=site, seq=seq, head_hash=head_hash))

    def valid(self) -> bool:
        """Whether the signature verifies under the key it names (pin the key separately)."""
        return verify_head(self.public_key, self.signature, kind=self.kind, site=self.site, seq=self.seq,
                           head_hash=self.head_hash)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SignedHead":
        return cls(kind=str(d["kind"]), site=str(d["site"]), seq=int(d["seq"]), head_hash=str(d["head_hash"]),
                   public_key=str(d["public_key"]), signature=str(d["signature"]))


# ------------------------------------------------------------- a row of the heads table
@dataclass(frozen=True, kw_only=True)
class HeadRecord:
    """One row of a ledger file's ``heads`` table (own hash chain; see :class:`~common.privacy.ledger.Ledger`).

    In a site's ledger file: the heads the site signed of its own rows. In the server's: the
    heads sites sent, as received (recorded even when the signature fails, as evidence).
    ``secure_mode`` and ``epsilon_budget`` are what the site stated with the head (unsigned,
    but covered by this table's chain); ``None`` when not stated.
    """

    kind: str  # "site-ledger"
    site: str  # the site whose ledger this is the head of
    round: int  # server round after which it was signed
    run_id: str = ""  # Flower run
    head_seq: int  # seq of the signed head row in the site's ledger
    head_hash: str  # its hash
    public_key: str  # OpenSSH line of the site's key
    signature: str  # base64 DER ECDSA-SHA384
    secure_mode: bool | None = None  # Opacus secure_mode of the site's training, as stated
    epsilon_budget: float | None = None  # the site's lifetime ε budget, as stated
    seq: int | None = None  # position in the heads chain, assigned on append
    ts: str = ""  # UTC ISO-8601 time of append
    prev_hash: str = ""  # hash of the heads row seq-1 (GENESIS_HASH for the first)
    hash: str = ""  # sha256 of the canonical JSON of every other field

    def __post_init__(self) -> None:
        if self.secure_mode is not None:
            object.__setattr__(self, "secure_mode", bool(self.secure_mode))
        if self.epsilon_budget is not None:
            object.__setattr__(self, "epsilon_budget", float(self.epsilon_budget))
        for name in ("round", "head_seq"):
            object.__setattr__(self, name, int(getattr(self, name)))

    def signed(self) -> SignedHead:
        return SignedHead(kind=self.kind, site=self.site, seq=self.head_seq, head_hash=self.head_hash,
                          public_key=self.public_key, signature=self.signature)

    def valid(self) -> bool:
        return self.signed().valid()


def head_record_hash(record: HeadRecord) -> str:
    """sha256 hex of the canonical JSON (keys sorted, no whitespace, ASCII) of every field but ``hash``."""
    payload = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "hash"}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def write_signed_heads(path: Path, heads: tuple[SignedHead, ...] | list[SignedHead], *, signed_at: str = "") -> None:
    """Write the server's signed heads (``ledger-head.json``) atomically."""
    from common.storage import atomic_write_text

    doc = {"kind": _HEAD_FILE_KIND, "signed_at": signed_at, "heads": [h.to_dict() for h in heads]}
    atomic_write_text(Path(path), json.dumps(doc, indent=1, sort_keys=True))


def read_signed_heads(path: Path) -> list[SignedHead]:
    """The signed heads of a ``ledger-head.json``.

    Raises
    ------
    ValueError
        If the file is not such a document.
    """
    try:
        doc = json.loads(Path(path).read_text())
        if doc.get("kind") != _HEAD_FILE_KIND:
            raise ValueError(f"kind={doc.get('kind')!r}, expected {_HEAD_FILE_KIND!r}")
        return [SignedHead.from_dict(h) for h in doc["heads"]]
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a signed-heads file ({exc})") from exc
