"""Redis: the connection every part shares, and the events bus on top of it.

Redis carries only what can be rebuilt (nonces, caches, the job queue, pub/sub fan-out).
``memory://`` gives the in-process stand-in (fakeredis) that the demo runs on.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

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
    # Short timeouts and a single retry: a hung Redis must fail a web request in seconds,
    # not stall it for a minute in redis-py's default retry loop.
    return redis.Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
    )


# -- events: published after commit, never before ------------------------------------------

CHANNEL = "lifeline:events"
PENDING = "lifeline_pending_events"
EVENT_LOCK_TAKEN = "lifeline_event_lock"
OUTER_COMMIT = "lifeline_outer_commit"
log = logging.getLogger(__name__)


def attach_publisher(sessions: sessionmaker[Session], client: redis.Redis) -> None:
    """Publish the events a transaction recorded once it has committed.

    A publish that fails (Redis down) loses nothing: the events are rows in the database, and
    every stream resynchronises from there when the bus comes back.
    """

    # after_commit also fires when a savepoint is released: publish only on the outermost
    # commit, marked in before_commit while no savepoint is open.
    @event.listens_for(sessions, "before_commit")
    def _mark_outer(session: Session) -> None:
        if not session.in_nested_transaction():
            session.info[OUTER_COMMIT] = True

    @event.listens_for(sessions, "after_commit")
    def _publish(session: Session) -> None:
        if not session.info.pop(OUTER_COMMIT, False):
            return
        pending: list[dict[str, Any]] = session.info.pop(PENDING, [])
        session.info.pop(EVENT_LOCK_TAKEN, None)
        if not pending:
            return
        try:
            pipe = client.pipeline(transaction=False)
            for message in pending:
                pipe.publish(CHANNEL, json.dumps(message))
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not publish %d event(s): %s", len(pending), exc)

    @event.listens_for(sessions, "after_soft_rollback")
    def _discard(session: Session, previous: Any) -> None:
        if previous.parent is not None:
            return  # a savepoint rolled back; the outer transaction goes on
        session.info.pop(OUTER_COMMIT, None)
        session.info.pop(PENDING, None)
        session.info.pop(EVENT_LOCK_TAKEN, None)
