"""The key service's self-signed serving certificate: created once as a Secret, never replaced.

Used when the chart is given neither a TLS Secret nor cert-manager. An init container of the
key-service Pod runs `python -m numail_operator.tls`: it creates the Secret if it is absent
(create-only, so of several replicas starting at once exactly one writes and the others read
what it wrote), then copies the certificate and key into an in-memory volume that the key
service reads through NUMAIL_KEYSERVICE_TLS_CERT and NUMAIL_KEYSERVICE_TLS_KEY.

The certificate is issued by a throwaway CA whose private key is discarded at once: `ca.crt` in
the Secret is what clients trust, and nothing can issue another certificate under it.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from numail.api import LABEL_MANAGED_BY, LABEL_PART_OF
from numail_operator import k8s
from numail_operator.settings import Settings

DEFAULT_VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class ServingCertificate:
    """PEM bytes: the leaf certificate, its private key, and the CA certificate that signed it."""

    cert: bytes
    key: bytes
    ca: bytes


def build_self_signed_certificate(
    dns_names: list[str],
    validity_days: int = DEFAULT_VALIDITY_DAYS,
    now: dt.datetime | None = None,
) -> ServingCertificate:
    """A P-256 serving certificate for `dns_names` (the first is the subject), under a new CA."""
    if not dns_names:
        raise ValueError("a serving certificate needs at least one DNS name")
    now = now or dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)  # tolerate clock skew between nodes
    not_after = now + dt.timedelta(days=validity_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"numail key service CA {now:%Y%m%d%H%M%S}")]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return ServingCertificate(
        cert=leaf.public_bytes(serialization.Encoding.PEM),
        key=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ca=ca.public_bytes(serialization.Encoding.PEM),
    )


def build_tls_secret(namespace: str, name: str, certificate: ServingCertificate) -> dict[str, Any]:
    """A `kubernetes.io/tls` Secret, with `ca.crt` as cert-manager writes it."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                LABEL_PART_OF: "numail",
                LABEL_MANAGED_BY: "numail-operator",
                "app.kubernetes.io/component": "keyservice-tls",
            },
            "annotations": {
                "numail.ai/self-signed": "true",
                "numail.ai/renew": "delete this Secret and restart the key service to issue anew",
            },
        },
        "data": {
            "tls.crt": b64(certificate.cert),
            "tls.key": b64(certificate.key),
            "ca.crt": b64(certificate.ca),
        },
    }


def ensure_serving_secret(
    clients: k8s.Clients,
    namespace: str,
    name: str,
    dns_names: list[str],
    validity_days: int = DEFAULT_VALIDITY_DAYS,
) -> tuple[ServingCertificate, bool]:
    """The certificate in Secret namespace/name, creating it first if absent.

    Returns it with True if this call created the Secret. An existing Secret is returned as it
    is, whatever it holds: clients may trust its CA already, so it is never replaced here."""
    created = False
    secret = k8s.read_secret(clients, namespace, name)
    if secret is None:
        certificate = build_self_signed_certificate(dns_names, validity_days)
        created = k8s.create_secret_once(clients, build_tls_secret(namespace, name, certificate))
        if created:
            return certificate, True
        secret = k8s.read_secret(clients, namespace, name)  # another replica won the race
        if secret is None:
            raise RuntimeError(f"Secret {namespace}/{name} vanished while being created")
    data = secret.data or {}
    missing = [k for k in ("tls.crt", "tls.key") if not data.get(k)]
    if missing:
        raise RuntimeError(
            f"Secret {namespace}/{name} lacks {', '.join(missing)}; delete it to have a "
            "certificate issued, or name a complete Secret in keyservice.tls.existingSecret"
        )
    return (
        ServingCertificate(
            cert=base64.b64decode(data["tls.crt"]),
            key=base64.b64decode(data["tls.key"]),
            ca=base64.b64decode(data.get("ca.crt") or data["tls.crt"]),
        ),
        created,
    )


def write_certificate_files(certificate: ServingCertificate, directory: Path) -> None:
    """tls.crt, tls.key (mode 0600) and ca.crt, as a mounted TLS Secret lays them out."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(certificate.cert)
    (directory / "ca.crt").write_bytes(certificate.ca)
    key_path = directory / "tls.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(certificate.key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m numail_operator.tls", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE") or os.environ.get("NUMAIL_SYSTEM_NAMESPACE"),
        help="namespace of the Secret (default: $POD_NAMESPACE, then $NUMAIL_SYSTEM_NAMESPACE)",
    )
    parser.add_argument("--secret", required=True, help="name of the kubernetes.io/tls Secret")
    parser.add_argument(
        "--dns-name", action="append", required=True, dest="dns_names", help="repeatable"
    )
    parser.add_argument("--validity-days", type=int, default=DEFAULT_VALIDITY_DAYS)
    parser.add_argument("--out", required=True, type=Path, help="directory to write files to")
    args = parser.parse_args(argv)
    if not args.namespace:
        parser.error("--namespace is required when POD_NAMESPACE is not set")
    clients = k8s.load_clients(Settings.from_env().kubeconfig)
    certificate, created = ensure_serving_secret(
        clients, args.namespace, args.secret, args.dns_names, args.validity_days
    )
    write_certificate_files(certificate, args.out)
    verb = "created" if created else "found"
    print(f"{verb} Secret {args.namespace}/{args.secret}; wrote its files to {args.out}")


if __name__ == "__main__":
    main()
