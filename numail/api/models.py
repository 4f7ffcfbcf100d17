"""Pydantic models of the numail.ai custom resources: the typed view the operator reconciles.

The CRDs in crds/ are the source of truth; tests/unit/test_api_drift.py fails when a field,
default, enum or bound here differs from them. The cross-field CEL rules that need only one
object are repeated here, with the same messages, so `numail` tooling and the operator refuse
what the API server refuses. Rules that compare an update with the old object (immutability)
live only in the CRDs.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

WORKSPACE_NAME_MAX_LENGTH = 60
WORKSPACE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
EMAIL_PATTERN = (
    r'^[^@\s<>()\[\]\\,;:"]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?'
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$"
)
SEALED_PATTERN = r"^nm1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"

# Accepted by the API so manifests for a later release apply; this release reports
# Ready=False with reason NotSupported for them.
PLANNED_KEY_PROVIDER_TYPES = frozenset({"gcpKms", "azureKeyVault", "vaultTransit"})


def _wire_name(name: str) -> str:
    # Kubernetes spells initialisms in capitals (allowCIDRs), which to_camel can't know.
    return to_camel(name).replace("Cidrs", "CIDRs")


class _Schema(BaseModel):
    """camelCase on the wire and snake_case in Python; an unknown field is an error, not noise."""

    model_config = ConfigDict(
        alias_generator=_wire_name,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
    )


def _bounded(max_length: int, min_length: int | None = None) -> Any:
    return Field(min_length=min_length, max_length=max_length)


def _check_cidr(value: str) -> str:
    # CEL's isCIDR takes host bits, so strict=False; it insists on the prefix length.
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        ok = False
    else:
        ok = "/" in value
    if not ok:
        raise ValueError(
            "spec.egress.allowCIDRs entries must be CIDRs such as 203.0.113.0/24 or 2001:db8::/32"
        )
    return value


ConditionStatus = Literal["True", "False", "Unknown"]
ResourceName = Annotated[str, _bounded(253, 1)]
NamespaceName = Annotated[str, _bounded(63, 1)]
SecretDataKey = Annotated[str, _bounded(253, 1)]
WorkspaceName = Annotated[
    str, Field(min_length=1, max_length=WORKSPACE_NAME_MAX_LENGTH, pattern=WORKSPACE_NAME_PATTERN)
]
EmailAddress = Annotated[str, Field(max_length=254, pattern=EMAIL_PATTERN)]
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
Cidr = Annotated[str, Field(max_length=43), AfterValidator(_check_cidr)]
Generation = Annotated[int, Field(ge=0)]
KeyVersion = Annotated[int, Field(ge=1)]
Count = Annotated[int, Field(ge=0)]


class Condition(_Schema):
    """One observation of one aspect, shaped like metav1.Condition so tools read it."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    status: ConditionStatus
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=CONDITION_REASON_PATTERN)]
    message: Annotated[str, Field(max_length=32768)]
    last_transition_time: datetime
    observed_generation: Generation | None = None


class Status(_Schema):
    """What every kind's status carries, so one set of helpers serves all reconcilers."""

    observed_generation: Generation | None = None
    conditions: list[Condition] = Field(default_factory=list)


class Resource(_Schema):
    """The envelope of a custom object; metadata stays a dict because the API server owns it."""

    api_version: Literal["numail.ai/v1alpha1"] = "numail.ai/v1alpha1"
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def namespace(self) -> str | None:
        namespace = self.metadata.get("namespace")
        return None if namespace is None else str(namespace)

    @property
    def uid(self) -> str | None:
        uid = self.metadata.get("uid")
        return None if uid is None else str(uid)

    @property
    def generation(self) -> int | None:
        generation = self.metadata.get("generation")
        return None if generation is None else int(generation)


# Workspace


class WorkerResources(_Schema):
    """Requests and limits of a worker container, as Kubernetes quantities."""

    requests: dict[str, int | str] | None = None
    limits: dict[str, int | str] | None = None


class WorkerSpec(_Schema):
    """One worker Deployment; unset fields take the operator's defaults."""

    image: Annotated[str, _bounded(512, 1)] | None = None
    replicas: Annotated[int, Field(ge=0, le=50)] = 1
    resources: WorkerResources | None = None


