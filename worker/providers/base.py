"""The provider base class, and the notification models every provider speaks.

The models themselves live in the domain core (:mod:`worker.notification`); they are named
here too because this is where the product documentation has always imported them from.
"""

from __future__ import annotations

import abc
from types import TracebackType
from typing import ClassVar, Self

from worker.notification import (
    Notification,
    NotificationPriority,
    NotificationResult,
    NotificationStatus,
)

__all__ = [
    "BaseNotificationProvider",
    "Notification",
    "NotificationPriority",
    "NotificationResult",
    "NotificationStatus",
]


class BaseNotificationProvider(abc.ABC):
    """A channel to the outside world. Providers know nothing of Celery or queues."""

    name: ClassVar[str]

    @abc.abstractmethod
    def send(self, notification: Notification) -> NotificationResult:
        """Deliver one notification, or raise a :class:`worker.exceptions.NotificationError`."""

    @abc.abstractmethod
    def health_check(self) -> bool:
        """True when the peer is reachable; sends nothing anyone would see."""

    def close(self) -> None:  # noqa: B027 - providers without resources need not override
        """Release connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
