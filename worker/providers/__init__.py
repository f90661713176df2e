"""Providers: one module per channel, each turning a Notification into network traffic.

Providers know nothing of Celery; they raise :mod:`worker.exceptions` and return
:class:`~worker.providers.base.NotificationResult`.
"""

from worker.providers.base import (
    BaseNotificationProvider,
    Notification,
    NotificationPriority,
    NotificationResult,
    NotificationStatus,
)
from worker.providers.pagerduty import PagerDutyProvider, PagerDutySeverity
from worker.providers.smtp import SMTPProvider

__all__ = [
    "BaseNotificationProvider",
    "Notification",
    "NotificationPriority",
    "NotificationResult",
    "NotificationStatus",
    "PagerDutyProvider",
    "PagerDutySeverity",
    "SMTPProvider",
]
