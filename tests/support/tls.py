"""Throwaway TLS material for servers the tests start (key service, OAuth and mail peers)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ServingCert:
    cert: Path
    key: Path
    ca: Path


def _certificate(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    extension: x509.ExtensionType,
    critical: bool,
) -> x509.Certificate:
    """Valid from an hour ago for two days: long enough for any test session."""
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(extension, critical=critical)
        .sign(signer, hashes.SHA256())
    )


def _serving_names(hostname: str) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )


def _write(paths: ServingCert, leaf: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    paths.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def make_serving_cert(directory: Path, hostname: str = "localhost") -> ServingCert:
    """A CA and a leaf for `hostname` and 127.0.0.1, written as PEM files under directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "numail-test-ca")])
    ca = _certificate(
        ca_name,
        ca_name,
        ca_key.public_key(),
        ca_key,
        x509.BasicConstraints(ca=True, path_length=None),
        critical=True,
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = _certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
        ca_name,
        key.public_key(),
        ca_key,
        _serving_names(hostname),
        critical=False,
    )
    paths = ServingCert(directory / "tls.crt", directory / "tls.key", directory / "ca.crt")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write(paths, leaf, key)
    return paths


def make_self_signed_cert(directory: Path, hostname: str = "localhost") -> ServingCert:
    """A leaf that signs itself (no CA), valid for `hostname` and 127.0.0.1: what a mail server
    fresh out of its package presents. `ca` points at the leaf itself."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    leaf = _certificate(name, name, key.public_key(), key, _serving_names(hostname), critical=False)
    paths = ServingCert(directory / "tls.crt", directory / "tls.key", directory / "tls.crt")
    _write(paths, leaf, key)
    return paths
