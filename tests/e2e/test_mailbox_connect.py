"""Mailboxes against the operator process and local providers: intake and sealing, client-side
sealed blobs, verification and its failures by reason, retry, rotation, disconnect, and no
secret anywhere a user can look (operator log, Events, status)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from numail.providers.base import AuthFailed
from numail.providers.smtp_imap import MailServer, tls_context, verify_smtp
from tests.conftest import K8s
from tests.e2e.mailbox_fixtures import (
    GOOGLE_CLIENT_ID,
    MICROSOFT_CLIENT_ID,
    MICROSOFT_TENANT,
    OperatorHandle,
    ProviderStubs,
    canary,
    create_intake,
    create_mailbox,
    create_workspaces,
    delete_workspaces,
    ensure_namespace,
    events_in,
    get_mailbox,
    mailbox_events,
    oauth_spec,
    open_frame,
    sealed_frame,
    secret_exists,
    smtp_spec,
    wait_condition,
    workspace_dek,
)
from tests.support.mail import SmtpServer
from tests.support.oauth import GMAIL_SCOPES
from tests.support.postgres import free_port
from tests.support.waiting import absent, condition, wait_for

WS, OTHER = "mbx-alpha", "mbx-beta"
NS, OTHER_NS = f"ws-{WS}", f"ws-{OTHER}"
PLAIN_NS = "mbx-plain"
G, V = "numail.ai", "v1alpha1"
EXTRA_GOOGLE_SCOPE = "https://mail.google.com/"
EXTRA_GRAPH_SCOPE = "https://graph.microsoft.com/Mail.ReadWrite"


@dataclass
class Env:
    operator: OperatorHandle
    stubs: ProviderStubs
    workspaces: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def env(mailbox_operator: OperatorHandle, provider_stubs: ProviderStubs, k8s: K8s) -> Iterator[Env]:
    workspaces = create_workspaces(k8s, [WS, OTHER], provider_stubs)
    try:
        yield Env(mailbox_operator, provider_stubs, workspaces)
    finally:
        with contextlib.suppress(ApiException):
            for mbx in k8s.custom.list_namespaced_custom_object(G, V, PLAIN_NS, "mailboxes")[
                "items"
            ]:
                k8s.custom.delete_namespaced_custom_object(
                    G, V, PLAIN_NS, "mailboxes", mbx["metadata"]["name"]
                )
        delete_workspaces(k8s, [WS, OTHER])
        with contextlib.suppress(ApiException):
            k8s.core.delete_namespace(PLAIN_NS)


def smtp_document(password: str, username: str | None = None) -> str:
    doc = {"password": password}
    if username:
        doc["username"] = username
    return json.dumps(doc)


def token_document(refresh_token: str) -> str:
    return json.dumps({"refresh_token": refresh_token})


@dataclass
class Case:
    name: str
    provider: str
    secret: str  # the canary the credentials carry
    reason: str = "Verified"


def _start_case(k8s: K8s, env: Env, case: Case, spec: dict[str, Any], document: str) -> None:
    create_intake(k8s, NS, f"{case.name}-intake", document)
    create_mailbox(k8s, NS, case.name, spec, {"secretRef": {"name": f"{case.name}-intake"}})


@pytest.fixture(scope="module")
def connected(env: Env, k8s: K8s) -> dict[str, Case]:
    """One working mailbox per provider (and per SMTP security), sealed from intake Secrets."""
    stubs = env.stubs
    gmail = Case("gmail-ok", "gmail", canary("gmail-rt"))
    stubs.google.add_grant(gmail.secret, GOOGLE_CLIENT_ID, stubs.google_client_secret)
    ms = Case("ms-ok", "microsoft365", canary("ms-rt"))
    stubs.microsoft.add_grant(
        ms.secret, MICROSOFT_CLIENT_ID, stubs.microsoft_client_secret, tenant=MICROSOFT_TENANT
    )
    starttls = Case("smtp-starttls", "smtp", canary("pw-starttls"))
    tls = Case("smtp-tls", "smtp", canary("pw-tls"))
    stubs.set_mail_passwords({"starttls@client.example": starttls.secret, "tls-user": tls.secret})
    stubs.canaries.update({gmail.secret, ms.secret})
    _start_case(k8s, env, gmail, oauth_spec("gmail"), token_document(gmail.secret))
    _start_case(k8s, env, ms, oauth_spec("microsoft365"), token_document(ms.secret))
    # The username from the credentials document, IMAP over STARTTLS.
    _start_case(
        k8s,
        env,
        starttls,
        smtp_spec(stubs.smtp_starttls, stubs.dovecot.imap_port, "starttls"),
        smtp_document(starttls.secret, "starttls@client.example"),
    )
    # The username from spec.smtp.username, IMAP over TLS.
    _start_case(
        k8s,
        env,
        tls,
        smtp_spec(stubs.smtp_tls, stubs.dovecot.imaps_port, "tls", username="tls-user"),
        smtp_document(tls.secret),
    )
    cases = {c.provider if c.provider != "smtp" else c.name: c for c in (gmail, ms, starttls, tls)}
    for case in cases.values():
        wait_condition(k8s, NS, case.name, "Ready", "True")
    return cases


@pytest.mark.parametrize("which", ["gmail", "microsoft365", "smtp-starttls", "smtp-tls"])
def test_intake_credentials_are_sealed_verified_and_the_intake_deleted(
    connected: dict[str, Case], env: Env, k8s: K8s, which: str
) -> None:
    case = connected[which]
    mbx = get_mailbox(k8s, NS, case.name)
    assert mbx is not None
    for type_ in ("CredentialsSealed", "Verified", "Ready"):
        assert condition(mbx, type_)["status"] == "True", type_  # type: ignore[index]
    status = mbx["status"]
    assert status["sealedSecretName"] == f"numail-mailbox-{case.name}"
    assert status["keyVersion"] == 1 and status["verifiedAt"]
    assert "lastError" not in status
    assert not secret_exists(k8s, NS, f"{case.name}-intake"), "the intake Secret was kept"

    secret = k8s.core.read_namespaced_secret(f"numail-mailbox-{case.name}", NS)
    assert set(secret.data) == {"sealed"}
    assert secret.metadata.labels["numail.ai/workspace"] == WS
    assert secret.metadata.labels["numail.ai/mailbox"] == case.name
    assert secret.metadata.annotations["numail.ai/key-version"] == "1"
    assert not secret.metadata.owner_references
    frame = sealed_frame(k8s, NS, case.name)
    assert frame.startswith(b"NMSF") and case.secret.encode() not in frame
    dek = workspace_dek(k8s, env.operator.keyring, env.workspaces[WS])
    document = json.loads(open_frame(dek, env.workspaces[WS], NS, case.name, frame))
    assert case.secret in document.values()
    # The Roles of the workers name this Secret, so they (and only they) can read it.
    role = k8s.rbac.read_namespaced_role("numail-send-worker", NS)
    assert f"numail-mailbox-{case.name}" in role.rules[0].resource_names


def test_an_intake_secret_written_after_its_mailbox_is_sealed_at_once(env: Env, k8s: K8s) -> None:
    password = canary("pw-late-intake")
    env.stubs.set_mail_passwords({"late-intake@client.example": password})
    spec = smtp_spec(env.stubs.smtp_starttls, env.stubs.dovecot.imaps_port)
    create_mailbox(k8s, NS, "late-intake", spec, {"secretRef": {"name": "late-intake-intake"}})
    mbx = wait_condition(k8s, NS, "late-intake", "Ready", "False", "CredentialsMissing")
    assert "numail.ai/intake=true" in condition(mbx, "Ready")["message"]  # type: ignore[index]
    started = time.monotonic()
    create_intake(k8s, NS, "late-intake-intake", smtp_document(password))
    wait_condition(k8s, NS, "late-intake", "Ready", "True", timeout=30)
    # Far sooner than the resync interval: the labelled Secret's watch did it.
    assert time.monotonic() - started < 30
    assert not secret_exists(k8s, NS, "late-intake-intake")


def test_a_mailbox_outside_any_workspace_is_not_ready(env: Env, k8s: K8s) -> None:
    ensure_namespace(k8s, PLAIN_NS)
    spec = smtp_spec(env.stubs.smtp_starttls, env.stubs.dovecot.imaps_port)
    create_mailbox(k8s, PLAIN_NS, "stray", spec, {"secretRef": {"name": "stray-intake"}})
    mbx = wait_condition(k8s, PLAIN_NS, "stray", "Ready", "False", "NotInWorkspace")
    message = condition(mbx, "Ready")["message"]  # type: ignore[index]
    assert PLAIN_NS in message and "ws-<name>" in message


def run_seal(env: Env, workspace: str, mailbox: str, document: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "numail.cli",
            "seal",
            "--workspace",
            workspace,
            "--mailbox",
            mailbox,
            "--kubeconfig",
            str(env.operator.kubeconfig),
        ],
        input=document.encode(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_a_cli_sealed_blob_is_accepted_and_refused_in_another_workspace(env: Env, k8s: K8s) -> None:
    password = canary("pw-blob")
    env.stubs.set_mail_passwords({"blob@client.example": password})
    blob = run_seal(env, WS, f"{NS}/blob", smtp_document(password))
    assert blob.startswith("nm1.") and password not in blob
    spec = smtp_spec(env.stubs.smtp_starttls, env.stubs.dovecot.imaps_port)

    create_mailbox(k8s, NS, "blob", spec, {"sealed": blob})
    wait_condition(k8s, NS, "blob", "Ready", "True")
    dek = workspace_dek(k8s, env.operator.keyring, env.workspaces[WS])
    document = json.loads(
        open_frame(dek, env.workspaces[WS], NS, "blob", sealed_frame(k8s, NS, "blob"))
    )
    assert document == {"password": password}

    # The same blob, committed for another workspace's mailbox of the same name.
    create_mailbox(k8s, OTHER_NS, "blob", spec, {"sealed": blob})
    mbx = wait_condition(k8s, OTHER_NS, "blob", "Ready", "False", "SealedForAnotherWorkspace")
    sealed = condition(mbx, "CredentialsSealed")
    assert (
        sealed and sealed["status"] == "False" and sealed["reason"] == "SealedForAnotherWorkspace"
    )
    assert f"numail seal --workspace {OTHER} --mailbox {OTHER_NS}/blob" in sealed["message"]
    assert not secret_exists(k8s, OTHER_NS, "numail-mailbox-blob")

    # And for another mailbox in the same workspace.
    create_mailbox(k8s, NS, "blob-copy", spec, {"sealed": blob})
    wait_condition(k8s, NS, "blob-copy", "Ready", "False", "SealedForAnotherMailbox")
    assert not secret_exists(k8s, NS, "numail-mailbox-blob-copy")


@pytest.fixture(scope="module")
def failures(env: Env, k8s: K8s) -> dict[str, Case]:
    """Mailboxes whose verification fails for one reason each."""
    stubs = env.stubs
    cases = {
        "scope-too-broad": Case("scope-broad", "gmail", canary("gmail-rt-broad"), "ScopeTooBroad"),
        "ms-scope-too-broad": Case(
            "ms-scope-broad", "microsoft365", canary("ms-rt-broad"), "ScopeTooBroad"
        ),
        "invalid-grant": Case("bad-grant", "gmail", canary("gmail-rt-unknown"), "InvalidGrant"),
        "wrong-smtp-password": Case("wrong-pw", "smtp", canary("pw-wrong"), "AuthFailed"),
        "untrusted-certificate": Case("self-signed", "smtp", canary("pw-untrusted"), "TLSFailed"),
    }
    stubs.google.add_grant(
        cases["scope-too-broad"].secret,
        GOOGLE_CLIENT_ID,
        stubs.google_client_secret,
        scopes=(*GMAIL_SCOPES, EXTRA_GOOGLE_SCOPE),
    )
    stubs.microsoft.add_grant(
        cases["ms-scope-too-broad"].secret,
        MICROSOFT_CLIENT_ID,
        stubs.microsoft_client_secret,
        tenant=MICROSOFT_TENANT,
        scopes=(
            "https://graph.microsoft.com/Mail.Send",
            "https://graph.microsoft.com/Mail.Read",
            EXTRA_GRAPH_SCOPE,
        ),
    )
    right = canary("pw-right")
    stubs.set_mail_passwords(
        {
            "wrong-pw@client.example": right,
            "self-signed@client.example": cases["untrusted-certificate"].secret,
        }
    )
    stubs.canaries.update(c.secret for c in cases.values())
    for key in ("scope-too-broad", "invalid-grant"):
        _start_case(k8s, env, cases[key], oauth_spec("gmail"), token_document(cases[key].secret))
    case = cases["ms-scope-too-broad"]
    _start_case(k8s, env, case, oauth_spec("microsoft365"), token_document(case.secret))
    case = cases["wrong-smtp-password"]
    spec = smtp_spec(stubs.smtp_starttls, stubs.dovecot.imaps_port)
    _start_case(k8s, env, case, spec, smtp_document(case.secret))
    case = cases["untrusted-certificate"]
    spec = smtp_spec(stubs.smtp_untrusted, stubs.dovecot.imaps_port)
    _start_case(k8s, env, case, spec, smtp_document(case.secret))
    for case in cases.values():
        wait_condition(k8s, NS, case.name, "Verified", "False", case.reason)
    return cases


@pytest.mark.parametrize(
    ("which", "hint"),
    [
        ("scope-too-broad", EXTRA_GOOGLE_SCOPE),
        ("ms-scope-too-broad", "Mail.ReadWrite"),
        ("invalid-grant", "invalid_grant"),
        ("wrong-smtp-password", "refused the login"),
        ("untrusted-certificate", "NUMAIL_MAIL_CA_FILE"),
    ],
)
def test_a_failed_verification_names_its_reason(
    failures: dict[str, Case], k8s: K8s, which: str, hint: str
) -> None:
    case = failures[which]
    mbx = get_mailbox(k8s, NS, case.name)
    verified, ready = condition(mbx, "Verified"), condition(mbx, "Ready")
    assert verified and verified["status"] == "False" and verified["reason"] == case.reason
    assert hint in verified["message"]
    assert ready and ready["status"] == "False" and ready["reason"] == case.reason
    # Sealing worked; only the login did not.
    assert condition(mbx, "CredentialsSealed")["status"] == "True"  # type: ignore[index]
    assert mbx["status"]["lastError"] == case.reason  # type: ignore[index]
    assert any(
        e.type == "Warning" and e.reason == case.reason for e in mailbox_events(k8s, NS, case.name)
    )


def test_a_permanent_failure_waits_for_new_credentials(env: Env, k8s: K8s) -> None:
    stubs = env.stubs
    unknown, good = canary("gmail-rt-revoked"), canary("gmail-rt-new")
    stubs.canaries.update({unknown, good})
    case = Case("regrant", "gmail", unknown)
    _start_case(k8s, env, case, oauth_spec("gmail"), token_document(unknown))
    wait_condition(k8s, NS, "regrant", "Verified", "False", "InvalidGrant")
    tries = stubs.google.requests_for(unknown)
    assert tries >= 1
    time.sleep(12)  # longer than the first two retry delays of a transient failure (5 s, 10 s)
    assert stubs.google.requests_for(unknown) == tries, "a permanent failure was retried"

    stubs.google.add_grant(good, GOOGLE_CLIENT_ID, stubs.google_client_secret)
    create_intake(k8s, NS, "regrant-intake", token_document(good))
    wait_condition(k8s, NS, "regrant", "Ready", "True", timeout=30)
    assert stubs.google.requests_for(good) >= 1


def test_an_unreachable_server_is_retried_until_it_answers(env: Env, k8s: K8s) -> None:
    """The intake Secret comes after the Mailbox, so the retry must come from the intake path."""
    stubs = env.stubs
    password = canary("pw-late-server")
    stubs.set_mail_passwords({"late-server@client.example": password})
    port = free_port()
    spec = smtp_spec(stubs.smtp_starttls, stubs.dovecot.imaps_port)
    spec["smtp"]["port"] = port  # nothing listens there yet
    create_mailbox(k8s, NS, "late-server", spec, {"secretRef": {"name": "late-server-intake"}})
    wait_condition(k8s, NS, "late-server", "Ready", "False", "CredentialsMissing")
    create_intake(k8s, NS, "late-server-intake", smtp_document(password))
    wait_condition(k8s, NS, "late-server", "Verified", "False", "Unreachable")
    server = SmtpServer(
        stubs.cert, "starttls", {"late-server@client.example": password}, port=port
    ).start()
    try:
        wait_condition(k8s, NS, "late-server", "Ready", "True", timeout=60)
    finally:
        server.stop()
    assert server.attempts_by("late-server@client.example") == [True]


def test_rotation_reseals_and_the_old_password_stops_working(env: Env, k8s: K8s) -> None:
    """Precisely: after rotation the sealed Secret holds a new frame that opens to the new
    password only; the mail server accepts the new password and refuses the old one. A copy of
    the old frame taken earlier still opens under the same DEK: re-sealing replaces the
    Secret, it does not re-key (DEK rotation does that)."""
    stubs = env.stubs
    user = "rotate@client.example"
    old, new = canary("pw-old"), canary("pw-new")
    stubs.set_mail_passwords({user: old})
    spec = smtp_spec(stubs.smtp_starttls, stubs.dovecot.imaps_port)
    _start_case(k8s, env, Case("rotate", "smtp", old), spec, smtp_document(old))
    wait_condition(k8s, NS, "rotate", "Ready", "True")
    before = sealed_frame(k8s, NS, "rotate")

    stubs.set_mail_passwords({user: new})  # the user changed the app password at the provider
    create_intake(k8s, NS, "rotate-intake", smtp_document(new))

    def rotated() -> bool:
        if secret_exists(k8s, NS, "rotate-intake"):
            return False
        secret = k8s.core.read_namespaced_secret("numail-mailbox-rotate", NS)
        verification = json.loads(
            (secret.metadata.annotations or {}).get("numail.ai/verification") or "{}"
        )
        return (
            sealed_frame(k8s, NS, "rotate") != before and verification.get("reason") == "Verified"
        )

    wait_for(rotated, 30, "the rotated credentials sealed and verified")
    mbx = wait_condition(k8s, NS, "rotate", "Ready", "True")
    assert "lastError" not in mbx["status"]
    after = sealed_frame(k8s, NS, "rotate")
    dek = workspace_dek(k8s, env.operator.keyring, env.workspaces[WS])
    assert json.loads(open_frame(dek, env.workspaces[WS], NS, "rotate", after)) == {"password": new}
    assert old.encode() not in open_frame(dek, env.workspaces[WS], NS, "rotate", after)
    # Not a claim of this feature: an old copy of the frame is as readable as before.
    assert json.loads(open_frame(dek, env.workspaces[WS], NS, "rotate", before)) == {
        "password": old
    }
    server = MailServer("127.0.0.1", stubs.smtp_starttls.port, "starttls", user)
    context = tls_context(str(stubs.cert.ca))
    verify_smtp(server, new, context=context)
    with pytest.raises(AuthFailed):
        verify_smtp(server, old, context=context)
    sealed_events = [
        e for e in mailbox_events(k8s, NS, "rotate") if e.reason == "CredentialsSealed"
    ]
    assert sum(e.count or 1 for e in sealed_events) == 2


@pytest.mark.parametrize("provider", ["gmail", "microsoft365", "smtp"])
def test_disconnect_revokes_once_and_destroys_the_secret(env: Env, k8s: K8s, provider: str) -> None:
    stubs = env.stubs
    name = f"bye-{provider}"
    secret = canary(f"bye-{provider}")
    stubs.canaries.add(secret)
    if provider == "gmail":
        stubs.google.add_grant(secret, GOOGLE_CLIENT_ID, stubs.google_client_secret)
        spec, document = oauth_spec("gmail"), token_document(secret)
    elif provider == "microsoft365":
        stubs.microsoft.add_grant(
            secret, MICROSOFT_CLIENT_ID, stubs.microsoft_client_secret, tenant=MICROSOFT_TENANT
        )
        spec, document = oauth_spec("microsoft365"), token_document(secret)
    else:
        stubs.set_mail_passwords({f"{name}@client.example": secret})
        spec = smtp_spec(stubs.smtp_starttls, stubs.dovecot.imaps_port)
        document = smtp_document(secret)
    _start_case(k8s, env, Case(name, provider, secret), spec, document)
    wait_condition(k8s, NS, name, "Ready", "True")
    google_before, ms_before = list(stubs.google.revocations), list(stubs.microsoft.revocations)

    k8s.custom.delete_namespaced_custom_object(G, V, NS, "mailboxes", name)
    wait_for(lambda: get_mailbox(k8s, NS, name) is None, 60, f"mailbox {name} gone")

    assert not secret_exists(k8s, NS, f"numail-mailbox-{name}")
    google_new = stubs.google.revocations[len(google_before) :]
    ms_new = stubs.microsoft.revocations[len(ms_before) :]
    reasons = {e.reason for e in mailbox_events(k8s, NS, name)}
    if provider == "gmail":
        assert google_new == [secret] and ms_new == []
        assert stubs.google.grants[secret].revoked
        assert "GrantRevoked" in reasons
    elif provider == "microsoft365":
        assert ms_new == [secret] and google_new == []
        assert stubs.microsoft.grants[secret].revoked
        assert "GrantRevoked" in reasons
    else:
        assert google_new == [] and ms_new == []
        assert "NothingToRevoke" in reasons
    assert "CredentialsDestroyed" in reasons


def test_the_operator_counts_mailbox_reconciles(env: Env, connected: dict[str, Case]) -> None:
    text = env.operator.process.metrics()
    assert 'numail_reconciles_total{kind="Mailbox",outcome="ok"}' in text


def test_no_secret_appears_in_the_log_events_or_status(
    connected: dict[str, Case], failures: dict[str, Case], env: Env, k8s: K8s
) -> None:
    """Last: every canary handed out in this module, and every access token the stubs issued,
    is absent from the operator's log, every Event and every Mailbox object (status included)."""
    canaries = env.stubs.all_canaries()
    assert len(canaries) > 15
    places: dict[str, str] = {"operator log": env.operator.log.read_text(errors="replace")}
    for namespace in (NS, OTHER_NS, PLAIN_NS):
        for event in events_in(k8s, namespace):
            places[f"Event {namespace}/{event.metadata.name}"] = f"{event.reason} {event.message}"
        with contextlib.suppress(ApiException):
            for mbx in k8s.custom.list_namespaced_custom_object(G, V, namespace, "mailboxes")[
                "items"
            ]:
                places[f"Mailbox {namespace}/{mbx['metadata']['name']}"] = json.dumps(mbx)
    # The scan has something to scan: the log mentions mailboxes, Events were posted.
    assert "mailbox" in places["operator log"].lower()
    assert sum(1 for p in places if p.startswith("Event")) >= 10
    leaks = [(where, c[:24]) for where, text in places.items() for c in canaries if c in text]
    assert not leaks, f"secrets leaked: {leaks}"


