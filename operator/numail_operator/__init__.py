"""The numail Kopf operator: reconciles Workspaces, Mailboxes and keys into Kubernetes objects.

`kopf run -m numail_operator` imports this package, which registers the handlers.
"""

from numail_operator import handlers

__all__ = ["handlers"]
