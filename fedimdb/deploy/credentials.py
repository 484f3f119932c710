"""TLS certificates and SuperNode keys for a federation that encrypts and authenticates (Flower's own mechanisms).

Run from the repository root (the Compose stack's ``credentials`` service runs the same)::

    python -m fedimdb.deploy.credentials --out data/credentials --clients 10

It writes what is missing and never overwrites a file (delete the folder to make new ones), one
folder per party, each mounted read-only into that party's container and nowhere else:

    ca.pem, ca.key                  the certificate authority (its key is mounted nowhere)
    server/ca.pem                   the SuperLink's folder: the CA it serves under, ...
    server/server.pem, server.key   ... its certificate (SAN = the server's names) and key, ...
    server/nodes/client-K.pub       ... and every SuperNode's public key, registered when it starts
    client-K/ca.pem                 SuperNode K's folder: the CA it trusts, ...
    client-K/auth.key, auth.pub     ... and its private key (EC P-384, OpenSSH format) and public key

The SuperLink serves its Fleet, Control and Runtime APIs over TLS with ``server.pem``; every
SuperNode and ``flwr`` call trusts ``ca.pem``; with SuperNode authentication on, the SuperLink
admits only nodes whose public key was registered (``flwr supernode register``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import pwd
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedimdb.data import client_dir_name
from fedimdb.deploy.topology import SERVER_HOST

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_FOLDER = "server"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODES_DIR = "nodes"  # in server/: the public keys to register
NODE_KEY, NODE_PUBLIC_KEY = "auth.key", "auth.pub"
PUBLIC_KEY_SUFFIX = ".pub"
SERVER_NAMES = (SERVER_HOST, "localhost", "127.0.0.1")
VALID_DAYS = 365
CURVE = ec.SECP384R1()  # Flower accepts NIST curves for SuperNode keys


@dataclass(frozen=True)
class _Party:
    """A party's folder: the CA it trusts and its own private key (named by :attr:`KEY_FILE`)."""

    folder: Path
    KEY_FILE: ClassVar[str]

    @property
    def ca(self) -> Path:
        return self.folder / CA_CERT

    @property
    def key(self) -> Path:
        return self.folder / self.KEY_FILE


@dataclass(frozen=True)
class ServerCredentials(_Party):
    """The SuperLink's folder: its CA, certificate and key, and the public keys it registers."""

    KEY_FILE = SERVER_KEY

    @property
    def cert(self) -> Path:
        return self.folder / SERVER_CERT

    def node_public_key(self, partition_id: int) -> Path:
        return self.folder / NODES_DIR / f"{client_dir_name(partition_id)}{PUBLIC_KEY_SUFFIX}"

    def node_public_keys(self) -> list[Path]:
        """Every public key in ``nodes/``, in name order."""
        return sorted((self.folder / NODES_DIR).glob(f"*{PUBLIC_KEY_SUFFIX}"))


@dataclass(frozen=True)
class NodeCredentials(_Party):
    """One SuperNode's folder: the CA it trusts and its key pair."""

    KEY_FILE = NODE_KEY

    @property
    def public_key(self) -> Path:
        return self.folder / NODE_PUBLIC_KEY


@dataclass(frozen=True)
class Credentials:
    """Where one federation's certificates and keys are: a folder per party."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / CA_CERT

    @property
    def server(self) -> ServerCredentials:
        return ServerCredentials(self.root / SERVER_FOLDER)

    def node(self, partition_id: int) -> NodeCredentials:
        return NodeCredentials(self.root / client_dir_name(partition_id))


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    names: tuple[str, ...] = (),
) -> x509.Certificate:
    """A CA certificate (no ``issuer``) or a server certificate for ``names`` signed by the CA."""
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if names:
        sans = [
            x509.IPAddress(ipaddress.ip_address(n)) if n.replace(".", "").isdigit() else x509.DNSName(n) for n in names
        ]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _write(path: Path, data: bytes, private: bool) -> None:
    """Atomically, never over an existing file, and readable by its owner only when ``private``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    try:
        os.link(tmp, path)  # fails if path exists
    except FileExistsError:
        raise FileExistsError(
            f"{path} exists (credentials are never overwritten): delete its folder to make new ones"
        ) from None
    finally:
        os.unlink(tmp)


def _server_names(cert: Path) -> set[str]:
    """The names (DNS and IP) a server certificate is valid for."""
    sans = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return {*sans.value.get_values_for_type(x509.DNSName), *map(str, sans.value.get_values_for_type(x509.IPAddress))}