def test_deleting_a_workspace_revokes_its_mailboxes_before_shredding(env: Env, k8s: K8s) -> None:
    """The Workspace finalizer waits for each Mailbox to revoke its grant; only then is the DEK
    destroyed. In the other order the credentials needed to revoke would already be gone."""
    stubs = env.stubs
    ws = "mbx-shred"
    create_workspaces(k8s, [ws], stubs)
    secret = canary("shred-gmail")
    stubs.canaries.add(secret)
    stubs.google.add_grant(secret, GOOGLE_CLIENT_ID, stubs.google_client_secret)
    create_intake(k8s, f"ws-{ws}", "g-intake", token_document(secret))
    create_mailbox(k8s, f"ws-{ws}", "g", oauth_spec("gmail"), {"secretRef": {"name": "g-intake"}})
    wait_condition(k8s, f"ws-{ws}", "g", "Ready", "True")
    before = list(stubs.google.revocations)

    k8s.custom.delete_cluster_custom_object(G, V, "workspaces", ws)
    wait_for(
        lambda: absent(lambda: k8s.custom.get_cluster_custom_object(G, V, "workspaces", ws)),
        120,
        "workspace gone",
    )
    assert stubs.google.revocations[len(before) :] == [secret]
    assert stubs.google.grants[secret].revoked