class WorkspaceWorkers(_Schema):
    """The two worker Deployments every Workspace runs."""

    send_worker: WorkerSpec | None = None
    reply_worker: WorkerSpec | None = None


class WorkspaceQuota(_Schema):
    """Limits the operator enforces in the Workspace's namespace."""

    max_mailboxes: Count | None = None
    cpu: Quantity | None = None
    memory: Quantity | None = None


class EgressPort(_Schema):
    """One destination port of the extra egress."""

    port: Port
    protocol: Literal["TCP", "UDP"] = "TCP"


class WorkspaceEgress(_Schema):
    """Egress beyond the defaults, for tenants with their own relays."""

    allow_cidrs: Annotated[list[Cidr], Field(max_length=64)] | None = None
    ports: Annotated[list[EgressPort], Field(max_length=32)] | None = None


class WorkspaceSpec(_Schema):
    """The tenant as declared; the defaults make `spec: {}` a complete standard Workspace."""

    tier: Literal["agency", "standard"] = "standard"
    parent: WorkspaceName | None = None
    parent_access: Literal["none", "read", "manage"] = "none"
    key_provider: ResourceName = "default"
    deletion_policy: Literal["Shred", "Retain"] = "Shred"
    workers: WorkspaceWorkers | None = None
    quota: WorkspaceQuota | None = None
    egress: WorkspaceEgress | None = None

    @model_validator(mode="after")
    def _parent_rules(self) -> Self:
        if self.parent is not None and self.tier == "agency":
            raise ValueError(
                "spec.parent is forbidden when spec.tier is agency: an agency is a top-level "
                "tenant; remove spec.parent, or use tier standard for a sub-workspace"
            )
        if self.parent_access != "none" and self.parent is None:
            raise ValueError(
                "spec.parentAccess requires spec.parent: name the agency Workspace in "
                "spec.parent, or set spec.parentAccess to none"
            )
        return self


class WorkspaceStatus(Status):
    """The namespace, key version and public sealing key the operator made for the tenant."""

    namespace: str | None = None
    key_version: KeyVersion | None = None
    sealing_public_key: str | None = None
    key_id: str | None = None
    mailboxes: Count | None = None


class Workspace(Resource):
    """A tenant; its name becomes the namespace ws-<name>, hence the tighter name rules."""

    kind: Literal["Workspace"] = "Workspace"
    spec: WorkspaceSpec = Field(default_factory=WorkspaceSpec)
    status: WorkspaceStatus = Field(default_factory=WorkspaceStatus)

    @model_validator(mode="after")
    def _name_fits_a_namespace(self) -> Self:
        name = self.metadata.get("name")
        if name is None:  # generateName: the API server checks the name it generates
            return self
        if len(name) > WORKSPACE_NAME_MAX_LENGTH:
            raise ValueError(
                "metadata.name must be at most 60 characters, so that the Workspace's namespace "
                "ws-<name> fits the 63-character limit: choose a shorter name"
            )
        if not re.fullmatch(WORKSPACE_NAME_PATTERN, name):
            raise ValueError(
                "metadata.name must be a DNS label (lowercase letters, digits and '-', no dots), "
                "because it names the namespace ws-<name>: choose a name such as acme-client-1"
            )
        return self


# KeyProvider


class KeyringSecretRef(_Schema):
    """The Secret that holds a local keyring."""

    name: ResourceName
    namespace: NamespaceName
    key: SecretDataKey = "keyring"


class LocalKeyProvider(_Schema):
    """The embedded provider: a keyring the operator reads from a Secret or a file."""

    secret_ref: KeyringSecretRef | None = None
    key_file: Annotated[str, _bounded(4096, 1)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret_ref is None) == (self.key_file is None):
            raise ValueError(
                "spec.local needs exactly one of secretRef and keyFile: name the keyring "
                "Secret, or the keyring file mounted into the operator, not both"
            )
        return self


class AwsKmsKeyProvider(_Schema):
    """A symmetric AWS KMS key."""

    key_id: Annotated[str, _bounded(2048, 1)]
    region: Annotated[str, _bounded(64)] | None = None
    endpoint_url: Annotated[str, _bounded(2048)] | None = None


