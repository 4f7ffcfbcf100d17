"""Operator startup: Kopf settings (peering, watch timeouts, finalizer), redaction, metrics."""

from __future__ import annotations

import logging
import random
from typing import Any

import kopf
from prometheus_client import start_http_server

from numail.api import FINALIZER
from numail.redact import install_redaction
from numail_operator.build.roles import build_member_cluster_roles
from numail_operator.handlers.runtime import runtime
from numail_operator.reconcile import audit_upkeep


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    install_redaction()  # again, now that kopf has installed its log handlers
    rt = runtime()
    settings.persistence.finalizer = FINALIZER
    # Kopf's bookkeeping in our own annotations; status is schema-checked and stays ours alone.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="numail.ai")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="numail.ai", key="last-handled-configuration"
    )
    settings.peering.name = "numail-operator"
    settings.peering.mandatory = False  # falls back to standalone when the peering CRD is absent
    settings.peering.clusterwide = True
    # Equal priorities make every replica pause; a random one elects a single active operator.
    settings.peering.priority = random.SystemRandom().randint(1, 2**31 - 1)
    # Without these a watch can hang silently forever (kopf issues #585 and #955).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Our own Events (kopf.event) are always posted; this stops kopf from also posting one
    # per handler run, which doubled the API calls of a reconcile (bench/converge.py).
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 8
    if rt.settings.metrics_port:
        start_http_server(rt.settings.metrics_port)
    for manifest in build_member_cluster_roles():
        rt.applier.apply(manifest)
    if rt.settings.database_url:
        applied = audit_upkeep.migrate_database(rt.settings)
        logger.info(f"database schema current ({len(applied)} migrations applied now)")
        audit_upkeep.start(rt.settings)
    logger.info("numail-operator started; member ClusterRoles applied")


@kopf.on.cleanup()
def stop_upkeep(**_: Any) -> None:
    audit_upkeep.stop()
