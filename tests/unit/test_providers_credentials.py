"""The credentials documents: strict parsing that names fields and never values, one canonical
form, intake Secrets in both shapes, and the exact-scope rule."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from numail import redact
from numail.providers.base import (
    MalformedCredentials,
    ScopeMissing,
    ScopeTooBroad,
    check_exact_scopes,
)
from numail.providers.credentials import (
    PasswordCredentials,
    RefreshTokenCredentials,
    canonical_document,
    intake_document,
    parse_credentials,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_smtp_credentials_parse_with_optional_imap_login() -> None:
    doc = b'{"username":"u","password":"p4ss-word","imapUsername":"iu","imapPassword":"ip4ss"}'
    creds = parse_credentials("smtp", doc)
    assert creds == PasswordCredentials("p4ss-word", "u", "iu", "ip4ss")
    assert "p4ss" not in repr(creds)


@pytest.mark.parametrize("provider", ["gmail", "microsoft365"])
def test_oauth_credentials_are_a_refresh_token(provider: str) -> None:
    creds = parse_credentials(provider, b'{"refresh_token": "rt-1234"}')
    assert creds == RefreshTokenCredentials("rt-1234")
    assert "rt-1234" not in repr(creds)


@pytest.mark.parametrize(
    ("provider", "document", "says", "never"),
    [
        ("gmail", b'{"refreshToken": "rt-secret-1"}', "'refreshToken'", "rt-secret-1"),
        ("smtp", b'{"hunter2-value": "x", "password": "pw-1"}', "1 unrecognised", "hunter2"),
        ("smtp", b'{"username": "u"}', "'password' of the smtp credentials is required", 'u"'),
        ("smtp", b'{"password": ""}', "non-empty string", ""),
        ("smtp", b'{"password": 42}', "non-empty string", "42"),
        ("gmail", b"refresh_token=rt-secret-2", "not a JSON object", "rt-secret-2"),
        ("gmail", b'["rt-secret-3"]', "must be a JSON object", "rt-secret-3"),
    ],
)
def test_malformed_documents_name_fields_never_values(
    provider: str, document: bytes, says: str, never: str
) -> None:
    with pytest.raises(MalformedCredentials) as err:
        parse_credentials(provider, document)
    assert says in err.value.message
    if never:
        assert never not in err.value.message


def test_parsing_registers_the_secrets_with_the_redactor() -> None:
    parse_credentials("smtp", b'{"password": "canary-unit-pw-91"}')
    assert redact.redact("login with canary-unit-pw-91") == f"login with {redact.MASK}"


def test_the_canonical_form_is_sorted_and_compact() -> None:
    creds = parse_credentials("smtp", b'{ "password" : "p",\n "username": "u" }')
    assert canonical_document(creds) == b'{"password":"p","username":"u"}'


_text = st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=40).filter(
    lambda s: s.strip() != ""
)


@given(password=_text, username=st.none() | _text, imap_password=st.none() | _text)
def test_canonical_documents_round_trip(
    password: str, username: str | None, imap_password: str | None
) -> None:
    creds = PasswordCredentials(password=password, username=username, imap_password=imap_password)
    document = canonical_document(creds)
    try:
        assert parse_credentials("smtp", document) == creds
        assert canonical_document(parse_credentials("smtp", document)) == document
    finally:
        # Parsing registers the values with the process-wide redactor; random text must not
        # stay there and mask other tests' log lines.
        values = [document.decode(), password, imap_password or ""]
        redact.forget(*values, *(v.strip() for v in values))


def test_an_intake_secret_may_hold_the_whole_document() -> None:
    doc = '{"refresh_token": "rt-intake"}'
    assert intake_document({"credentials": b64(doc)}) == doc.encode()


def test_an_intake_secret_may_hold_one_key_per_field() -> None:
    document = intake_document({"password": b64("pw-fields"), "username": b64("u")})
    assert parse_credentials("smtp", document) == PasswordCredentials("pw-fields", "u")


def test_an_intake_secret_may_not_mix_both_shapes() -> None:
    with pytest.raises(MalformedCredentials, match="not both"):
        intake_document({"credentials": b64("{}"), "password": b64("pw-mixed")})


def test_intake_values_and_their_base64_are_registered() -> None:
    encoded = b64("canary-intake-77")
    intake_document({"password": encoded})
    assert redact.MASK in redact.redact(encoded)
    assert redact.MASK in redact.redact("canary-intake-77")


@pytest.mark.parametrize(
    ("granted", "error"),
    [
        ({"a", "b"}, None),
        ({"a", "b", "c"}, ScopeTooBroad),
        ({"a"}, ScopeMissing),
        ({"a", "b", "openid"}, None),
    ],
)
def test_scopes_must_be_exactly_the_allowed_ones(
    granted: set[str], error: type[Exception] | None
) -> None:
    if error is None:
        check_exact_scopes(granted, ("a", "b"), provider="P", tolerated={"openid"})
    else:
        with pytest.raises(error):
            check_exact_scopes(granted, ("a", "b"), provider="P", tolerated={"openid"})


def test_json_of_a_document_is_what_the_docs_say() -> None:
    # docs/mailboxes.md documents these exact shapes.
    assert json.loads(canonical_document(PasswordCredentials("p", "u", "iu", "ip"))) == {
        "username": "u",
        "password": "p",
        "imapUsername": "iu",
        "imapPassword": "ip",
    }
    assert json.loads(canonical_document(RefreshTokenCredentials("rt"))) == {"refresh_token": "rt"}
