"""TLS certificates and SuperNode keys for a federation that encrypts and authenticates (Flower's own mechanisms).

Run from the repository root::

    python -m fedimdb.deploy.credentials --out data/credentials --clients 10

It writes, and never overwrites (delete the folder to make new ones):

    ca.pem, ca.key               the certificate authority (its key never leaves this folder)
    server.pem, server.key       the SuperLink's certificate, SAN = the server's names, and its key
    client-K/auth.key            SuperNode K's private key (EC P-384, OpenSSH format): client K only
    client-K/auth.pub            its public key, registered with the SuperLink before SuperNode K starts

The SuperLink serves its Fleet, Control and Runtime APIs over TLS with ``server.pem``; every
SuperNode and ``flwr`` call trusts ``ca.pem``; with SuperNode authentication on, the SuperLink
admits only nodes whose public key was registered (``flwr supernode register``).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedimdb.data import client_dir_name
from fedimdb.deploy.processes import SERVER_HOST

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODE_KEY, NODE_PUBLIC_KEY = "auth.key", "auth.pub"
SERVER_NAMES = (SERVER_HOST, "localhost", "127.0.0.1")
VALID_DAYS = 365
CURVE = ec.SECP384R1()  # Flower accepts NIST curves for SuperNode keys


@dataclass(frozen=True)
class Credentials:
    """Where one federation's certificates and keys are."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / CA_CERT

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    def node_key(self, partition_id: int) -> Path:
        return self.root / client_dir_name(partition_id) / NODE_KEY

    def node_public_key(self, partition_id: int) -> Path:
        return self.root / client_dir_name(partition_id) / NODE_PUBLIC_KEY


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey, names: tuple[str, ...] = ()) -> x509.Certificate:  # fmt: skip
    """A CA certificate (no ``issuer``) or a server certificate for ``names`` signed by the CA."""
    now = datetime.datetime.now(datetime.timezone.utc)
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
        sans = [x509.IPAddress(ipaddress.ip_address(n)) if n.replace(".", "").isdigit() else x509.DNSName(n)
                for n in names]  # fmt: skip
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA384())


def _write(path: Path, data: bytes, private: bool) -> None:
    """Atomically, and readable by its owner only when ``private``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    os.replace(tmp, path)


def make_credentials(root: Path, num_clients: int, server_names: tuple[str, ...] = SERVER_NAMES) -> Credentials:
    """A CA, the SuperLink's certificate and one key pair per SuperNode, in ``root`` (which must not exist)."""
    if root.exists():
        raise FileExistsError(f"{root} exists; credentials are never overwritten: delete it to make new ones")
    creds = Credentials(root)
    ca_key, server_key = ec.generate_private_key(CURVE), ec.generate_private_key(CURVE)
    ca = _certificate("fedimdb CA", ca_key, None, ca_key)
    server = _certificate(server_names[0], server_key, ca, ca_key, server_names)
    _write(creds.ca, ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(root / CA_KEY, _pem_key(ca_key), private=True)
    _write(creds.server_cert, server.public_bytes(serialization.Encoding.PEM), private=False)
    _write(creds.server_key, _pem_key(server_key), private=True)
    for k in range(num_clients):
        key = ec.generate_private_key(CURVE)
        openssh = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())  # fmt: skip
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(creds.node_key(k), openssh, private=True)
        _write(creds.node_public_key(k), public + b"\n", private=False)
    return creds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fedimdb.deploy.credentials", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="a new folder")
    p.add_argument("--clients", type=int, required=True, help="one key pair per SuperNode")
    p.add_argument(
        "--server-name", action="append", help=f"SAN of the SuperLink's certificate (default: {SERVER_NAMES})"
    )
    a = p.parse_args(argv)
    try:
        make_credentials(a.out, a.clients, tuple(a.server_name) if a.server_name else SERVER_NAMES)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"credentials for a SuperLink and {a.clients} SuperNodes written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
