"""Mailbox reconciler: take credentials in, seal them under the workspace DEK, verify them at the
provider; on deletion revoke the grant, destroy the sealed Secret and audit.

Order matters. The sealed Secret is written before the intake Secret is deleted, so a crash in
between leaves the plaintext for the next pass instead of losing the credential; that pass finds
the sealed copy already holds the same credential, writes nothing, and deletes the intake.
Verification runs on what is sealed, never on the intake, so the workers use what was checked.
Every pass ends by writing the Mailbox's row in PostgreSQL (what the workers read: servers,
address, daily cap, state); deletion marks it disconnected. The database is evidence, not a
dependency: when it is down the pass goes on and comes back soon to write the row.

Secrets enter memory in three places (intake Secret, sealed blob, sealed Secret) and each is
registered with numail.redact at once. Messages for status and Events are written here from
fixed text, reasons and names only: Events and status are not passed through the redactor.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from numail import crypto, redact
from numail.api import LABEL_WORKSPACE, LABEL_WORKSPACE_UID
from numail.api.conditions import get_condition, set_condition
from numail.api.models import Condition, Mailbox
from numail.api.sealing import CREDENTIALS_PURPOSE, open_credentials
from numail.db.mailboxes import MailboxState
from numail.providers.base import MalformedCredentials, ProviderError, Revocation
from numail.providers.credentials import (
    Credentials,
    canonical_document,
    intake_document,
    parse_credentials,
)
from numail.providers.mailbox import DEFAULT_TENANT, MailboxTarget, OAuthClient, ProviderClients
from numail.providers.smtp_imap import MailServer
from numail_operator import failpoints, k8s
from numail_operator.build.mailbox import (
    ANNOTATION_VERIFICATION,
    SEALED_DATA_KEY,
    MailboxSecretInputs,
    Verification,
    build_mailbox_record,
    build_sealed_secret,
    mailbox_secret_name,
)
from numail_operator.build.workspace import RESERVED_SECRET_PREFIX
from numail_operator.reconcile import records
from numail_operator.reconcile.keys import (
    KeyNotReady,
    ProviderDirectory,
    WorkspaceKeys,
    load_dek,
    load_keys,
)
from numail_operator.settings import Settings

log = logging.getLogger(__name__)

Events = list[tuple[str, str, str]]

BACKOFF_BASE = 5.0
BACKOFF_MAX = 300.0
# A permanent failure is tried again only after this many resync intervals (an hour by default),
# or at once when the spec or the credentials change.
FAILED_RECHECK_INTERVALS = 12
# Deletion stops waiting for a provider that can't be reached after this many tries (about
# half an hour with the backoff), so a namespace is never stuck Terminating for ever.
MAX_REVOKE_ATTEMPTS = 10
# How soon a pass comes back when it could not write the Mailbox's database row.
REGISTRY_RETRY = 30.0
# Key errors that mean the data key is gone for good: the credentials are crypto-shredded.
_KEY_GONE = frozenset({"DataKeyMissing", "ForeignDataKey"})


def backoff(attempt: int, base: float = BACKOFF_BASE) -> float:
    """5, 10, 20, 40 ... seconds, capped at five minutes."""
    return float(min(BACKOFF_MAX, base * 2 ** min(max(attempt, 0), 10)))


@dataclass
class MailboxOutcome:
    """What a pass did: status to write (None if unchanged), Events, and when to try again
    (None: nothing to retry; the next change or resync brings the mailbox back)."""

    status: dict[str, Any] | None
    events: Events = field(default_factory=list)
    retry_after: float | None = None
    retry_reason: str = ""


class _NotReady(Exception):
    """Stop this pass with Ready=False: `reason` and `message` go into the Ready condition."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        retry_after: float | None = None,
        condition: str | None = None,
        warn: bool = True,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.condition = condition  # also set this condition type False with the same reason
        self.warn = warn


