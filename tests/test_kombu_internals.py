"""What worker/broker_transport.py and worker/consumer.py rely on inside kombu and Celery
(and worker/engine/redis_client.py inside redis-py).

The hardened transport overrides private methods (kombu has no public hook for a queue
item that is not a message). If an upgrade renames one or changes its signature, the
override would silently stop being called and poison would stop workers again: these
tests fail first, naming what moved."""

from __future__ import annotations

import inspect

import kombu.transport
import pytest
from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from flower.utils.broker import Broker as FlowerBroker
from kombu.transport import redis as kombu_redis
from redis.connection import AbstractConnection, SSLConnection
from redis.sentinel import SentinelManagedConnection

from config.celery_config import celery_config
from config.settings import Settings
from worker import broker_transport, consumer
from worker.engine import redis_client
from worker.engine.broker_queues import (
    PRIORITY_SEPARATOR,
    PRIORITY_STEPS,
    UNACKED_HASH,
    UNACKED_INDEX,
)

#: (kombu class, method, the parameters kombu has; our override takes them, in order).
OVERRIDDEN = [
    (kombu_redis.Channel, "_brpop_read", ["self", "options"]),
    (kombu_redis.Channel, "_get", ["self", "queue"]),
    (kombu_redis.Transport, "_deliver", ["self", "message", "queue"]),
    (CeleryConsumer, "on_decode_error", ["self", "message", "exc"]),
    (SentinelManagedConnection, "_connect", ["self"]),
]
OURS = {
    kombu_redis.Channel: broker_transport.Channel,
    kombu_redis.Transport: broker_transport.Transport,
    CeleryConsumer: consumer.Consumer,
    SentinelManagedConnection: redis_client.MasterFollowingConnection,
}


def test_every_socket_redis_py_opens_goes_through_connect() -> None:
    # MasterFollowingConnection asks the Sentinels for the master in _connect: every path
    # that opens a socket, retried or not, must pass there.
    source = inspect.getsource(AbstractConnection.connect_check_health)
    assert "self._connect" in source
    assert issubclass(redis_client.MasterFollowingSSLConnection, SSLConnection)
    assert broker_transport.SentinelChannel.connection_class is (
        redis_client.MasterFollowingConnection
    )


@pytest.mark.parametrize(("base", "name", "parameters"), OVERRIDDEN)
def test_every_method_we_override_still_exists_with_the_same_signature(
    base: type, name: str, parameters: list[str]
) -> None:
    theirs = getattr(base, name, None)
    assert theirs is not None, f"{base.__module__}.{base.__qualname__}.{name} is gone"
    assert list(inspect.signature(theirs).parameters) == parameters
    ours = OURS[base].__dict__[name]
    assert list(inspect.signature(ours).parameters)[: len(parameters)] == parameters


def test_what_the_consumer_and_transport_wrap_is_still_where_they_wrap_it() -> None:
    # Consumer.create_task_handler wraps Celery's handler of every task message; our loads
    # replaces the module global kombu's readers call.
    assert list(inspect.signature(CeleryConsumer.create_task_handler).parameters) == [
        "self",
        "promise",
    ]
    assert "create_task_handler" in consumer.Consumer.__dict__
    broker_transport.install()
    for reader in (kombu_redis.Channel._brpop_read, kombu_redis.Channel._get):
        assert "loads" in reader.__code__.co_names
    assert vars(kombu_redis)["loads"] is broker_transport.loads


def test_the_alias_table_and_cache_install_registers_in_are_still_there() -> None:
    assert isinstance(kombu.transport.TRANSPORT_ALIASES, dict)
    assert isinstance(kombu.transport._transport_cache, dict)
    broker_transport.install()
    for scheme in ("redis", "rediss"):
        assert kombu.transport.get_transport_cls(scheme) is broker_transport.Transport
    assert kombu.transport.get_transport_cls("sentinel") is broker_transport.SentinelTransport


def test_the_sentinel_transport_reads_and_delivers_as_ours_and_finds_the_master_as_kombus() -> None:
    channel, transport = broker_transport.SentinelChannel, broker_transport.SentinelTransport
    assert channel.__mro__[1:4] == (
        broker_transport.Channel,
        kombu_redis.SentinelChannel,
        kombu_redis.Channel,
    )
    assert "_sentinel_managed_pool" in kombu_redis.SentinelChannel.__dict__
    assert transport.Channel is channel
    assert transport._deliver is broker_transport.Transport._deliver
    assert transport.default_port == kombu_redis.SentinelTransport.default_port


def test_our_transport_keeps_the_url_flower_reads_and_the_public_hook_would_not() -> None:
    """The evidence beside broker_transport.install(): registered under kombu's scheme
    names, the broker URL stays redis:// and Flower can build its broker client from it;
    through Celery's public ``broker_transport`` setting it could not."""
    broker_transport.install()
    ours = Celery("ours", broker="redis://127.0.0.1:6379/0")
    uri = ours.connection().as_uri()
    assert uri.startswith("redis://")
    assert type(FlowerBroker(uri)).__name__ == "Redis"

    public = Celery("public", broker="redis://127.0.0.1:6379/0")
    public.conf.broker_transport = "worker.broker_transport:Transport"
    uri = public.connection().as_uri()
    assert uri.startswith("worker.broker_transport:Transport://")
    with pytest.raises(NotImplementedError):
        FlowerBroker(uri)


def test_the_broker_keys_the_engine_reads_and_writes_are_still_kombus() -> None:
    """worker/engine/broker_queues.py and intake_recovery.py read kombu's unacked hash and
    its index, and put messages back on a priority's list, by kombu's names (the engine may
    not import kombu); the transport options leave those names as they are."""
    channel = kombu_redis.Channel
    assert (channel.unacked_key, channel.unacked_index_key) == (UNACKED_HASH, UNACKED_INDEX)
    assert (channel.sep, list(channel.priority_steps)) == (PRIORITY_SEPARATOR, [*PRIORITY_STEPS])
    options = celery_config(Settings())["broker_transport_options"]
    assert not {"unacked_key", "unacked_index_key", "sep", "priority_steps"} & set(options)
