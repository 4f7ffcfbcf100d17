"""Shared fixtures: the real local control plane, API clients for it, and a real PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from kubernetes import client, config

from tests.support.controlplane import ControlPlane, start_controlplane
from tests.support.postgres import PostgresServer, start_postgres

TIERS = ("unit", "integration", "e2e", "chaos")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its tier from its folder, so `-m` selects tiers without boilerplate."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts and not item.get_closest_marker(tier):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def controlplane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    cp = start_controlplane(tmp_path_factory.mktemp("controlplane"))
    try:
        yield cp
    finally:
        cp.stop()


@dataclass
class K8s:
    """Typed API clients bound to one kubeconfig."""

    api: client.ApiClient
    core: client.CoreV1Api
    apps: client.AppsV1Api
    rbac: client.RbacAuthorizationV1Api
    networking: client.NetworkingV1Api
    ext: client.ApiextensionsV1Api
    custom: client.CustomObjectsApi
    authz: client.AuthorizationV1Api
    authn: client.AuthenticationV1Api
    kubeconfig: Path


def make_k8s(kubeconfig: Path) -> K8s:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    return K8s(
        api=api,
        core=client.CoreV1Api(api),
        apps=client.AppsV1Api(api),
        rbac=client.RbacAuthorizationV1Api(api),
        networking=client.NetworkingV1Api(api),
        ext=client.ApiextensionsV1Api(api),
        custom=client.CustomObjectsApi(api),
        authz=client.AuthorizationV1Api(api),
        authn=client.AuthenticationV1Api(api),
        kubeconfig=kubeconfig,
    )


@pytest.fixture(scope="session")
def k8s(controlplane: ControlPlane) -> Iterator[K8s]:
    clients = make_k8s(controlplane.kubeconfig)
    try:
        yield clients
    finally:
        clients.api.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_dsn(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database for each test module, dropped afterwards."""
    name = "t_" + re.sub(r"[^a-z0-9_]", "_", request.module.__name__.lower())[-50:]
    with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres.dsn(name)
    finally:
        with psycopg.connect(postgres.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def numail_crds(k8s: K8s) -> list[str]:
    """The project's CRDs from crds/, applied and Established on the session control plane."""
    from tests.support.crds import apply_crds

    return apply_crds(k8s)
