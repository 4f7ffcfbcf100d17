"""E2E fixtures: the operator process, running against the session control plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import K8s
from tests.support.controlplane import ControlPlane
from tests.support.operator import OperatorProcess, start_operator


@pytest.fixture(scope="module")
def operator(
    controlplane: ControlPlane,
    k8s: K8s,
    numail_crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    op = start_operator(controlplane.kubeconfig, tmp_path_factory.mktemp("operator"))
    try:
        yield op
    finally:
        op.stop()


# --- Mailbox fixtures (tests/e2e/mailbox_fixtures.py) ------------------------------------------
# Imported so pytest registers them for every e2e module.
from tests.e2e.mailbox_fixtures import mailbox_operator, provider_stubs  # noqa: E402, F401
