"""Clients for Gmail, Microsoft Graph and SMTP/IMAP, and OAuth token refresh and revoke.

The package itself imports nothing heavy, so settings can name ProviderEndpoints without
loading google-auth or msal: import the clients from numail.providers.mailbox and friends.
"""

from numail.providers.base import ProviderEndpoints, ProviderError

__all__ = ["ProviderEndpoints", "ProviderError"]
