"""Pure builders for a Mailbox: its sealed credential Secret, its database row, and the status
it reports."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from numail.api import LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_WORKSPACE
from numail.api.models import Mailbox, MailboxSpec
from numail.db.mailboxes import MailboxRecord, MailboxState
from numail_operator.build.workspace import mailbox_secret_name

Manifest = dict[str, Any]

LABEL_MAILBOX = "numail.ai/mailbox"
# Users put this on an intake Secret so the operator sees it the moment it is written.
LABEL_INTAKE = "numail.ai/intake"
SEALED_DATA_KEY = "sealed"
SEALED_SECRET_TYPE = "numail.ai/sealed-credentials"  # noqa: S105 - a Secret type
ANNOTATION_KEY_VERSION = "numail.ai/key-version"
ANNOTATION_MAILBOX_UID = "numail.ai/mailbox-uid"
ANNOTATION_WORKSPACE_UID = "numail.ai/workspace-uid"
ANNOTATION_PROVIDER = "numail.ai/provider"
ANNOTATION_SOURCE = "numail.ai/credentials-source"
# The last verification of the credentials in this Secret; a rewrite of the Secret drops it.
ANNOTATION_VERIFICATION = "numail.ai/verification"
# On the Mailbox: the uid/resourceVersion of the last intake Secret the watch saw. Changing it
# is what makes Kopf reconcile the Mailbox when its intake Secret is written. Not under
# numail.ai/: Kopf keeps its own state there and leaves those annotations out of its diffs.
ANNOTATION_INTAKE_SEEN = "intake.numail.ai/seen"

__all__ = [
    "ANNOTATION_INTAKE_SEEN",
    "ANNOTATION_KEY_VERSION",
    "ANNOTATION_VERIFICATION",
    "LABEL_INTAKE",
    "LABEL_MAILBOX",
    "SEALED_DATA_KEY",
    "MailboxSecretInputs",
    "Verification",
    "build_mailbox_record",
    "build_sealed_secret",
    "mailbox_secret_name",
    "mailbox_settings",
]


@dataclass(frozen=True)
class MailboxSecretInputs:
    namespace: str
    mailbox: str
    mailbox_uid: str
    workspace: str
    workspace_uid: str
    provider: str
    source: str  # "secretRef" or "sealed"


def build_sealed_secret(inputs: MailboxSecretInputs, frame: bytes, key_version: int) -> Manifest:
    """The Secret the workers read by name: the sealed frame and nothing else in its data.

    No ownerReference: the Mailbox's finalizer revokes the grant first and then deletes this
    Secret itself, and a garbage collector must not get there before the revocation.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": SEALED_SECRET_TYPE,
        "metadata": {
            "name": mailbox_secret_name(inputs.mailbox),
            "namespace": inputs.namespace,
            "labels": {
                LABEL_WORKSPACE: inputs.workspace,
                LABEL_MAILBOX: inputs.mailbox,
                LABEL_PART_OF: "numail",
                LABEL_MANAGED_BY: "numail-operator",
            },
            "annotations": {
                ANNOTATION_KEY_VERSION: str(key_version),
                ANNOTATION_MAILBOX_UID: inputs.mailbox_uid,
                ANNOTATION_WORKSPACE_UID: inputs.workspace_uid,
                ANNOTATION_PROVIDER: inputs.provider,
                ANNOTATION_SOURCE: inputs.source,
            },
        },
        "data": {SEALED_DATA_KEY: base64.b64encode(frame).decode()},
    }


@dataclass(frozen=True)
class Verification:
    """What the last verification of one sealed credential found, kept on its Secret.

    `client` is the resourceVersion of the OAuth client-secret Secret used, so fixing the client
    secret counts as a change worth verifying again.
    """

    generation: int
    client: str
    reason: str
    at: str

    def encode(self) -> str:
        return json.dumps(
            {
                "generation": self.generation,
                "client": self.client,
                "reason": self.reason,
                "at": self.at,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str | None) -> Verification | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(
                generation=int(raw["generation"]),
                client=str(raw["client"]),
                reason=str(raw["reason"]),
                at=str(raw["at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


# --- the database row the workers read ----------------------------------------------------


def mailbox_settings(spec: MailboxSpec) -> dict[str, Any]:
    """mailboxes.settings: the servers, OAuth client and display name from the spec, camelCase
    as in the spec, in the shape numail_workers.mailboxes.profile_from_row parses. Credentials
    never come here; fields the spec leaves out are left out (the worker's defaults apply)."""
    settings: dict[str, Any] = {}
    if spec.display_name:
        settings["displayName"] = spec.display_name
    for key, server in (("smtp", spec.smtp), ("imap", spec.imap)):
        if server is not None:
            settings[key] = server.model_dump(mode="json", by_alias=True, exclude_none=True)
    if spec.oauth is not None:
        settings["oauth"] = spec.oauth.model_dump(mode="json", by_alias=True, exclude_none=True)
    return settings


def build_mailbox_record(
    mailbox: Mailbox, workspace_uid: str, state: MailboxState
) -> MailboxRecord:
    """The row of one Mailbox. A paused Mailbox gets a daily cap of 0: its jobs wait, scheduled,
    and none is dropped; unpausing restores spec.dailyLimit."""
    spec = mailbox.spec
    return MailboxRecord(
        id=mailbox.uid or "",
        workspace_id=workspace_uid,
        namespace=mailbox.namespace or "",
        name=mailbox.name,
        provider=spec.provider,
        state=state,
        daily_cap=0 if spec.paused else spec.daily_limit,
        address=spec.address,
        settings=mailbox_settings(spec),
    )
