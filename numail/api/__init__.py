"""Pydantic models of every numail.ai custom resource, and condition helpers."""

GROUP = "numail.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = "numail.ai/finalizer"
FIELD_MANAGER = "numail-operator"

# Labels the operator sets; the key service and policies trust them because only cluster-scoped
# writers (the operator) can change a Namespace's labels.
LABEL_WORKSPACE = "numail.ai/workspace"
LABEL_WORKSPACE_UID = "numail.ai/workspace-uid"
LABEL_PARENT = "numail.ai/parent"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

KEYSERVICE_AUDIENCE = "numail-keyservice"
SEND_WORKER_SA = "numail-send-worker"
REPLY_WORKER_SA = "numail-reply-worker"
WORKER_SERVICE_ACCOUNTS = (SEND_WORKER_SA, REPLY_WORKER_SA)
DEK_SECRET = "numail-dek"  # noqa: S105 - a Secret name, not a secret

# Workspace namespaces are WORKSPACE_NAMESPACE_PREFIX + the Workspace's name; the CRD keeps
# names to 60 characters so the result fits a 63-character namespace name.
WORKSPACE_NAMESPACE_PREFIX = "ws-"

# The models import nothing from this module, so importing them last is safe.
from numail.api.models import (  # noqa: E402
    PLANNED_KEY_PROVIDER_TYPES,
    RESOURCE_MODELS,
    ApiKey,
    ApiKeySpec,
    ApiKeyStatus,
    Condition,
    DataSubjectRequest,
    DataSubjectRequestSpec,
    DataSubjectRequestStatus,
    KeyProvider,
    KeyProviderSpec,
    KeyProviderStatus,
    Mailbox,
    MailboxSpec,
    MailboxStatus,
    Resource,
    Status,
    Workspace,
    WorkspaceMember,
    WorkspaceMemberSpec,
    WorkspaceMemberStatus,
    WorkspaceSpec,
    WorkspaceStatus,
)

__all__ = [
    "API_VERSION",
    "DEK_SECRET",
    "FIELD_MANAGER",
    "FINALIZER",
    "GROUP",
    "KEYSERVICE_AUDIENCE",
    "LABEL_MANAGED_BY",
    "LABEL_PARENT",
    "LABEL_PART_OF",
    "LABEL_WORKSPACE",
    "LABEL_WORKSPACE_UID",
    "PLANNED_KEY_PROVIDER_TYPES",
    "REPLY_WORKER_SA",
    "RESOURCE_MODELS",
    "SEND_WORKER_SA",
    "VERSION",
    "WORKER_SERVICE_ACCOUNTS",
    "WORKSPACE_NAMESPACE_PREFIX",
    "ApiKey",
    "ApiKeySpec",
    "ApiKeyStatus",
    "Condition",
    "DataSubjectRequest",
    "DataSubjectRequestSpec",
    "DataSubjectRequestStatus",
    "KeyProvider",
    "KeyProviderSpec",
    "KeyProviderStatus",
    "Mailbox",
    "MailboxSpec",
    "MailboxStatus",
    "Resource",
    "Status",
    "Workspace",
    "WorkspaceMember",
    "WorkspaceMemberSpec",
    "WorkspaceMemberStatus",
    "WorkspaceSpec",
    "WorkspaceStatus",
]
