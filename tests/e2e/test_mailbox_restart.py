"""The operator dies between sealing a credential and deleting its intake Secret (failpoint
mailbox.after-seal); restarted, it finishes the job without sealing a second copy."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import K8s
from tests.e2e.mailbox_fixtures import (
    OperatorHandle,
    ProviderStubs,
    canary,
    create_intake,
    create_mailbox,
    create_workspaces,
    delete_workspaces,
    mailbox_events,
    open_frame,
    secret_exists,
    smtp_spec,
    wait_condition,
    workspace_dek,
)
from tests.support.waiting import wait_for

WS = "mbx-crash"
NS = f"ws-{WS}"


@pytest.fixture(scope="module")
def workspace(
    mailbox_operator: OperatorHandle, provider_stubs: ProviderStubs, k8s: K8s
) -> Iterator[dict[str, Any]]:
    workspaces = create_workspaces(k8s, [WS], provider_stubs)
    try:
        yield workspaces[WS]
    finally:
        if mailbox_operator.process.process.poll() is not None:
            mailbox_operator.restart()  # finalizers need a live operator
        delete_workspaces(k8s, [WS])


def test_killed_after_sealing_the_restart_completes_without_a_second_copy(
    mailbox_operator: OperatorHandle,
    provider_stubs: ProviderStubs,
    workspace: dict[str, Any],
    k8s: K8s,
) -> None:
    password = canary("pw-crash")
    provider_stubs.set_mail_passwords({"crash@client.example": password})
    crashing = mailbox_operator.restart({"NUMAIL_FAILPOINT": "mailbox.after-seal"})
    spec = smtp_spec(provider_stubs.smtp_starttls, provider_stubs.dovecot.imaps_port)
    create_intake(k8s, NS, "crash-intake", json.dumps({"password": password}))
    create_mailbox(k8s, NS, "crash", spec, {"secretRef": {"name": "crash-intake"}})

    assert crashing.process.wait(60) == 137, "the failpoint did not fire"
    assert "failpoint mailbox.after-seal reached" in mailbox_operator.log.read_text()
    # The crash left both: the sealed copy, and the plaintext it came from.
    sealed = k8s.core.read_namespaced_secret("numail-mailbox-crash", NS)
    assert secret_exists(k8s, NS, "crash-intake")

    mailbox_operator.restart()
    wait_condition(k8s, NS, "crash", "Ready", "True", timeout=60)
    wait_for(lambda: not secret_exists(k8s, NS, "crash-intake"), 30, "intake Secret deleted")

    copies = k8s.core.list_namespaced_secret(NS, label_selector="numail.ai/mailbox=crash").items
    assert [s.metadata.name for s in copies] == ["numail-mailbox-crash"]
    after = copies[0]
    # The same object with the same frame: the restart found the credential already sealed.
    assert after.metadata.uid == sealed.metadata.uid
    assert after.data == sealed.data
    dek = workspace_dek(k8s, mailbox_operator.keyring, workspace)
    frame = base64.b64decode(after.data["sealed"])
    assert json.loads(open_frame(dek, workspace, NS, "crash", frame)) == {"password": password}
    reasons = [e.reason for e in mailbox_events(k8s, NS, "crash")]
    assert "IntakeSecretDeleted" in reasons and "CredentialsSealed" not in reasons
