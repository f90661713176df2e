"""Lua scripts: each lives in a ``.lua`` file beside the module that runs it, and is
registered once, on the client that module is handed (redis-py then calls it by its SHA
with EVALSHA, and loads it again by itself if Redis has forgotten it)."""

from __future__ import annotations

import functools
from pathlib import Path

import redis
from redis.commands.core import Script


@functools.cache
def source(beside: str, name: str) -> str:
    """The text of ``name.lua`` in the folder of the module file ``beside``."""
    return Path(beside).with_name(f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, beside: str, name: str) -> Script:
    """``name.lua`` (beside the module file ``beside``) registered on ``client``."""
    return client.register_script(source(beside, name))
