"""The operator's shared clients and settings, built once at startup and used by every handler."""

from __future__ import annotations

from dataclasses import dataclass

from numail_operator import k8s
from numail_operator.reconcile.keys import ProviderDirectory
from numail_operator.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    clients: k8s.Clients
    applier: k8s.Applier
    providers: ProviderDirectory


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        settings = Settings.from_env()
        clients = k8s.load_clients(settings.kubeconfig)
        _runtime = Runtime(
            settings, clients, k8s.Applier(clients.api), ProviderDirectory(clients, settings)
        )
    return _runtime
