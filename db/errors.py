"""What the domain refuses, by kind. No HTTP here: ``api/errors.py`` maps each kind to a
response (JSON for the API, a flash message or an error page for the web pages), and the CLI
prints the message.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request the domain refuses; the message says why, for a person to read."""


class NotFound(DomainError):
    """The record named does not exist."""


class Invalid(DomainError, ValueError):
    """The input breaks a rule: an unknown role, a short password, a malformed cursor."""


class Conflict(DomainError):
    """The request contradicts the current state: someone decided meanwhile, the last admin."""


class Gone(DomainError):
    """The record exists but what was asked of it was removed on purpose (purged pixels)."""