class PinSecretRef(_Schema):
    """The Secret that holds an HSM token's user PIN."""

    name: ResourceName
    namespace: NamespaceName
    key: SecretDataKey = "pin"


class Pkcs11KeyProvider(_Schema):
    """An AES key in an HSM behind a PKCS#11 module."""

    module: Annotated[str, _bounded(4096, 1)]
    token_label: Annotated[str, _bounded(32, 1)]
    key_label: Annotated[str, _bounded(256, 1)]
    pin_secret_ref: PinSecretRef | None = None


KeyProviderType = Literal["local", "awsKms", "pkcs11", "gcpKms", "azureKeyVault", "vaultTransit"]


class KeyProviderSpec(_Schema):
    """Which KMS holds the master key; exactly the block that `type` names is set."""

    type: KeyProviderType
    local: LocalKeyProvider | None = None
    aws_kms: AwsKmsKeyProvider | None = None
    pkcs11: Pkcs11KeyProvider | None = None

    @model_validator(mode="after")
    def _block_matches_type(self) -> Self:
        blocks = {"local": self.local, "awsKms": self.aws_kms, "pkcs11": self.pkcs11}
        for name, block in blocks.items():
            if (self.type == name) != (block is not None):
                raise ValueError(
                    f"spec.{name} must be set when spec.type is {name}, and only then: keep the "
                    "block that matches spec.type and remove the others"
                )
        return self


class KeyProviderStatus(Status):
    """Health and the current master key id, as Kubernetes KMS v2 reports them."""

    healthy: bool | None = None
    key_id: str | None = None
    last_checked: datetime | None = None


class KeyProvider(Resource):
    """A named master key that Workspaces refer to."""

    kind: Literal["KeyProvider"] = "KeyProvider"
    spec: KeyProviderSpec
    status: KeyProviderStatus = Field(default_factory=KeyProviderStatus)


# Mailbox


class SmtpServer(_Schema):
    """The SMTP server a smtp Mailbox sends through."""

    host: ResourceName
    port: Port = 587
    security: Literal["tls", "starttls"] = "starttls"
    username: Annotated[str, _bounded(254)] | None = None


class ImapServer(_Schema):
    """The IMAP server the reply detector reads for a smtp Mailbox."""

    host: ResourceName
    port: Port = 993
    security: Literal["tls", "starttls"] = "tls"
    username: Annotated[str, _bounded(254)] | None = None


class ClientSecretRef(_Schema):
    """A Secret in the Mailbox's namespace that holds an OAuth client secret."""

    name: ResourceName
    key: SecretDataKey = "clientSecret"


class MailboxOAuth(_Schema):
    """The OAuth client a grant was made with; needed to refresh and to revoke it."""

    client_id: Annotated[str, _bounded(256, 1)]
    tenant: Annotated[str, _bounded(256)] | None = None
    client_secret_ref: ClientSecretRef | None = None


class IntakeSecretRef(_Schema):
    """A plaintext intake Secret that the operator seals and then deletes."""

    name: ResourceName


class MailboxCredentials(_Schema):
    """Where credentials come from: an intake Secret, or a blob sealed by `numail seal`."""

    secret_ref: IntakeSecretRef | None = None
    sealed: Annotated[str, Field(max_length=16384, pattern=SEALED_PATTERN)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.secret_ref is None) == (self.sealed is None):
            raise ValueError(
                "spec.credentials needs exactly one of secretRef and sealed: name an intake "
                "Secret, or paste the blob from `numail seal`, not both"
            )
        return self


MailboxProvider = Literal["gmail", "microsoft365", "smtp"]


class MailboxSpec(_Schema):
    """One sending address; smtp Mailboxes name their servers, API providers must not."""

    address: EmailAddress
    display_name: Annotated[str, _bounded(128)] | None = None
    provider: MailboxProvider
    smtp: SmtpServer | None = None
    imap: ImapServer | None = None
    oauth: MailboxOAuth | None = None
    credentials: MailboxCredentials
    daily_limit: Annotated[int, Field(ge=1, le=10000)] = 200
    paused: bool = False

    @model_validator(mode="after")
    def _servers_match_provider(self) -> Self:
        if self.provider == "smtp" and (self.smtp is None or self.imap is None):
            raise ValueError(
                "spec.provider smtp requires spec.smtp and spec.imap: give the host of both "
                "servers (ports and security have defaults)"
            )
        if self.provider != "smtp" and (self.smtp is not None or self.imap is not None):
            raise ValueError(
                "spec.smtp and spec.imap are only for provider smtp: gmail and microsoft365 "
                "are reached through their APIs; remove both blocks"
            )
        return self


