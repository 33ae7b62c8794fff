"""Errors of the data-access layer; the API maps each class to one HTTP status (api/errors.py)."""

from __future__ import annotations

from acttail.errors import ActTailError


class StoreError(ActTailError):
    """Base class of data-access errors."""


class NotFoundError(StoreError):
    """No such row, or the row belongs to another team and is not shared (the API answers 404)."""


class ConflictError(StoreError):
    """The write contradicts an existing row (e.g. an Idempotency-Key reused for another request)."""


class InvalidStateError(StoreError):
    """The requested transition is not allowed from the row's current state (e.g. cancel a finished job)."""


class AuthenticationError(StoreError):
    """Missing, malformed, unknown or revoked API key (the API answers 401)."""


class IdempotencyKeyReusedError(ConflictError):
    """An Idempotency-Key already names a job with a different request."""
