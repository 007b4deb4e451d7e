"""Redis: the connection every part shares, and the events bus on top of it.

Redis carries only what can be rebuilt (nonces, caches, the job queue, pub/sub fan-out).
``memory://`` gives the in-process stand-in (fakeredis) that the demo runs on.
"""

from __future__ import annotations

import threading

import redis

from .config import MEMORY_REDIS_URL

_memory_server = None
_memory_lock = threading.Lock()


def make_redis(url: str) -> redis.Redis:
    if url == MEMORY_REDIS_URL:
        import fakeredis

        global _memory_server
        with _memory_lock:
            if _memory_server is None:
                _memory_server = fakeredis.FakeServer()
        return fakeredis.FakeRedis(server=_memory_server)
    return redis.Redis.from_url(
        url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
    )
