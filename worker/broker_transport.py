"""kombu's Redis transport, hardened against queue items that no Celery client wrote.

Anyone who can LPUSH onto a queue can put anything there. kombu parses each item as a
JSON message envelope before Celery sees it, and an item that is not JSON, or JSON of
another shape, raises inside the consumer's event loop: the worker stops with
"Unrecoverable error" (or reconnects in a loop), and the item, already popped, is gone.
This transport checks each item first and dead-letters what is not a message, with the
queue and the reason; everything else goes through kombu unchanged. JSON that Python
cannot read at all (nested past its recursion limit, an integer of more than 4,300
digits) is read as "not JSON" too: kombu would let those errors stop the worker.

:func:`install` (called when worker/celery_app.py is imported) makes ``redis://`` and
``rediss://`` URLs mean this transport. kombu has no public hook for a queue item that is
not a message, so three of its private methods are overridden: ``Channel._brpop_read``,
``Channel._get`` and ``Transport._deliver``; and the module's ``loads``, which they call,
is replaced by :func:`loads`. kombu is pinned to the range tested
(pyproject.toml) and tests/test_kombu_internals.py fails loudly if any of them, or the
alias table this registers in, changes its name or signature.

Celery's public hook for a custom transport, the ``broker_transport`` setting, is not
used because it breaks Flower's broker page: the connection then writes its URL as
``worker.broker_transport:Transport://...``, and Flower chooses its broker client by the
URL's scheme (``redis``, ``rediss``, ``sentinel``...) and raises NotImplementedError for any
other (flower/utils/broker.py, ``Broker.__new__``; the same test shows it). Registered
under kombu's own scheme names, everything that reads the broker URL back — the worker's
banner, Flower — still sees ``redis://``.
"""

from __future__ import annotations

import binascii
import json
from queue import Empty
from typing import Any

import kombu.transport
from kombu.transport import redis as kombu_redis
from kombu.utils.json import loads as kombu_loads

from worker.engine.quarantine import carried_id, excerpt, quarantine
from worker.engine.redis_client import MasterFollowingConnection, MasterFollowingSSLConnection
from worker.engine.runtime import engine


def loads(text: Any) -> Any:
    """kombu's JSON reading, with every way a queue item can fail to be read raised as
    :class:`json.JSONDecodeError` holding the item (kombu's readers catch only that)."""
    try:
        return kombu_loads(text)  # type: ignore[no-untyped-call]
    except json.JSONDecodeError:
        raise
    except (ValueError, TypeError, RecursionError) as exc:
        # Python's own limits (recursion, digits) and kombu's type markers with bad values.
        doc = text if isinstance(text, str) else repr(text)
        raise json.JSONDecodeError(f"{type(exc).__name__}: {exc}", doc, 0) from None


def envelope_problem(message: Any) -> str | None:
    """Why ``message`` is not a kombu message envelope, or None when it is one."""
    if not isinstance(message, dict):
        return f"a JSON {type(message).__name__}, not a message envelope (an object)"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str | int):
        return "no 'properties.delivery_tag'"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "'properties.delivery_info' is not an object"
    if not isinstance(message.get("headers") or {}, dict):
        return "'headers' is not an object"
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        return "'body' is not a string"
    return None


class Channel(kombu_redis.Channel):
    """Reads as kombu does; an item that is not JSON is dead-lettered, not fatal."""

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except json.JSONDecodeError as exc:
            # kombu has popped the item; exc.doc is all that is left of it.
            quarantine(
                engine().dead_letters,
                f"unreadable broker message: not JSON ({exc.msg})",
                excerpt(exc.doc),
            )
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:  # as kombu's virtual base
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except json.JSONDecodeError as exc:
            quarantine(
                engine().dead_letters,
                f"unreadable broker message on {queue!r}: not JSON ({exc.msg})",
                excerpt(exc.doc),
            )
            raise Empty() from None


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel (it asks the Sentinels for the master), reading as
    :class:`Channel` does, on connections that find the master again after a failover."""

    connection_class = MasterFollowingConnection
    # kombu declares its own TLS class here; what it needs is any Sentinel-managed one.
    connection_class_ssl = MasterFollowingSSLConnection  # type: ignore[assignment]


class Transport(kombu_redis.Transport):
    """The Redis transport with :class:`Channel`, and envelopes checked before delivery."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str | None) -> None:
        problem = envelope_problem(message)
        if problem is None:
            try:
                super()._deliver(message, queue)  # type: ignore[no-untyped-call]
                return
            except binascii.Error as exc:
                # kombu decodes a base64 body when it builds the message, before it is
                # recorded as unacked or reaches Celery: nothing else holds it yet.
                problem = f"'body' is not valid base64 ({exc})"
        quarantine(
            engine().dead_letters,
            f"unreadable broker message on {queue!r}: {problem}",
            excerpt(json.dumps(message, default=repr)),
            carried_id(message.get("headers")) if isinstance(message, dict) else None,
        )


class SentinelTransport(Transport, kombu_redis.SentinelTransport):
    """The same over Sentinel: what a ``redis+sentinel://`` ``REDIS_URL`` gives the broker."""

    Channel = SentinelChannel


#: kombu's scheme names, and our transport for each.
TRANSPORTS = {"redis": "Transport", "rediss": "Transport", "sentinel": "SentinelTransport"}


def install() -> None:
    """Make ``redis://``, ``rediss://`` and ``sentinel://`` broker URLs use our transports."""
    kombu_redis.loads = loads  # type: ignore[attr-defined,assignment]
    for scheme, name in TRANSPORTS.items():
        kombu.transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{name}"
        kombu.transport._transport_cache.pop(scheme, None)  # resolved before us, if at all
