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
