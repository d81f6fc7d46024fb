"""Exceptions the test clients allow to be re-raised from remote servers (allowed_remote_exmods)."""


class AllowedError(Exception):
    """Raised by a test server; the client lists this module in allowed_remote_exmods."""
