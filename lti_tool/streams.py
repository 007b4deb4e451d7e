"""The per-process event hub: one Redis pub/sub listener fanning committed help events out to the
live streams (SSE) this process serves.

Redis rings the bell, the database holds the mail. A message on ``lifeline:events`` only says
"something was committed"; the hub reads the events themselves from ``help_events`` (every id
above the last one it dispatched, in id order, which is commit order) and hands each to the
subscribers whose scope matches. So a publish that failed, a message that overtook another, a
message from another deployment on the same Redis server (pub/sub channels ignore database
numbers, so a payload cannot be trusted to be ours), or a whole Redis outage costs latency,
never an event. While Redis is unreachable the hub polls the database every couple of seconds
and retries the connection with a capped back-off, forever.

The listener is a thread; under gevent's monkey-patching the same code runs as a greenlet.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from .bus import CHANNEL, make_redis
from .config import MEMORY_REDIS_URL
from .help.events import as_message
from .help.models import HelpEvent

log = logging.getLogger(__name__)

Message = dict[str, Any]
BATCH = 500  # events read from the database per query


class Signal(enum.Enum):
    """What a subscriber may find in its queue besides events."""

    RESYNC = "resync"  # it fell behind and events were dropped: re-read from the database
    CLOSED = "closed"  # the process is shutting down: end the stream


@dataclass(frozen=True)
class Scope:
    """Which events a subscriber wants: an event matches if any of these matches."""

    request_ids: frozenset[int] = frozenset()
    pool_ids: frozenset[int] = frozenset()
    course_ids: frozenset[int] = frozenset()
    tutor_id: int | None = None

    def matches(self, event: Message) -> bool:
        return (
            event.get("request_id") in self.request_ids
            or event.get("pool_id") in self.pool_ids
            or event.get("course_id") in self.course_ids
            or (self.tutor_id is not None and event.get("tutor_id") == self.tutor_id)
        )


class Subscription:
    """One stream's inbox: bounded, so a slow reader is told to resync instead of blocking
    the hub or growing without limit."""

    def __init__(self, scope: Scope, maxsize: int) -> None:
        self.scope = scope
        self.closed = False
        self.overflows = 0
        self._items: queue.Queue[Message | Signal] = queue.Queue(maxsize)

    def offer(self, item: Message | Signal) -> None:
        try:
            self._items.put_nowait(item)
        except queue.Full:
            if item is not Signal.CLOSED:
                self.overflows += 1
            self._clear()
            # Just emptied, and the hub is its only writer: this fits.
            with contextlib.suppress(queue.Full):
                self._items.put_nowait(Signal.CLOSED if item is Signal.CLOSED else Signal.RESYNC)

    def get(self, timeout: float) -> Message | Signal | None:
        """The next item, or None if nothing came within ``timeout`` seconds."""
        try:
            return self._items.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True
        self.offer(Signal.CLOSED)

    def _clear(self) -> None:
        while True:
            try:
                self._items.get_nowait()
            except queue.Empty:
                return


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """The longest wait before reconnection attempt number ``failures`` + 1: doubling from
    ``base``, never above ``cap``, for any number of failures (the hub never gives up)."""
    return float(min(cap, base * 2 ** min(max(failures - 1, 0), 32)))


def hub_redis(url: str, socket_timeout: float = 5.0) -> redis.Redis:
    """The listener's own connection: short timeouts, no hidden retries (the hub owns the
    reconnect policy), so an outage or a hung server surfaces at once."""
    if url == MEMORY_REDIS_URL:
        return make_redis(url)
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        socket_keepalive=True,
        health_check_interval=0,  # the hub pings on its own schedule and watches the replies
        retry=Retry(NoBackoff(), 0),
        client_name="lifeline-event-hub",
    )


@dataclass
class HubStats:
    connected: bool = False
    connect_attempts: int = 0
    connections: int = 0  # successful (re)subscriptions
    failures: int = 0  # consecutive failed attempts, 0 while connected
    redis_messages: int = 0
    catch_ups: int = 0  # database reads that found events
    dispatched: int = 0
    last_error: str | None = None
    attempt_times: list[float] = field(default_factory=list)  # monotonic, the last 50


class EventHub:
    """One per process. ``subscribe`` starts it on first use (after any fork)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        connect: Callable[[], redis.Redis],
        *,
        queue_size: int = 1000,
        fallback_poll: float = 2.0,
        safety_poll: float = 15.0,
        ping_interval: float = 5.0,
        liveness_timeout: float = 5.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        heartbeat: float = 15.0,
        stream_lifetime: float = 20 * 60.0,
    ) -> None:
        self.sessions = sessions
        self._connect = connect
        self.queue_size = queue_size
        # Redis down: read the database this often. Redis up: read it this often anyway, so
        # an event whose publish failed reaches dashboards within this bound.
        self.fallback_poll = fallback_poll
        self.safety_poll = safety_poll
        # A hung Redis (SIGSTOP, a dead peer without RST) is noticed when a PING sent after
        # ``ping_interval`` of silence gets no reply within ``liveness_timeout``.
        self.ping_interval = ping_interval
        self.liveness_timeout = liveness_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        # Per stream: a comment line after this much silence, and a maximum lifetime after
        # which the client reconnects with Last-Event-ID.
        self.heartbeat = heartbeat
        self.stream_lifetime = stream_lifetime
        self.stats = HubStats()
        self._last: int | None = None
        self._behind = False
        self._subs: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._stopping = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._client: redis.Redis | None = None
        self._pubsub: Any = None
        self._last_db_warning = 0.0
        self._next_poll = 0.0  # Redis down: when to read the database next

    # -- the streams' side ---------------------------------------------------------------

    @property
    def last_event_id(self) -> int:
        """The newest event id this hub has dispatched (every older one was dispatched too)."""
        return self._last or 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def running(self) -> bool:
        """Is the listener alive (connected or retrying)?"""
        return self._running()

    def subscribe(self, scope: Scope) -> Subscription:
        self.start()
        sub = Subscription(scope, self.queue_size)
        with self._lock:
            if self._closing:
                sub.close()
            else:
                self._subs = (*self._subs, sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)

    def stream_lifetime_now(self) -> float:
        """This stream's lifetime, spread by up to 10% so reconnects do not come in waves."""
        return self.stream_lifetime * random.uniform(0.9, 1.0)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self._running():
            return
        with self._start_lock:
            if self._running():
                return
            if self._pid != os.getpid():  # forked after starting: nothing of the parent's holds
                self._pid = os.getpid()
                self._subs = ()
                self._client = None
                self._last = None
            if self._last is None:
                # Known before any stream subscribes, so a stream's replay from the database
                # and the hub's live dispatch overlap instead of leaving a gap.
                self._last = self._newest_id()
            self._stopping.clear()
            self._closing = False
            self._thread = threading.Thread(
                target=self._run, name="lifeline-event-hub", daemon=True
            )
            self._thread.start()

    def close_streams(self) -> None:
        """End every open stream (graceful shutdown); new ones end at once."""
        with self._lock:
            self._closing = True
            subs, self._subs = self._subs, ()
        for sub in subs:
            sub.close()

    def stop(self, timeout: float = 10.0) -> None:
        self.close_streams()
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and self._pid == os.getpid()

    # -- the listener --------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._session_with_redis()
            except Exception as exc:  # whatever happened, listen again: never die
                self._lost(exc)
            finally:
                self._close_pubsub()
            if self._stopping.is_set():
                break
            self.stats.failures += 1
            delay = backoff_delay(self.stats.failures, self.backoff_base, self.backoff_cap)
            self._poll_database_for(delay * random.uniform(0.8, 1.0))

    def _session_with_redis(self) -> None:
        """Subscribe, catch up from the database, then dispatch until told to stop; any
        failure (refused, reset, timed out, hung) raises."""
        self.stats.connect_attempts += 1
        self.stats.attempt_times = [*self.stats.attempt_times[-49:], time.monotonic()]
        if self._client is None:
            self._client = self._connect()
        pubsub = self._pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
        pubsub.subscribe(CHANNEL)
        deadline = time.monotonic() + self.liveness_timeout
        while True:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message.get("type") == "subscribe":
                break
            if time.monotonic() >= deadline:
                raise redis.TimeoutError(
                    f"no subscribe confirmation within {self.liveness_timeout:g} s"
                )
        self.stats.connected = True
        self.stats.connections += 1
        self.stats.failures = 0
        self.stats.last_error = None
        if self.stats.connections > 1:
            log.info("event hub: resubscribed to %s", CHANNEL)
        self._catch_up()  # what was committed while we were not listening
        self._listen(pubsub)

    def _listen(self, pubsub: Any) -> None:
        now = time.monotonic()
        last_heard = last_ping = now
        next_read = now + self._read_interval()
        tick = min(1.0, self.ping_interval, self.fallback_poll)
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=tick)
            now = time.monotonic()
            if message is not None:
                last_heard = now
                if message.get("type") == "message":
                    self.stats.redis_messages += 1
                    if self._rings(message.get("data")):
                        self._catch_up()
                        next_read = time.monotonic() + self._read_interval()
                    continue
            if last_ping > last_heard and now - last_ping > self.liveness_timeout:
                raise redis.TimeoutError(
                    f"Redis did not answer PING within {self.liveness_timeout:g} s"
                )
            if now - last_heard >= self.ping_interval and last_ping <= last_heard:
                pubsub.ping("lifeline-event-hub")
                last_ping = now
            if now >= next_read:
                self._catch_up()
                next_read = time.monotonic() + self._read_interval()

    def _read_interval(self) -> float:
        """Redis is up: read the database now and then anyway (a publish may have failed);
        the last read failed: try again soon."""
        return self.fallback_poll if self._behind else self.safety_poll

    def _rings(self, data: Any) -> bool:
        """Is this message news? Only an id above the last dispatched one is."""
        try:
            event_id = json.loads(data)["id"]
        except (TypeError, ValueError, KeyError):
            return False
        return isinstance(event_id, int) and event_id > self.last_event_id

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.stats.connected
        if was_connected:
            self._next_poll = time.monotonic() + self.fallback_poll
        self.stats.connected = False
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, redis.RedisError | OSError):
            log.exception("event hub: unexpected error; listening again")
        elif was_connected or self.stats.failures == 0:  # once per outage
            log.warning(
                "event hub: lost Redis (%s); reading the database every %g s and reconnecting",
                self.stats.last_error,
                self.fallback_poll,
            )

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # it is being thrown away either way
                pubsub.close()

    def _poll_database_for(self, seconds: float) -> None:
        """Wait ``seconds`` before the next attempt, reading the database every
        ``fallback_poll`` seconds meanwhile (the schedule runs across attempts)."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            now = time.monotonic()
            if now >= self._next_poll:
                self._catch_up()
                now = time.monotonic()
                self._next_poll = now + self.fallback_poll
            if now >= deadline:
                return
            self._stopping.wait(min(self._next_poll, deadline) - now)

    # -- the database: source of truth ---------------------------------------------------

    def _newest_id(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.max(HelpEvent.id))) or 0)

    def _catch_up(self) -> None:
        """Dispatch every event above the last one dispatched, in id order."""
        try:
            if self._last is None:
                self._last = self._newest_id()
            while True:
                with self.sessions() as session:
                    rows = session.scalars(
                        select(HelpEvent)
                        .where(HelpEvent.id > self._last)
                        .order_by(HelpEvent.id)
                        .limit(BATCH)
                    ).all()
                    events = [as_message(row) for row in rows]
                if events:
                    self.stats.catch_ups += 1
                for event in events:
                    self._dispatch(event)
                    self._last = event["id"]
                if len(events) < BATCH:
                    break
            self._behind = False
        except SQLAlchemyError as exc:
            self._behind = True
            now = time.monotonic()
            if now - self._last_db_warning > 60:
                self._last_db_warning = now
                log.warning("event hub: cannot read events from the database: %s", exc)

    def _dispatch(self, event: Message) -> None:
        self.stats.dispatched += 1
        for sub in self._subs:
            if sub.scope.matches(event):
                sub.offer(event)


def cooperate_with_gevent() -> bool:
    """Make psycopg wait cooperatively once gevent has monkey-patched this process.

    psycopg picks its wait function when first imported: imported before the patching (as
    ``lifeline serve`` does, checking the schema in gunicorn's master), it keeps a C ``poll()``
    that blocks every greenlet of the worker for the length of each query, and a stream
    waiting on a lock would stall them all. Re-importing ``psycopg.waiting`` after the patching
    selects the cooperative ``wait_poll`` and gevent's selector. Returns True under gevent.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return False
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is not None and getattr(waiting, "wait", None) is getattr(waiting, "wait_c", None):
        importlib.reload(waiting)
    return True
