"""The Microsoft 365 OAuth client (msal) against a local identity platform and Graph: OpenID
discovery on a non-Microsoft host, scope parsing, refusals by reason, and revocation."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from numail.providers.base import (
    Forbidden,
    InvalidClient,
    InvalidGrant,
    InvalidTenant,
    ProviderUnavailable,
    ScopeMissing,
    ScopeTooBroad,
    TLSFailed,
    Unreachable,
)
from numail.providers.microsoft import MicrosoftOAuth, check_mail_scopes, normalize_scope
from tests.support.oauth import GRAPH_MAIL_SCOPES, MicrosoftIdentityServer
from tests.support.postgres import free_port
from tests.support.tls import make_serving_cert

CLIENT_ID, CLIENT_SECRET, TENANT = "0f4d7c1e-client", "ms-test-secret", "contoso"


@dataclass
class Microsoft:
    server: MicrosoftIdentityServer
    client: MicrosoftOAuth


@pytest.fixture(scope="module")
def ms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Microsoft]:
    cert = make_serving_cert(tmp_path_factory.mktemp("ms-tls"))
    server = MicrosoftIdentityServer(cert, tenants=(TENANT,)).start()
    client = MicrosoftOAuth(
        server.authority_host, server.graph_url, ca_file=str(cert.ca), timeout=5
    )
    try:
        yield Microsoft(server, client)
    finally:
        server.stop()


def grant(ms: Microsoft, token: str, scopes: tuple[str, ...] = GRAPH_MAIL_SCOPES) -> str:
    ms.server.add_grant(token, CLIENT_ID, CLIENT_SECRET, tenant=TENANT, scopes=scopes)
    return token


@pytest.mark.parametrize(
    ("granted", "error"),
    [
        (["https://graph.microsoft.com/Mail.Send", "https://graph.microsoft.com/Mail.Read"], None),
        (["Mail.Send", "mail.read", "openid", "profile", "offline_access"], None),
        (["00000003-0000-0000-c000-000000000000/Mail.Send", "MAIL.READ", "email"], None),
        (["Mail.Send", "Mail.Read", "https://graph.microsoft.com/User.Read"], ScopeTooBroad),
        (["Mail.Send", "Mail.Read", "Mail.ReadWrite"], ScopeTooBroad),
        (["Mail.Send", "offline_access"], ScopeMissing),
        ([], ScopeMissing),
    ],
)
def test_scope_check(granted: list[str], error: type[Exception] | None) -> None:
    if error is None:
        check_mail_scopes(granted)
    else:
        with pytest.raises(error):
            check_mail_scopes(granted)


def test_normalize_scope_strips_graphs_prefixes_only() -> None:
    assert normalize_scope("https://graph.microsoft.com/Mail.Read") == "Mail.Read"
    assert normalize_scope("HTTPS://GRAPH.MICROSOFT.COM/Mail.Send") == "Mail.Send"
    assert normalize_scope("https://outlook.office.com/Mail.Send") == (
        "https://outlook.office.com/Mail.Send"
    )


def test_a_mail_only_grant_verifies_through_discovery(ms: Microsoft) -> None:
    discoveries = ms.server.discoveries
    result = ms.client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, grant(ms, "ms-rt-ok"))
    assert {normalize_scope(s) for s in result.scopes} >= {"Mail.Send", "Mail.Read"}
    assert ms.server.discoveries == discoveries + 1  # msal asked this host, no other


def test_a_broader_grant_is_too_broad(ms: Microsoft) -> None:
    token = grant(ms, "ms-rt-broad", (*GRAPH_MAIL_SCOPES, "https://graph.microsoft.com/Files.Read"))
    with pytest.raises(ScopeTooBroad) as err:
        ms.client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, token)
    assert "Files.Read" in err.value.message


def test_a_grant_without_mail_read_needs_consent(ms: Microsoft) -> None:
    token = grant(ms, "ms-rt-narrow", (GRAPH_MAIL_SCOPES[0],))
    with pytest.raises(ScopeMissing):
        ms.client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, token)


def test_invalid_grant_maps_to_its_reason_without_the_aadsts_text(ms: Microsoft) -> None:
    with pytest.raises(InvalidGrant) as err:
        ms.client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, "ms-rt-never-issued")
    assert "AADSTS" not in err.value.message and "ms-rt-never-issued" not in err.value.message


def test_a_wrong_client_secret_is_an_invalid_client(ms: Microsoft) -> None:
    with pytest.raises(InvalidClient):
        ms.client.verify(TENANT, CLIENT_ID, "wrong", grant(ms, "ms-rt-client"))


def test_an_unknown_tenant_is_named(ms: Microsoft) -> None:
    with pytest.raises(InvalidTenant) as err:
        ms.client.verify("fabrikam", CLIENT_ID, CLIENT_SECRET, grant(ms, "ms-rt-tenant"))
    assert "fabrikam" in err.value.message and not err.value.transient


def test_an_unreachable_authority_is_transient() -> None:
    client = MicrosoftOAuth(f"https://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(Unreachable) as err:
        client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, "x")
    assert err.value.transient


def test_an_untrusted_authority_fails_tls(ms: Microsoft, tmp_path: Path) -> None:
    other = make_serving_cert(tmp_path / "other")
    client = MicrosoftOAuth(ms.server.authority_host, ca_file=str(other.ca), timeout=5)
    with pytest.raises(TLSFailed):
        client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, grant(ms, "ms-rt-tls"))


def test_revoking_calls_graph_once_and_ends_the_grant(ms: Microsoft) -> None:
    token = grant(ms, "ms-rt-revoke")
    calls = len(ms.server.graph_calls)
    assert ms.client.revoke(TENANT, CLIENT_ID, CLIENT_SECRET, token).outcome == "revoked"
    assert ms.server.revocations_of(token) == 1
    assert len(ms.server.graph_calls) == calls + 1
    # The access token Graph saw was one issued for this grant.
    assert ms.server.graph_calls[-1] in ms.server.grants[token].access_tokens
    with pytest.raises(InvalidGrant):
        ms.client.verify(TENANT, CLIENT_ID, CLIENT_SECRET, token)
    again = ms.client.revoke(TENANT, CLIENT_ID, CLIENT_SECRET, token)
    assert again.outcome == "already-invalid"
    assert len(ms.server.graph_calls) == calls + 1


@pytest.mark.parametrize(
    ("status", "expected"),
    [(401, "already-invalid"), (403, Forbidden), (503, ProviderUnavailable)],
)
def test_graph_refusals_map_to_outcomes(
    ms: Microsoft, status: int, expected: str | type[Exception]
) -> None:
    token = grant(ms, f"ms-rt-graph-{status}")
    ms.server.graph_status = status
    try:
        if isinstance(expected, str):
            assert ms.client.revoke(TENANT, CLIENT_ID, CLIENT_SECRET, token).outcome == expected
        else:
            with pytest.raises(expected):
                ms.client.revoke(TENANT, CLIENT_ID, CLIENT_SECRET, token)
    finally:
        ms.server.graph_status = None
