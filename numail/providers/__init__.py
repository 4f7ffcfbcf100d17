"""Clients for Gmail, Microsoft Graph and SMTP/IMAP, and OAuth token refresh and revoke."""
