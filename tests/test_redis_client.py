"""worker/engine/redis_client.py on a real Redis: script calls in a pipeline survive a
Redis that forgot its scripts mid-pipeline (a master just promoted never saw them)."""

from __future__ import annotations

import uuid

import pytest
import redis

from config.settings import Settings
from worker.engine.redis_client import connect

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def test_script_calls_that_met_noscript_run_again_and_nothing_else_does(redis_url: str) -> None:
    client = connect(Settings(redis_url=redis_url))
    counted, plain = f"test:{uuid.uuid4().hex}:counted", f"test:{uuid.uuid4().hex}:plain"
    script = client.register_script(COUNT)
    try:
        pipe = client.pipeline(transaction=False)
        # What a failover does to a retried pipeline, on one server: redis-py has loaded
        # the script; then the cache is gone before the calls run.
        pipe.script_flush()
        script(keys=[counted], args=[5], client=pipe)
        pipe.incr(plain)
        script(keys=[counted], args=[2], client=pipe)
        pipe.wait(0, 100)
        results = pipe.execute()
        assert results[1:] == [5, 1, 7, 0]
        assert client.get(plain) == "1"  # the plain write ran once
        assert client.get(counted) == "7"
    finally:
        client.delete(counted, plain)
        client.close()


def test_an_error_of_a_command_that_ran_is_raised_as_redis_py_would(redis_url: str) -> None:
    client = connect(Settings(redis_url=redis_url))
    key = f"test:{uuid.uuid4().hex}"
    script = client.register_script(COUNT)
    try:
        pipe = client.pipeline(transaction=False)
        client.set(key, "not a number")
        script(keys=[key], args=[1], client=pipe)
        with pytest.raises(redis.ResponseError, match="not an integer"):
            pipe.execute()
        pipe = client.pipeline(transaction=False)
        script(keys=[key], args=[1], client=pipe)
        assert isinstance(pipe.execute(raise_on_error=False)[0], redis.ResponseError)
    finally:
        client.delete(key)
        client.close()