def _load_or_make_ca(creds: Credentials, server_names: tuple[str, ...]) -> bytes:
    """The CA certificate (PEM), made with the server's certificate when the folder has none."""
    if creds.ca.exists():
        missing = set(server_names) - _server_names(creds.server.cert)
        if missing:
            raise FileExistsError(
                f"{creds.server.cert} does not name {', '.join(sorted(missing))} and is never "
                f"overwritten: delete {creds.root} to make new credentials for every party"
            )
        return creds.ca.read_bytes()
    if creds.server.cert.exists():
        raise FileExistsError(f"{creds.server.cert} exists without {creds.ca}; delete {creds.root} to make new ones")
    ca_key, server_key = ec.generate_private_key(CURVE), ec.generate_private_key(CURVE)
    ca = _certificate("fedimdb CA", ca_key, None, ca_key)
    server = _certificate(server_names[0], server_key, ca, ca_key, server_names)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    _write(creds.root / CA_KEY, _pem_key(ca_key), private=True)
    _write(creds.server.ca, ca_pem, private=False)
    _write(creds.server.cert, server.public_bytes(serialization.Encoding.PEM), private=False)
    _write(creds.server.key, _pem_key(server_key), private=True)
    _write(creds.ca, ca_pem, private=False)  # last: its presence means the CA and the server's files are complete
    return ca_pem


def _make_node(creds: Credentials, partition_id: int, ca_pem: bytes) -> None:
    """SuperNode ``partition_id``'s folder and its public key in the server's ``nodes/``."""
    _make_key_pair(creds.node(partition_id), creds.server.node_public_key(partition_id), ca_pem)


def _make_key_pair(node: NodeCredentials, public_copy: Path | None, ca_pem: bytes) -> None:
    """A SuperNode's folder (the CA, a new key pair), and a copy of its public key at ``public_copy`` if given."""
    key = ec.generate_private_key(CURVE)
    openssh = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(node.ca, ca_pem, private=False)
    if public_copy is not None:
        _write(public_copy, public + b"\n", private=False)
    _write(node.public_key, public + b"\n", private=False)
    _write(node.key, openssh, private=True)  # last: its presence means the node's files are complete


def make_credentials(root: Path, num_clients: int, server_names: tuple[str, ...] = SERVER_NAMES) -> Credentials:
    """The CA, the SuperLink's certificate and one key pair per SuperNode in ``root``: whatever is missing.

    Existing files are kept as they are (a rerun with more clients adds their keys only).
    """
    creds = Credentials(root)
    ca_pem = _load_or_make_ca(creds, server_names)
    for k in range(num_clients):
        if not creds.node(k).key.exists():
            _make_node(creds, k, ca_pem)
    return creds


def renew_node_key(creds: Credentials, partition_id: int, generation: int) -> NodeCredentials:
    """A new key pair for SuperNode ``partition_id`` in a folder of its own (``client-K.rN``, N = ``generation``).

    For a node that replaces a lost one, which the SuperLink knows by the old key. Its public key
    is in the new folder (``auth.pub``); the server's ``nodes/`` keeps the keys it started with.
    """
    node = NodeCredentials(creds.root / f"{client_dir_name(partition_id)}.r{generation}")
    _make_key_pair(node, None, creds.ca.read_bytes())
    return node


def server_names(*extra: str) -> tuple[str, ...]:
    """:data:`SERVER_NAMES` and the non-empty ``extra`` names the SuperLink is also reached by."""
    return (*SERVER_NAMES, *(n for n in extra if n and n not in SERVER_NAMES))


def give_to(root: Path, user: str) -> None:
    """Hand ``root`` and everything in it to ``user`` (run as root in a container for its non-root user)."""
    entry = pwd.getpwnam(user)
    for path in [root, *root.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedimdb.deploy.credentials", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the credentials folder (what it lacks is added)")
    p.add_argument("--clients", type=int, required=True, help="one key pair per SuperNode")
    p.add_argument(
        "--server-name",
        action="append",
        default=[],
        help=f"another name the SuperLink is reached by, for its certificate (always: {SERVER_NAMES})",
    )
    p.add_argument("--owner", help="hand the folder to this user afterwards (the containers' user, when run as root)")
    a = p.parse_args(argv)
    try:
        make_credentials(a.out, a.clients, server_names(*a.server_name))
        if a.owner:
            give_to(a.out, a.owner)
    except (OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"credentials for a SuperLink and {a.clients} SuperNodes in {a.out} (existing files kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
