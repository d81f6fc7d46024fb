"""Exceptions the test clients do not allow: they arrive as oslo_messaging.RemoteError."""


class HiddenError(Exception):
    """Raised by a test server; this module is not in the client's allowed_remote_exmods."""
