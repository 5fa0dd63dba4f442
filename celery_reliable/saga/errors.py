"""Exceptions of the saga package, all under :class:`~celery_reliable.ReliableError`::

ReliableError
└── SagaError                    a saga cannot be defined, started or found
    ├── SagaDefinitionError      a Saga or Step was declared wrong (also a ValueError)
    ├── SagaNotFound             no saga with this id in the saga log (also a KeyError)
    ├── SagaConflict             a saga id reused with another saga or payload
    └── StepResultError          a step returned something other than a dict or None (also a TypeError)
"""

from __future__ import annotations

from ..errors import ReliableError


class SagaError(ReliableError):
    """Root of the saga errors.

    Attributes:
        saga: the saga's name or id the error is about.
    """

    def __init__(self, saga: str, message: str) -> None:
        self.saga = saga
        self.message = message
        super().__init__(saga, message)


class SagaDefinitionError(SagaError, ValueError):
    """A :class:`~celery_reliable.saga.Saga` or :class:`~celery_reliable.saga.Step` is wrong."""


class SagaNotFound(SagaError, KeyError):
    """The saga log holds no saga with this id."""

    def __init__(self, saga: str, message: str = "") -> None:
        super().__init__(saga, message or f"no saga with id {saga!r} in the saga log")


class SagaConflict(SagaError):
    """A saga id was started again with another saga name or another payload."""


class StepResultError(SagaError, TypeError):
    """A step returned a value that is not a dict (or ``None``) to merge into the context."""
