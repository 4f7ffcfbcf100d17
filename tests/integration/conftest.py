"""Integration fixtures: real KMS backends (moto's KMS server, a SoftHSM2 token)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kms import (
    AWS_TEST_ENV,
    MotoServer,
    SoftHsmToken,
    softhsm_token,
    start_moto_server,
)


@pytest.fixture(scope="session")
def moto_kms() -> Iterator[MotoServer]:
    """moto's KMS server, with fake AWS credentials in os.environ for the session."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in AWS_TEST_ENV.items():
            env.setenv(name, value)
        server = start_moto_server()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """One SoftHSM2 token per test process (SoftHSM reads its configuration only once)."""
    return softhsm_token(tmp_path_factory.mktemp("softhsm"))