class MailboxStatus(Status):
    """Where the sealed credentials are and when the connection last worked."""

    sealed_secret_name: str | None = None
    key_version: KeyVersion | None = None
    verified_at: datetime | None = None
    last_error: str | None = None


class Mailbox(Resource):
    """A sending address in a Workspace's namespace."""

    kind: Literal["Mailbox"] = "Mailbox"
    spec: MailboxSpec
    status: MailboxStatus = Field(default_factory=MailboxStatus)


# WorkspaceMember


class MemberSubject(_Schema):
    """A user or group as the API server's authenticator names it."""

    kind: Literal["User", "Group"]
    name: Annotated[str, _bounded(256, 1)]


WorkspaceRole = Literal["Owner", "Admin", "Operator", "Analyst", "Billing"]


class WorkspaceMemberSpec(_Schema):
    """Who, and in which role."""

    subject: MemberSubject
    role: WorkspaceRole


class WorkspaceMemberStatus(Status):
    """The RoleBinding made for the member."""

    role_binding: str | None = None


class WorkspaceMember(Resource):
    """A role for a user or group in one Workspace."""

    kind: Literal["WorkspaceMember"] = "WorkspaceMember"
    spec: WorkspaceMemberSpec
    status: WorkspaceMemberStatus = Field(default_factory=WorkspaceMemberStatus)


# DataSubjectRequest


class DataSubject(_Schema):
    """The person a GDPR request is about."""

    email: EmailAddress


class DataSubjectRequestSpec(_Schema):
    """One erasure or export; a record, so the CRD makes it immutable."""

    type: Literal["erase", "export"]
    subject: DataSubject
    reason: Annotated[str, _bounded(1024)] | None = None


DataSubjectRequestPhase = Literal["Pending", "Running", "Completed", "Failed"]


class DataSubjectRequestStatus(Status):
    """Progress and outcome of the request."""

    phase: DataSubjectRequestPhase | None = None
    completed_at: datetime | None = None
    export_secret_name: str | None = None
    rows_affected: Count | None = None


class DataSubjectRequest(Resource):
    """A GDPR request about one person in one Workspace."""

    kind: Literal["DataSubjectRequest"] = "DataSubjectRequest"
    spec: DataSubjectRequestSpec
    status: DataSubjectRequestStatus = Field(default_factory=DataSubjectRequestStatus)


# ApiKey


ApiKeyScope = Literal["send:write", "leads:read", "leads:write", "reports:read"]


def _check_unique_scopes(scopes: list[ApiKeyScope]) -> list[ApiKeyScope]:
    # The CRD's listType set makes the API server refuse duplicates; refuse them here too.
    if len(set(scopes)) != len(scopes):
        raise ValueError("spec.scopes must not repeat a scope")
    return scopes


class ApiKeySpec(_Schema):
    """What the key may do, and until when."""

    scopes: Annotated[
        list[ApiKeyScope], Field(min_length=1, max_length=8), AfterValidator(_check_unique_scopes)
    ]
    expires_at: datetime | None = None
    description: Annotated[str, _bounded(256)] | None = None


class ApiKeyStatus(Status):
    """Where the key was shown, and its hash; the key itself is never stored."""

    key_id: str | None = None
    secret_name: str | None = None
    hash: Annotated[str, Field(pattern=SHA256_HEX_PATTERN)] | None = None
    revoked: bool | None = None


class ApiKey(Resource):
    """A scoped key for the NuMail API in one Workspace."""

    kind: Literal["ApiKey"] = "ApiKey"
    spec: ApiKeySpec
    status: ApiKeyStatus = Field(default_factory=ApiKeyStatus)


RESOURCE_MODELS: dict[str, type[Resource]] = {
    model.model_fields["kind"].default: model
    for model in (Workspace, KeyProvider, Mailbox, WorkspaceMember, DataSubjectRequest, ApiKey)
}
