"""The Celery application: ``celery -A worker worker|beat|flower`` finds it as ``worker.app``.

Configuration comes from config/ when the app is first used (not at import). Every task
runs on :class:`worker.task_base.NotifierTask`, which puts a message back when Redis fails
underneath it. With ``LOG_FORMAT=json`` the worker and beat log one JSON object per line
(config/log_format.py): Celery sets up its handlers (``-l``, ``-f``), then they get the
JSON formatter; the worker's start-up banner becomes one record, beat's is left out.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from celery import Celery, current_task, signals
from celery.utils.log import get_multiprocessing_logger

from config import library_logging
from config.celery_config import celery_config
from config.log_format import JsonFormatter
from config.settings import Settings, get_settings
from worker import broker_transport, niceness, presence
from worker.exceptions import NotificationConfigError

logger = logging.getLogger(__name__)

# redis:// and rediss:// mean kombu's Redis transport, hardened so that a queue item that
# is not a message is dead-lettered instead of stopping the worker.
broker_transport.install()

app = Celery(
    "gds_notification",
    task_cls="worker.task_base:NotifierTask",
    # Task events from the thread pool are never dropped (worker/consumer.py), so Flower
    # sees every task end.
    events="worker.consumer:AppEvents",
    include=[
        "tasks.intake",
        "tasks.delivery",
        "tasks.heartbeats",
        "tasks.recovery",
        "tasks.watchdog",
    ],
)

niceness.install(app)  # the worker's --nice option
presence.install(app)  # each worker says it is up, for /readyz and the metrics


class CannotStart(click.ClickException):
    """A bad setting met by ``celery -A worker ...``: one line naming it, exit code 2 (as
    ``gds-notify`` reports it), rather than a traceback."""

    exit_code = 2


def _settings() -> Settings:
    try:
        return get_settings()
    except NotificationConfigError as exc:
        # Within a command line, that is Celery's own (no face of ours loads this app);
        # anywhere else the caller gets the error itself.
        if click.get_current_context(silent=True) is None:
            raise
        raise CannotStart(str(exc)) from None


# A promise: read when the configuration is first needed. (Updating ``conf`` from an
# ``on_configure`` handler instead re-enters configuration loading and recurses.)
app.add_defaults(lambda: celery_config(_settings()))


# -- LOG_FORMAT=json ---------------------------------------------------------------------


def _json_logs() -> bool:
    return _settings().log_format == "json"


class _TaskContext(logging.Filter):
    """The running task's id and name on every record logged while it runs (Celery's
    TaskFormatter puts them in the text of its task logger's lines only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task._get_current_object()
        if task is not None and task.request.id is not None:
            record.task_id = task.request.id
            record.task_name = task.name
        return True


@signals.after_setup_logger.connect  # type: ignore[untyped-decorator,unused-ignore]
def _quiet_libraries(**kwargs: Any) -> None:
    library_logging.quiet()


@signals.after_setup_logger.connect  # type: ignore[untyped-decorator,unused-ignore]
@signals.after_setup_task_logger.connect  # type: ignore[untyped-decorator,unused-ignore]
def _json_handlers(logger: logging.Logger, **kwargs: Any) -> None:
    if not _json_logs():
        return
    loggers = [logger]
    if logger is logging.getLogger():
        loggers.append(get_multiprocessing_logger())  # billiard's, set up beside the root
        _early_warnings(False)
    for each in loggers:
        for handler in each.handlers if each is not None else ():
            handler.setFormatter(JsonFormatter())
            if not any(isinstance(f, _TaskContext) for f in handler.filters):
                handler.addFilter(_TaskContext())


def _say_as_json(msg: str, f: Any = sys.__stderr__) -> None:
    # Celery writes its shutdown notices from a signal handler, straight to the file
    # descriptor, to stay clear of locks the interrupted code may hold: so does this.
    record = logging.LogRecord("celery.apps.worker", logging.WARNING, "", 0, msg, None, None)
    os.write(f.fileno(), (JsonFormatter().format(record) + "\n").encode())


class _BeforeSetup(logging.StreamHandler):  # type: ignore[type-arg]
    """Python's warnings as JSON until Celery has set logging up."""


def _early_warnings(on: bool) -> None:
    # The worker warns (running as root, say) before Celery sets logging up, and a warning
    # would be printed as lines of text. Until then, warnings are logged here; afterwards
    # they go where Celery sends everything (stderr, or -f's file).
    warnings_log = logging.getLogger("py.warnings")
    for handler in [h for h in warnings_log.handlers if isinstance(h, _BeforeSetup)]:
        warnings_log.removeHandler(handler)
    warnings_log.propagate = not on
    if on:
        handler = _BeforeSetup(sys.__stderr__)
        handler.setFormatter(JsonFormatter())
        warnings_log.addHandler(handler)
        logging.captureWarnings(True)


@signals.celeryd_init.connect  # type: ignore[untyped-decorator,unused-ignore]
def _json_worker(instance: Any, **kwargs: Any) -> None:
    if _json_logs():
        from celery.apps import worker as celery_worker

        instance.quiet = True  # its banner: logged as one record instead (below)
        celery_worker.safe_say = _say_as_json
        _early_warnings(True)


@signals.celeryd_after_setup.connect  # type: ignore[untyped-decorator,unused-ignore]
def _json_banner(instance: Any, **kwargs: Any) -> None:
    if _json_logs():
        info = instance.startup_info(artlines=False) + (instance.extra_info() or "")
        logger.info("%s starting\n%s", instance.hostname, info.strip())


def _json_root_handlers() -> None:
    if _json_logs():
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())


def _json_flower() -> None:
    # ``celery -A worker flower``: Flower logs through Tornado, whose option parsing gives
    # the root logger a text handler of its own; none of Celery's logging signals fire.
    # Celery's command line imports Flower's command, and with it tornado.options, before
    # it loads this app: a callback added now runs after Tornado's, once Flower has parsed
    # its options. In a worker or beat no option parsing happens, and this does nothing.
    options = sys.modules.get("tornado.options")
    if options is not None:
        options.add_parse_callback(_json_root_handlers)


_json_flower()


class _Beat(app.Beat):  # type: ignore[misc,name-defined]
    """``celery -A worker beat``, without its banner when LOG_FORMAT=json (Celery prints
    it before any signal a handler could answer)."""

    def __init__(self, *args: Any, quiet: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, quiet=quiet or _json_logs(), **kwargs)


app.Beat = _Beat
