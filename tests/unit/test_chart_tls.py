"""The key service's self-signed certificate (numail_operator.tls): valid, create-only, private."""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from numail_operator import tls

CLIENTS: Any = object()  # the fake below never touches it
NAMES = [
    "numail-operator-keyservice.numail-system.svc",
    "numail-operator-keyservice.numail-system.svc.cluster.local",
]


@pytest.fixture(scope="module")
def certificate() -> tls.ServingCertificate:
    return tls.build_self_signed_certificate(NAMES, validity_days=30)


def verify(certificate: tls.ServingCertificate, name: str) -> None:
    leaf = x509.load_pem_x509_certificate(certificate.cert)
    ca = x509.load_pem_x509_certificate(certificate.ca)
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(x509.DNSName(name))
    verifier.verify(leaf, [])


def test_the_certificate_verifies_for_every_service_name(
    certificate: tls.ServingCertificate,
) -> None:
    for name in NAMES:
        verify(certificate, name)  # RFC 5280 path validation, as strict clients do


def test_the_certificate_does_not_verify_for_another_name(
    certificate: tls.ServingCertificate,
) -> None:
    with pytest.raises(VerificationError):
        verify(certificate, "numail-operator.numail-system.svc")


def test_another_ca_does_not_verify_it(certificate: tls.ServingCertificate) -> None:
    other = tls.build_self_signed_certificate(NAMES)
    mixed = tls.ServingCertificate(cert=certificate.cert, key=certificate.key, ca=other.ca)
    with pytest.raises(VerificationError):
        verify(mixed, NAMES[0])


def test_the_leaf_is_a_server_certificate_and_the_ca_signs_only_certificates(
    certificate: tls.ServingCertificate,
) -> None:
    leaf = x509.load_pem_x509_certificate(certificate.cert)
    ca = x509.load_pem_x509_certificate(certificate.ca)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True and constraints.path_length == 0
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=30) <= lifetime <= dt.timedelta(days=30, minutes=10)


def test_the_key_belongs_to_the_certificate(certificate: tls.ServingCertificate) -> None:
    key = serialization.load_pem_private_key(certificate.key, password=None)
    leaf = x509.load_pem_x509_certificate(certificate.cert)
    assert key.public_key() == leaf.public_key()


def test_a_tls_handshake_succeeds_with_ca_crt_as_the_only_trust(
    certificate: tls.ServingCertificate, tmp_path: Path
) -> None:
    tls.write_certificate_files(certificate, tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=NAMES[0])
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert done == {"client": True, "server": True}
    assert client.version() in ("TLSv1.2", "TLSv1.3")


def test_files_are_laid_out_as_a_mounted_tls_secret(
    certificate: tls.ServingCertificate, tmp_path: Path
) -> None:
    tls.write_certificate_files(certificate, tmp_path / "out")
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"tls.crt", "tls.key", "ca.crt"}
    assert (tmp_path / "out" / "tls.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "out" / "tls.crt").read_bytes() == certificate.cert


def test_the_secret_is_a_kubernetes_tls_secret_with_ca_crt(
    certificate: tls.ServingCertificate,
) -> None:
    secret = tls.build_tls_secret("numail-system", "ks-tls", certificate)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {
        **secret["metadata"],
        "name": "ks-tls",
        "namespace": "numail-system",
    }
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data == {
        "tls.crt": certificate.cert,
        "tls.key": certificate.key,
        "ca.crt": certificate.ca,
    }


# --- create-only ---------------------------------------------------------------------------


class FakeSecrets:
    """k8s.read_secret and k8s.create_secret_once over a dict, with a rival replica's write."""

    def __init__(self, rival: dict[str, Any] | None = None) -> None:
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.rival = rival
        self.creates = 0

    def read_secret(self, _clients: object, namespace: str, name: str) -> Any:
        found = self.store.get((namespace, name))
        return None if found is None else SimpleNamespace(data=found["data"])

    def create_secret_once(self, _clients: object, manifest: dict[str, Any]) -> bool:
        self.creates += 1
        key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
        if self.rival is not None:  # another replica created it between our read and create
            self.store[key] = self.rival
            return False
        if key in self.store:
            return False
        self.store[key] = manifest
        return True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSecrets:
    secrets = FakeSecrets()
    monkeypatch.setattr(tls.k8s, "read_secret", secrets.read_secret)
    monkeypatch.setattr(tls.k8s, "create_secret_once", secrets.create_secret_once)
    return secrets


def test_the_first_call_creates_and_later_calls_return_the_same(fake: FakeSecrets) -> None:
    first, created = tls.ensure_serving_secret(CLIENTS, "ns", "tls", NAMES)
    assert created
    again, created_again = tls.ensure_serving_secret(CLIENTS, "ns", "tls", NAMES)
    assert not created_again and again == first
    assert fake.creates == 1


def test_losing_the_race_returns_the_winners_certificate(
    fake: FakeSecrets, certificate: tls.ServingCertificate
) -> None:
    fake.rival = tls.build_tls_secret("ns", "tls", certificate)
    got, created = tls.ensure_serving_secret(CLIENTS, "ns", "tls", NAMES)
    assert not created and got == certificate


def test_an_incomplete_secret_is_reported_not_replaced(fake: FakeSecrets) -> None:
    fake.store[("ns", "tls")] = {"data": {"tls.crt": base64.b64encode(b"x").decode()}}
    with pytest.raises(RuntimeError, match=r"lacks tls\.key"):
        tls.ensure_serving_secret(CLIENTS, "ns", "tls", NAMES)
    assert fake.creates == 0


def test_no_names_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one DNS name"):
        tls.build_self_signed_certificate([])


def test_the_cli_needs_a_namespace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.delenv("NUMAIL_SYSTEM_NAMESPACE", raising=False)
    with pytest.raises(SystemExit):
        tls.main(["--secret=x", "--dns-name=a", f"--out={tmp_path}"])