class _Report:
    """Conditions and status fields of one pass; patched only if something a reader sees moved."""

    def __init__(self, body: dict[str, Any], now: dt.datetime) -> None:
        self.now = now
        self.generation = int((body.get("metadata") or {}).get("generation") or 1)
        self.status: dict[str, Any] = dict(body.get("status") or {})
        self.original = dict(self.status)
        self.conditions: list[Condition] = []
        for raw in self.status.get("conditions") or []:
            try:
                self.conditions.append(Condition.model_validate(raw))
            except ValueError:
                continue
        self.changed = False
        self.events: Events = []
        self.retry_after: float | None = None
        self.retry_reason = ""
        self.workspace_uid: str | None = None  # known once the owning Workspace is found

    def set(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.conditions, did = set_condition(
            self.conditions,
            type_,
            "True" if ok else "False",
            reason,
            message,
            self.generation,
            self.now,
        )
        self.changed = self.changed or did

    def get(self, type_: str) -> Condition | None:
        return get_condition(self.conditions, type_)

    def field(self, name: str, value: Any) -> None:
        if self.status.get(name) != value:
            self.status[name] = value
            self.changed = True

    def outcome(self) -> MailboxOutcome:
        if self.status.get("observedGeneration") != self.generation:
            self.changed = True
        if not self.changed:
            return MailboxOutcome(None, self.events, self.retry_after, self.retry_reason)
        dumped = [
            c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in self.conditions
        ]
        status = {**self.status, "conditions": dumped, "observedGeneration": self.generation}
        return MailboxOutcome(status, self.events, self.retry_after, self.retry_reason)


def parse_mailbox(body: dict[str, Any]) -> Mailbox:
    """Metadata and spec, strictly; status is ours and read field by field."""
    return Mailbox.model_validate(
        {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
    )


def _timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- reconcile ----------------------------------------------------------------------------


def reconcile_mailbox(
    body: dict[str, Any],
    clients: k8s.Clients,
    providers: ProviderDirectory,
    settings: Settings,
    *,
    provider_clients: ProviderClients | None = None,
    attempt: int = 0,
    now: dt.datetime | None = None,
) -> MailboxOutcome:
    """One pass over a Mailbox. `attempt` is how many passes in a row asked for a retry, and
    sets the backoff of a transient failure."""
    report = _Report(body, now or dt.datetime.now(dt.UTC))
    try:
        mailbox = parse_mailbox(body)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in err.errors(include_input=False, include_url=False)
        )
        report.set("Ready", False, "InvalidSpec", f"the Mailbox does not validate: {problems}")
        return report.outcome()
    clients_for_providers = provider_clients or ProviderClients(settings.mail_providers)
    try:
        _reconcile(mailbox, clients, providers, settings, clients_for_providers, report, attempt)
    except _NotReady as stop:
        if stop.condition:
            report.set(stop.condition, False, stop.reason, stop.message)
        report.set("Ready", False, stop.reason, stop.message)
        if stop.warn:
            report.events.append(("Warning", stop.reason, stop.message))
        if stop.retry_after is not None:
            report.retry_after = stop.retry_after
            report.retry_reason = stop.reason
    _register(mailbox, settings, report)
    return report.outcome()


def registry_state(report: _Report) -> MailboxState:
    """verified once a login worked, connected once credentials are sealed, else pending."""
    verified, sealed = report.get("Verified"), report.get("CredentialsSealed")
    if verified is not None and verified.status == "True":
        return "verified"
    if sealed is not None and sealed.status == "True":
        return "connected"
    return "pending"


def _register(mailbox: Mailbox, settings: Settings, report: _Report) -> None:
    """Write the Mailbox's row; when that fails, come back soon (it never blocks the pass)."""
    if report.workspace_uid is None:
        return  # no Workspace yet, so no row to write; a later pass writes it
    record = build_mailbox_record(mailbox, report.workspace_uid, registry_state(report))
    if records.register_mailbox_row(settings, record) is False and report.retry_after is None:
        report.retry_after = REGISTRY_RETRY
        report.retry_reason = "DatabaseUnavailable"


def _reconcile(
    mailbox: Mailbox,
    clients: k8s.Clients,
    providers: ProviderDirectory,
    settings: Settings,
    provider_clients: ProviderClients,
    report: _Report,
    attempt: int,
) -> None:
    """Gather the workspace and its keys, seal what came in, then verify what is sealed."""
    workspace, workspace_uid, key_provider = _workspace(clients, mailbox.namespace or "")
    report.workspace_uid = workspace_uid
    try:
        keys = load_keys(clients, providers.get(key_provider), workspace, workspace_uid)
    except KeyNotReady as err:
        raise _NotReady(
            "WorkspaceNotReady",
            f"the keys of Workspace {workspace} are not available yet ({err.reason}); retrying",
            retry_after=backoff(attempt),
            warn=False,
        ) from None
    credentials, record = _seal(mailbox, clients, settings, report, workspace, workspace_uid, keys)
    _verify(mailbox, clients, settings, provider_clients, report, credentials, record, attempt)


def _seal(
    mailbox: Mailbox,
    clients: k8s.Clients,
    settings: Settings,
    report: _Report,
    workspace: str,
    workspace_uid: str,
    keys: WorkspaceKeys,
) -> tuple[Credentials, Verification | None]:
    """Seal incoming credentials unless the sealed Secret already holds them, then consume the
    intake Secret. Returns the credentials now sealed and the last verification of them."""
    namespace, name, provider = mailbox.namespace or "", mailbox.name, mailbox.spec.provider
    ref = f"{namespace}/{name}"
    secret_name = mailbox_secret_name(name)
    context = crypto.SealContext(workspace_uid, ref, CREDENTIALS_PURPOSE)
    existing = k8s.read_secret(clients, namespace, secret_name)
    sealed_now = _open_sealed_secret(existing, keys.dek, context)
    incoming, intake, source = _incoming(
        mailbox, clients, keys.sealing_key, ref, existing, sealed_now
    )
    record = None
    if existing is not None:
        annotations = existing.metadata.annotations or {}
        record = Verification.decode(annotations.get(ANNOTATION_VERIFICATION))
    if incoming is None:
        assert sealed_now is not None  # _incoming raised otherwise
        credentials = _parse(provider, sealed_now, "sealed Secret")
    else:
        credentials = _parse(provider, incoming, source)
        document = canonical_document(credentials)
        redact.register(document)
        if document != sealed_now:
            inputs = MailboxSecretInputs(
                namespace=namespace,
                mailbox=name,
                mailbox_uid=mailbox.uid or "",
                workspace=workspace,
                workspace_uid=workspace_uid,
                provider=provider,
                source=source,
            )
            frame = crypto.seal(keys.dek, document, context)
            try:
                created = k8s.write_secret(
                    clients, build_sealed_secret(inputs, frame, keys.dek.version)
                )
            except ApiException as err:
                if err.status != 409:
                    raise
                raise _NotReady(
                    "Conflict",
                    "the sealed Secret changed meanwhile; retrying",
                    retry_after=1,
                    warn=False,
                ) from None
            failpoints.hit("mailbox.after-seal")
            record = None  # new credentials: the last verification says nothing about them
            where = (
                f"intake Secret {intake.metadata.name}"
                if intake is not None
                else "spec.credentials.sealed"
            )
            report.events.append(
                (
                    "Normal",
                    "CredentialsSealed",
                    f"sealed the credentials from {where} into Secret {secret_name} under data "
                    f"key version {keys.dek.version}",
                )
            )
            if created:
                audit_mailbox_event(
                    settings,
                    action="mailbox.connected",
                    workspace_uid=workspace_uid,
                    mailbox=ref,
                    provider=provider,
                    details={"source": source, "keyVersion": keys.dek.version},
                )
        if intake is not None:
            _consume_intake(clients, namespace, intake, report)
    report.set(
        "CredentialsSealed",
        True,
        "Sealed",
        f"sealed in Secret {secret_name} under data key version {keys.dek.version}",
    )
    report.field("sealedSecretName", secret_name)
    report.field("keyVersion", keys.dek.version)
    return credentials, record


def _verify(
    mailbox: Mailbox,
    clients: k8s.Clients,
    settings: Settings,
    provider_clients: ProviderClients,
    report: _Report,
    credentials: Credentials,
    record: Verification | None,
    attempt: int,
) -> None:
    """Log in at the provider, unless the last verification of these very credentials stands;
    record a success or a permanent failure on the sealed Secret."""
    namespace, secret_name = mailbox.namespace or "", mailbox_secret_name(mailbox.name)
    target, client_version = _target(mailbox, clients)
    if _still_stands(record, report, client_version, settings):
        assert record is not None
        if record.reason != "Verified":
            verified = report.get("Verified")
            raise _NotReady(
                record.reason,
                verified.message if verified else f"verification failed ({record.reason})",
                warn=False,
            )
        report.set("Ready", True, "Verified", "credentials sealed and verified")
        return
    try:
        summary = provider_clients.verify(target, credentials)
    except ProviderError as err:
        report.field("lastError", err.reason)
        if err.transient:
            raise _NotReady(
                err.reason, err.message, retry_after=backoff(attempt), condition="Verified"
            ) from None
        _record(clients, namespace, secret_name, report, client_version, err.reason)
        raise _NotReady(err.reason, err.message, condition="Verified") from None
    previous = report.get("Verified")
    if previous is None or previous.status != "True":
        report.events.append(("Normal", "Verified", summary))
    report.set("Verified", True, "Verified", summary)
    report.field("verifiedAt", _timestamp(report.now))
    report.field("lastError", None)
    _record(clients, namespace, secret_name, report, client_version, "Verified")
    report.set("Ready", True, "Verified", "credentials sealed and verified")


def _workspace(clients: k8s.Clients, namespace: str) -> tuple[str, str, str]:
    """(workspace name, uid, key provider name) of a Ready workspace owning `namespace`."""
    labels = k8s.namespace_labels(clients, namespace) or {}
    workspace = labels.get(LABEL_WORKSPACE)
    if not workspace:
        raise _NotReady(
            "NotInWorkspace",
            f"namespace {namespace} belongs to no Workspace: a Mailbox must live in the "
            "namespace ws-<name> of its Workspace; create it there",
            retry_after=60,
        )
    body = k8s.get_workspace(clients, workspace)
    if body is None or body["metadata"].get("deletionTimestamp"):
        state = "does not exist" if body is None else "is being deleted"
        raise _NotReady(
            "WorkspaceNotReady", f"Workspace {workspace} {state}", retry_after=30, warn=False
        )
    ready = next(
        (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
        None,
    )
    if not ready or ready.get("status") != "True":
        why = ready.get("reason", "Unknown") if ready else "NotReconciled"
        raise _NotReady(
            "WorkspaceNotReady",
            f"Workspace {workspace} is not Ready ({why}); waiting for it",
            retry_after=10,
            warn=False,
        )
    uid = str(body["metadata"]["uid"])
    key_provider = str((body.get("spec") or {}).get("keyProvider") or "default")
    return workspace, uid, key_provider


def _open_sealed_secret(
    secret: Any, dek: crypto.DataKey, context: crypto.SealContext
) -> bytes | None:
    """The plaintext now in the sealed Secret, or None if absent or not openable (sealed under
    another DEK or for another mailbox: then it is re-sealed from the source, if there is one)."""
    if secret is None:
        return None
    raw = (secret.data or {}).get(SEALED_DATA_KEY, "")
    try:
        plaintext = crypto.open(dek, base64.b64decode(raw), context)
    except (crypto.CryptoError, ValueError):
        return None
    redact.register(plaintext)
    return plaintext


def _incoming(
    mailbox: Mailbox,
    clients: k8s.Clients,
    sealing_key: X25519PrivateKey,
    ref: str,
    existing: Any,
    sealed_now: bytes | None,
) -> tuple[bytes | None, Any, str]:
    """(credentials document to seal or None, the intake Secret if one is waiting, source)."""
    credentials = mailbox.spec.credentials
    if credentials.sealed is not None:
        try:
            document = open_credentials(sealing_key, credentials.sealed, ref)
        except crypto.WrongKey:
            raise _NotReady(
                "SealedForAnotherWorkspace",
                "spec.credentials.sealed was sealed to another Workspace's key (or an older "
                "one), so it can't be opened here: seal it again with `numail seal --workspace "
                f"{ref.split('/')[0].removeprefix('ws-')} --mailbox {ref}`",
                condition="CredentialsSealed",
            ) from None
        except crypto.WrongContext:
            raise _NotReady(
                "SealedForAnotherMailbox",
                "spec.credentials.sealed was sealed for another Mailbox: seal it again with "
                f"`numail seal --mailbox {ref}`",
                condition="CredentialsSealed",
            ) from None
        except crypto.CryptoError as err:
            raise _NotReady(
                "MalformedSealedCredentials",
                f"spec.credentials.sealed can't be read: {err}",
                condition="CredentialsSealed",
            ) from None
        redact.register(document)
        return document, None, "sealed"
    assert credentials.secret_ref is not None  # the CRD and the model require one of the two
    intake_name = credentials.secret_ref.name
    intake = k8s.read_secret(clients, mailbox.namespace or "", intake_name)
    if intake is None:
        if sealed_now is not None:
            return None, None, "secretRef"
        if existing is not None:
            raise _NotReady(
                "SealedSecretUnreadable",
                f"Secret {existing.metadata.name} does not open with the workspace's current "
                "data key (sealed under another key version, or for another mailbox): write "
                f"intake Secret {intake_name} again to seal the credentials anew",
                condition="CredentialsSealed",
            )
        raise _NotReady(
            "CredentialsMissing",
            f"intake Secret {intake_name} does not exist in {mailbox.namespace}: create it, "
            "labelled numail.ai/intake=true so it is sealed at once (see docs/mailboxes.md)",
            condition="CredentialsSealed",
            warn=False,
        )
    try:
        document = intake_document(intake.data or {})
    except MalformedCredentials as err:
        raise _NotReady(
            "InvalidCredentials",
            f"intake Secret {intake_name}: {err.message}",
            condition="CredentialsSealed",
        ) from None
    return document, intake, "secretRef"


def _parse(provider: str, document: bytes, where: str) -> Credentials:
    try:
        return parse_credentials(provider, document)
    except MalformedCredentials as err:
        raise _NotReady(
            "InvalidCredentials",
            f"the credentials in {where} are not valid for provider {provider}: {err.message}",
            condition="CredentialsSealed",
        ) from None


def _consume_intake(clients: k8s.Clients, namespace: str, intake: Any, report: _Report) -> None:
    """Delete exactly the version of the intake Secret that was sealed."""
    name = intake.metadata.name
    result = k8s.delete_secret_if_unchanged(
        clients, namespace, name, intake.metadata.uid, intake.metadata.resource_version
    )
    if result == "changed":
        raise _NotReady(
            "IntakeChanged",
            f"intake Secret {name} changed while it was being sealed; sealing the new version",
            retry_after=1,
            warn=False,
        )
    if result == "deleted":
        report.events.append(
            ("Normal", "IntakeSecretDeleted", f"deleted intake Secret {name} once it was sealed")
        )


def _target(mailbox: Mailbox, clients: k8s.Clients) -> tuple[MailboxTarget, str]:
    """Where to verify, and the resourceVersion of the OAuth client secret used ("" if none)."""
    spec = mailbox.spec
    if spec.provider == "smtp":
        assert spec.smtp is not None and spec.imap is not None  # the CRD requires both
        smtp = MailServer(
            spec.smtp.host, spec.smtp.port, spec.smtp.security, spec.smtp.username or spec.address
        )
        imap = MailServer(
            spec.imap.host,
            spec.imap.port,
            spec.imap.security,
            spec.imap.username or spec.smtp.username or spec.address,
        )
        return MailboxTarget("smtp", smtp=smtp, imap=imap), ""
    oauth, version = _oauth_client(mailbox, clients, required=True)
    assert oauth is not None
    return MailboxTarget(spec.provider, oauth=oauth), version


def _oauth_client(
    mailbox: Mailbox, clients: k8s.Clients, *, required: bool
) -> tuple[OAuthClient | None, str]:
    spec = mailbox.spec
    oauth = spec.oauth
    if oauth is None or oauth.client_secret_ref is None:
        if not required:
            return None, ""
        raise _NotReady(
            "OAuthClientMissing",
            f"provider {spec.provider} needs spec.oauth.clientId and spec.oauth.clientSecretRef "
            "(a Secret in this namespace holding the OAuth client secret)",
            condition="Verified",
        )
    ref = oauth.client_secret_ref
    if ref.name.startswith(RESERVED_SECRET_PREFIX):
        # numail-* Secrets are the operator's (the workers' DSN, keys, sealed credentials):
        # never sent to a provider as a client secret, never granted to the workers.
        if not required:
            return None, ""
        raise _NotReady(
            "ReservedSecretName",
            f"spec.oauth.clientSecretRef names {ref.name}, but Secrets named "
            f"{RESERVED_SECRET_PREFIX}* belong to the operator: put the OAuth client secret in "
            "a Secret of another name",
            condition="Verified",
        )
    secret = k8s.read_secret(clients, mailbox.namespace or "", ref.name)
    value = (secret.data or {}).get(ref.key) if secret is not None else None
    if secret is None or not value:
        if not required:
            return None, ""
        what = "does not exist" if secret is None else f"has no key {ref.key!r}"
        raise _NotReady(
            "OAuthClientSecretMissing",
            f"Secret {ref.name} named by spec.oauth.clientSecretRef {what}",
            condition="Verified",
            retry_after=60,
        )
    redact.register(value)
    client_secret = base64.b64decode(value).decode(errors="replace").strip()
    redact.register(client_secret)
    tenant = oauth.tenant or DEFAULT_TENANT
    client = OAuthClient(client_id=oauth.client_id, client_secret=client_secret, tenant=tenant)
    return client, str(secret.metadata.resource_version or "")


def _still_stands(
    record: Verification | None, report: _Report, client_version: str, settings: Settings
) -> bool:
    """True if the recorded verification is of these credentials, this generation and this
    OAuth client secret, the Verified condition says the same, and it is recent enough: half a
    resync interval for a success (so each resync checks again), twelve for a permanent failure
    (which otherwise waits for a change)."""
    if record is None:
        return False
    verified = report.get("Verified")
    if (
        verified is None
        or verified.reason != record.reason
        or verified.observed_generation != report.generation
        or record.generation != report.generation
        or record.client != client_version
    ):
        return False
    try:
        at = dt.datetime.strptime(record.at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return False
    age = (report.now - at).total_seconds()
    interval = float(settings.reconcile_interval)
    limit = interval / 2 if record.reason == "Verified" else interval * FAILED_RECHECK_INTERVALS
    return 0 <= age < limit


def _record(
    clients: k8s.Clients,
    namespace: str,
    secret_name: str,
    report: _Report,
    client_version: str,
    reason: str,
) -> None:
    record = Verification(report.generation, client_version, reason, _timestamp(report.now))
    k8s.annotate_secret(clients, namespace, secret_name, {ANNOTATION_VERIFICATION: record.encode()})


# --- deletion ------------------------------------------------------------------------------


class _RetryRevoke(Exception):
    """Revocation may work later (provider or key service unreachable)."""


class _RevokeSkipped(Exception):
    """Revocation can't be done from here, ever: deletion goes on with a Warning saying why."""


def finalize_mailbox(
    body: dict[str, Any],
    clients: k8s.Clients,
    providers: ProviderDirectory,
    settings: Settings,
    *,
    provider_clients: ProviderClients | None = None,
    attempt: int = 0,
) -> MailboxOutcome:
    """Disconnect: revoke the grant at the provider, destroy the sealed Secret (and any intake
    Secret still waiting), then audit. A revocation that can't be done now is retried with
    backoff, up to MAX_REVOKE_ATTEMPTS; a grant already invalid counts as revoked."""
    metadata = body.get("metadata") or {}
    namespace, name = str(metadata.get("namespace", "")), str(metadata["name"])
    events: Events = []
    try:
        mailbox: Mailbox | None = parse_mailbox(body)
    except ValidationError:
        mailbox = None
    labels = k8s.namespace_labels(clients, namespace) or {}
    secret_name = mailbox_secret_name(name)
    secret = k8s.read_secret(clients, namespace, secret_name)
    outcome = "nothing-sealed"
    if secret is not None:
        try:
            revocation = _revoke(
                mailbox, secret, labels, clients, providers, settings, provider_clients
            )
        except _RetryRevoke as err:
            if attempt + 1 < MAX_REVOKE_ATTEMPTS:
                message = f"{err}; retrying before the sealed Secret is destroyed"
                events.append(("Warning", "RevokeRetrying", message))
                return MailboxOutcome(
                    None, events, retry_after=backoff(attempt), retry_reason="RevokeRetrying"
                )
            outcome = "abandoned"
            events.append(
                (
                    "Warning",
                    "RevokeAbandoned",
                    f"gave up after {MAX_REVOKE_ATTEMPTS} tries ({err}); revoke the grant at "
                    "the provider by hand",
                )
            )
        except _RevokeSkipped as err:
            outcome = "skipped"
            events.append(("Warning", "RevokeSkipped", str(err)))
        else:
            outcome = revocation.outcome
            reason = {"revoked": "GrantRevoked", "already-invalid": "GrantAlreadyInvalid"}
            events.append(
                ("Normal", reason.get(revocation.outcome, "NothingToRevoke"), revocation.detail)
            )
        if k8s.delete_secret(clients, namespace, secret_name):
            events.append(
                ("Normal", "CredentialsDestroyed", f"deleted sealed Secret {secret_name}")
            )
    if mailbox is not None and mailbox.spec.credentials.secret_ref is not None:
        intake = mailbox.spec.credentials.secret_ref.name
        if k8s.delete_secret(clients, namespace, intake):
            events.append(
                ("Normal", "IntakeSecretDeleted", f"deleted intake Secret {intake} unsealed")
            )
    workspace_uid = labels.get(LABEL_WORKSPACE_UID, "")
    mailbox_uid = str(metadata.get("uid") or "")
    recorded = (
        records.disconnect_mailbox(settings, workspace_uid, mailbox_uid, f"{namespace}/{name}")
        if workspace_uid and mailbox_uid
        else None
    )
    if recorded is False:
        events.append(
            (
                "Warning",
                "DisconnectNotRecorded",
                "the database could not be reached to mark this mailbox disconnected; the "
                "Workspace's next pass does it (until then its jobs fail to open the "
                "destroyed credentials and wait)",
            )
        )
    if workspace_uid:
        audit_mailbox_event(
            settings,
            action="mailbox.disconnected",
            workspace_uid=workspace_uid,
            mailbox=f"{namespace}/{name}",
            provider=str((body.get("spec") or {}).get("provider", "")),
            details={"revocation": outcome},
        )
    return MailboxOutcome(None, events)


def _revoke(
    mailbox: Mailbox | None,
    secret: Any,
    labels: dict[str, str],
    clients: k8s.Clients,
    providers: ProviderDirectory,
    settings: Settings,
    provider_clients: ProviderClients | None,
) -> Revocation:
    """Open the sealed credentials and end the grant. Anything that makes them unreadable for
    good (the DEK destroyed with its workspace, a foreign frame) or a provider's refusal means
    nothing can be revoked from here: _RevokeSkipped."""
    if mailbox is None:
        raise _RevokeSkipped("the Mailbox does not validate, so its grant was not revoked")
    workspace = labels.get(LABEL_WORKSPACE, "")
    workspace_uid = labels.get(LABEL_WORKSPACE_UID, "")
    shredded = _RevokeSkipped(
        "the workspace's data key is gone, so the sealed credentials are unreadable "
        "(crypto-shredded) and the grant was not revoked; revoke it at the provider if it "
        "still matters"
    )
    if not workspace or not workspace_uid:
        raise shredded
    body = k8s.get_workspace(clients, workspace)
    key_provider = str(((body or {}).get("spec") or {}).get("keyProvider") or "default")
    try:
        dek, _ = load_dek(clients, providers.get(key_provider), workspace, workspace_uid)
    except KeyNotReady as err:
        if err.reason in _KEY_GONE:
            raise shredded from None
        raise _RetryRevoke(f"the data key can't be unwrapped now ({err.reason})") from None
    context = crypto.SealContext(
        workspace_uid, f"{mailbox.namespace}/{mailbox.name}", CREDENTIALS_PURPOSE
    )
    plaintext = _open_sealed_secret(secret, dek, context)
    if plaintext is None:
        raise _RevokeSkipped("the sealed Secret does not open with this workspace's key")
    try:
        credentials = parse_credentials(mailbox.spec.provider, plaintext)
    except MalformedCredentials:
        raise _RevokeSkipped("the sealed credentials are not readable") from None
    target = _revoke_target(mailbox, clients)
    if target is None:
        raise _RevokeSkipped(
            "the OAuth client secret (spec.oauth.clientSecretRef) is gone, so no token could "
            "be obtained to revoke the grant; revoke it at the provider by hand"
        )
    try:
        return (provider_clients or ProviderClients(settings.mail_providers)).revoke(
            target, credentials
        )
    except ProviderError as err:
        if err.transient:
            raise _RetryRevoke(f"{err.reason}: {err.message}") from None
        raise _RevokeSkipped(
            f"the provider refused the revocation ({err.reason}): {err.message}"
        ) from None


def _revoke_target(mailbox: Mailbox, clients: k8s.Clients) -> MailboxTarget | None:
    spec = mailbox.spec
    if spec.provider == "smtp":
        return MailboxTarget("smtp")
    oauth, _ = _oauth_client(mailbox, clients, required=False)
    if oauth is None:
        if spec.provider != "gmail" or spec.oauth is None:
            return None
        # Google's revoke endpoint needs only the token, not the client.
        oauth = OAuthClient(client_id=spec.oauth.client_id, client_secret="")
    return MailboxTarget(spec.provider, oauth=oauth)


# --- audit ---------------------------------------------------------------------------------


def audit_mailbox_event(
    settings: Settings,
    *,
    action: str,
    workspace_uid: str,
    mailbox: str,
    provider: str,
    details: dict[str, Any] | None = None,
) -> str | None:
    """Append to the audit trail through reconcile.records (None when no NUMAIL_DATABASE_URL is
    set). The target is the mailbox's namespace/name, never its address: the trail must hold
    no personal data. A failure is logged and never blocks a connect or a disconnect."""
    try:
        return records.record(
            settings,
            action,
            workspace_uid,
            f"mailbox/{mailbox}",
            {"provider": provider, **(details or {})},
        )
    except Exception as err:  # evidence must not hold a credential hostage
        log.warning("audit event %s for %s failed: %s", action, mailbox, type(err).__name__)
        return None
