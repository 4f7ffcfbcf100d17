"""The Gmail OAuth client against a local Google token and revoke endpoint: the exact scope
check, how each refusal maps to a reason, and revocation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from numail import redact
from numail.providers.base import (
    InvalidClient,
    InvalidGrant,
    ProviderUnavailable,
    ScopeMissing,
    ScopeTooBroad,
    TLSFailed,
    Unreachable,
)
from numail.providers.google import GMAIL_SCOPES, GoogleOAuth
from tests.support.oauth import GoogleOAuthServer
from tests.support.postgres import free_port
from tests.support.tls import ServingCert, make_serving_cert

CLIENT_ID, CLIENT_SECRET = "client.apps.googleusercontent.com", "gocspx-test-secret"


@dataclass
class Google:
    server: GoogleOAuthServer
    client: GoogleOAuth
    cert: ServingCert


@pytest.fixture(scope="module")
def google(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Google]:
    cert = make_serving_cert(tmp_path_factory.mktemp("google-tls"))
    server = GoogleOAuthServer(cert).start()
    client = GoogleOAuth(server.token_uri, server.revoke_uri, ca_file=str(cert.ca), timeout=5)
    try:
        yield Google(server, client, cert)
    finally:
        server.stop()


def grant(google: Google, token: str, scopes: tuple[str, ...] = GMAIL_SCOPES) -> str:
    google.server.add_grant(token, CLIENT_ID, CLIENT_SECRET, scopes)
    return token


def test_a_grant_of_exactly_the_gmail_scopes_verifies(google: Google) -> None:
    token = grant(google, "rt-exact")
    result = google.client.verify(CLIENT_ID, CLIENT_SECRET, token)
    assert result.scopes == frozenset(GMAIL_SCOPES)
    assert result.access_token.startswith("ya29.")
    # It asked for exactly the two scopes, and the new token is masked in logs from now on.
    assert set(google.server.requested_scopes[-1].split()) == set(GMAIL_SCOPES)
    assert redact.redact(f"x {result.access_token} y") == f"x {redact.MASK} y"
    assert result.access_token not in repr(result)


def test_a_grant_with_more_scopes_is_too_broad(google: Google) -> None:
    token = grant(google, "rt-broad", (*GMAIL_SCOPES, "https://mail.google.com/"))
    with pytest.raises(ScopeTooBroad) as err:
        google.client.verify(CLIENT_ID, CLIENT_SECRET, token)
    assert "https://mail.google.com/" in err.value.message
    assert not err.value.transient and err.value.reason == "ScopeTooBroad"


def test_a_grant_without_readonly_lacks_a_scope(google: Google) -> None:
    # Google refuses to refresh for scopes the grant never had (invalid_scope).
    token = grant(google, "rt-narrow", (GMAIL_SCOPES[0],))
    with pytest.raises(ScopeMissing):
        google.client.verify(CLIENT_ID, CLIENT_SECRET, token)


def test_invalid_grant_maps_to_its_reason_without_the_servers_text(google: Google) -> None:
    with pytest.raises(InvalidGrant) as err:
        google.client.verify(CLIENT_ID, CLIENT_SECRET, "rt-never-issued")
    message = str(err.value)
    assert "invalid_grant" in message
    assert "rt-never-issued" not in message and "expired or revoked." not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_a_wrong_client_secret_is_an_invalid_client(google: Google) -> None:
    token = grant(google, "rt-client")
    with pytest.raises(InvalidClient):
        google.client.verify(CLIENT_ID, "not-the-secret", token)


def test_an_unavailable_token_endpoint_is_transient(google: Google) -> None:
    token = grant(google, "rt-503")
    google.server.unavailable = 5  # more than google-auth's own three attempts
    try:
        with pytest.raises(ProviderUnavailable) as err:
            google.client.verify(CLIENT_ID, CLIENT_SECRET, token)
    finally:
        google.server.unavailable = 0
    assert err.value.transient
    assert google.client.verify(CLIENT_ID, CLIENT_SECRET, token).scopes == frozenset(GMAIL_SCOPES)


def test_nothing_listening_is_unreachable() -> None:
    port = free_port()
    client = GoogleOAuth(f"https://127.0.0.1:{port}/token", timeout=2)
    with pytest.raises(Unreachable) as err:
        client.verify(CLIENT_ID, CLIENT_SECRET, "rt-x")
    assert err.value.transient


def test_an_untrusted_certificate_fails_tls(google: Google, tmp_path: Path) -> None:
    other_ca = make_serving_cert(tmp_path / "other")
    client = GoogleOAuth(google.server.token_uri, ca_file=str(other_ca.ca), timeout=5)
    with pytest.raises(TLSFailed) as err:
        client.verify(CLIENT_ID, CLIENT_SECRET, grant(google, "rt-tls"))
    assert "NUMAIL_PROVIDER_CA_FILE" in err.value.message


def test_the_configured_ca_wins_over_requests_ca_bundle(
    google: Google, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    token = grant(google, "rt-env")
    assert google.client.verify(CLIENT_ID, CLIENT_SECRET, token).scopes


def test_revoking_ends_the_grant_once(google: Google) -> None:
    token = grant(google, "rt-revoke")
    before = google.server.revoke_in_query
    revoked = google.client.revoke(token)
    assert revoked.outcome == "revoked"
    assert google.server.revocations_of(token) == 1
    assert google.server.revoke_in_query == before, "the token travelled in the URL"
    with pytest.raises(InvalidGrant):
        google.client.verify(CLIENT_ID, CLIENT_SECRET, token)
    # Revoking again is not an error: the grant is already gone.
    assert google.client.revoke(token).outcome == "already-invalid"


def test_an_unavailable_revoke_endpoint_is_transient(google: Google) -> None:
    token = grant(google, "rt-revoke-503")
    google.server.revoke_unavailable = 1
    with pytest.raises(ProviderUnavailable):
        google.client.revoke(token)
    assert google.client.revoke(token).outcome == "revoked"
