"""Log records as JSON, one object per line: what ``LOG_FORMAT=json`` gives every process
(Celery workers and beat through worker/celery_app.py, the HTTP API through
cli/api_cmd.py, ``gds-notify`` through cli/main.py), for log pipelines that want fields,
not text to parse.

Each line holds ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` (formatted as
the text format shows it), ``process`` (the pid) and ``process_name``; ``exception`` (the
whole traceback, one string) and ``stack`` when the record has them; and the record's
structured extras (``logger.info(..., extra={"job_id": ...})``, and ``task_id`` and
``task_name`` in a Celery task). Extras are kept only when they are plain values
(strings, numbers, booleans, None): a dict, a list or an object passed along with a record
(Celery attaches a task's whole context, arguments included) is never serialised, so a
line says no more than its message and the fields the code chose to give it.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

#: What every record carries: the base fields stand for these, or they are noise.
_NOT_EXTRAS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",  # asyncio's task, Python 3.12+
    "color_message",  # uvicorn's message again, with terminal colour codes
}


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float)  # bool is an int


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (line breaks inside values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "process_name": record.processName,
        }
        for name, value in self.fields(record).items():
            if name not in entry and not name.startswith("_") and _plain(value):
                # NaN and infinity are not JSON: written as text rather than break the line.
                finite = not isinstance(value, float) or math.isfinite(value)
                entry[name] = value if finite else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=True)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The record's own fields beyond the standard ones: its ``extra``."""
        return {k: v for k, v in vars(record).items() if k not in _NOT_EXTRAS}


class AccessJsonFormatter(JsonFormatter):
    """uvicorn's access log, with the request's parts as fields too. uvicorn logs them as
    the record's arguments; the path is read after api.auth.MaskKeysInPaths (a filter on
    the logger, so it runs before any handler) has cut a key in it to four characters."""

    PARTS = ("client_addr", "method", "path", "http_version", "status_code")

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        found = super().fields(record)
        if isinstance(record.args, tuple) and len(record.args) == len(self.PARTS):
            found.update(zip(self.PARTS, record.args, strict=True))
        return found


__all__ = ["AccessJsonFormatter", "JsonFormatter"]
