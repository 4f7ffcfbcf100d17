"""Kopf handlers, one module per kind; importing this package registers them all."""

from numail_operator.handlers import children, keyprovider, mailbox, operator, workspace

__all__ = ["children", "keyprovider", "mailbox", "operator", "workspace"]
