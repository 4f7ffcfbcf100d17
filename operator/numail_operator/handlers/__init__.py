"""Kopf handlers, one module per kind; importing this package registers them all."""

from numail_operator.handlers import children, keyprovider, operator, workspace

__all__ = ["children", "keyprovider", "operator", "workspace"]
