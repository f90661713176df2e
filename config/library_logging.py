"""Third-party loggers turned down to WARNING where their INFO lines repeat this service's
own: httpx writes ``HTTP Request: POST ... "HTTP/1.1 202 Accepted"`` for every request,
beside the PagerDuty provider's line for the same call (which names the event and masks
the key). Their warnings and errors still show. Called by the worker once Celery has set
up logging (worker/celery_app.py)."""

from __future__ import annotations

import logging

#: Loggers whose INFO lines say again what ours say.
REPEATING = ("httpx",)


def quiet() -> None:
    """Raise each of :data:`REPEATING` to WARNING."""
    for name in REPEATING:
        logging.getLogger(name).setLevel(logging.WARNING)
