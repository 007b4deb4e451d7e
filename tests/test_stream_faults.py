"""The live-update hub against a failing Redis: killed and restarted, down for long, hung.

Each test runs its own redis-server on a spare port (the shared one is never touched), and
the app under a real HTTP server on 127.0.0.1 with an open SSE stream. Timings are shortened
(back-off cap, ping interval) so the suite stays quick; the production values only change how
long each wait is, not the code path (see test_the_reconnect_back_off_is_capped_and_never_gives_up).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from lti_tool.bus import attach_publisher
from lti_tool.config import Settings
from lti_tool.db import Database
from lti_tool.help.models import HelpRequest
from lti_tool.streams import EventHub, hub_redis
from tests.conftest import DATABASE_URL
from tests.test_streams import (
    ServerThread,
    Stream,
    World,
    free_port,
    services,
    tutor_cookie,
    wait_until,
)


class PrivateRedis:
    """A redis-server of our own: kill it, start it again on the same port, pause it."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            wait_until(lambda: _pings(client), timeout=10, what="private redis up")
        finally:
            client.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.kill()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def settings(settings: Settings, private_redis: PrivateRedis) -> Settings:
    return settings.with_overrides(redis_url=private_redis.url)


def quick_hub(app: Flask, url: str, **overrides: Any) -> EventHub:
    """The app's hub with shortened timings, listening through a 1-second socket timeout."""
    options: dict[str, Any] = {
        "fallback_poll": 0.25,
        "safety_poll": 60.0,  # out of the way: what arrives must come by the paths under test
        "ping_interval": 0.5,
        "liveness_timeout": 1.0,
        "backoff_base": 0.2,
        "backoff_cap": 1.0,
        "heartbeat": 0.5,
    }
    options.update(overrides)
    hub = EventHub(
        services(app).db.sessionmaker, lambda: hub_redis(url, socket_timeout=1.0), **options
    )
    services(app).hub = hub
    return hub


@pytest.fixture
def world(app: Flask, platform: Any) -> World:
    return World(app, platform.platform_id)


def stored_requests(app: Flask) -> set[int]:
    with services(app).db.transaction() as session:
        return set(session.scalars(select(HelpRequest.id)))


def test_redis_restarted_mid_stream_loses_nothing(
    app: Flask, world: World, private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    hub = quick_hub(app, private_redis.url, fallback_poll=60.0)  # no polling while down
    server = ServerThread(app)
    course = world.course("course-1")
    stream = Stream(
        server.port, "/tutor/events", tutor_cookie(app, world.tutor("T", world.pool("course-1")))
    )
    try:
        wait_until(lambda: hub.stats.connected, what="hub subscribed")
        first_request, first = world.ask(world.person("a"), course)
        assert stream.next_event()["id"] == first
        heard = hub.stats.redis_messages
        assert heard >= 1

        private_redis.kill()
        wait_until(lambda: not hub.stats.connected, what="hub notices")
        # Requests made while Redis is down: committed (the publish fails and says so).
        during = [world.ask(world.person(n), course) for n in ("b", "c")]
        assert {first_request, *(r for r, _ in during)} <= stored_requests(app)
        assert "could not publish" in caplog.text
        stream.quiet_for(1.0)  # not published, and the hub does not poll in this test

        private_redis.start()
        wait_until(lambda: hub.stats.connected, timeout=5, what="hub resubscribed")
        assert hub.stats.connections == 2
        # Caught up from the database on resubscribing (nothing was polled while down).
        got = stream.events_until(during[-1][1], timeout=5)
        assert [e["id"] for e in got] == [e for _, e in during]

        after = world.ask(world.person("d"), course)[1]
        assert stream.next_event()["id"] == after
        assert hub.stats.redis_messages > heard  # live through Redis again
    finally:
        stream.close()
        server.stop()


def test_a_long_outage_is_survived_with_a_bounded_back_off(
    app: Flask, world: World, private_redis: PrivateRedis
) -> None:
    """The listener never gives up: it retries at most ``backoff_cap`` apart (15 s in
    production, 1 s here), polls the database meanwhile, and resubscribes when Redis returns.
    Once the cap is reached every further attempt is the same step, so eight seconds at the
    cap stand for a minute (or a day) of outage."""
    hub = quick_hub(app, private_redis.url)
    server = ServerThread(app)
    course = world.course("course-1")
    stream = Stream(
        server.port, "/tutor/events", tutor_cookie(app, world.tutor("T", world.pool("course-1")))
    )
    try:
        wait_until(lambda: hub.stats.connected, what="hub subscribed")
        private_redis.kill()
        wait_until(lambda: not hub.stats.connected, what="hub notices")
        down_since = time.monotonic()
        attempts_before = hub.stats.connect_attempts

        # Dashboards stay live on the database while Redis is away.
        during = world.ask(world.person("b"), course)[1]
        arrived = stream.next_event(timeout=3)
        assert arrived["id"] == during

        time.sleep(max(0.0, 8.0 - (time.monotonic() - down_since)))
        attempts = [t for t in hub.stats.attempt_times if t >= down_since]
        assert hub.stats.connect_attempts - attempts_before >= 6
        gaps = [b - a for a, b in itertools.pairwise(attempts)]
        assert max(gaps) <= 1.0 + 1.0, gaps  # the cap, plus a refused connect and slack
        assert not hub.stats.connected and hub.stats.last_error is not None

        private_redis.start()
        wait_until(lambda: hub.stats.connected, timeout=3, what="hub resubscribed")
        heard = hub.stats.redis_messages
        after = world.ask(world.person("c"), course)[1]
        assert stream.next_event()["id"] == after
        wait_until(lambda: hub.stats.redis_messages > heard, what="heard through Redis")
    finally:
        stream.close()
        server.stop()


def test_a_hung_redis_is_detected_and_recovered_from(
    app: Flask, world: World, private_redis: PrivateRedis
) -> None:
    """SIGSTOP: the TCP connection stays open and silent. The hub's PING gets no answer within
    the liveness timeout, so it reconnects (each attempt bounded by the socket timeout) and
    reads the database until Redis answers again."""
    hub = quick_hub(app, private_redis.url)
    server = ServerThread(app)
    course = world.course("course-1")
    # The writer publishes through a short timeout too, so a hung Redis costs it little.
    writer_db = Database(DATABASE_URL)
    writer_redis = redis.Redis.from_url(private_redis.url, socket_timeout=0.3)
    attach_publisher(writer_db.sessionmaker, writer_redis)
    writer = World(app, world.platform_id, database=writer_db)
    stream = Stream(
        server.port, "/tutor/events", tutor_cookie(app, world.tutor("T", world.pool("course-1")))
    )
    try:
        wait_until(lambda: hub.stats.connected, what="hub subscribed")
        first = world.ask(world.person("a"), course)[1]
        assert stream.next_event()["id"] == first

        private_redis.pause()
        paused = time.monotonic()
        wait_until(lambda: not hub.stats.connected, timeout=6, what="hub notices the hang")
        assert time.monotonic() - paused < 0.5 + 1.0 + 2.5  # ping interval + liveness + slack
        assert "PING" in (hub.stats.last_error or "") or "Timeout" in (hub.stats.last_error or "")

        during = writer.ask(writer.person("b"), course)[1]
        assert stream.next_event(timeout=4)["id"] == during  # from the database
        time.sleep(2.5)  # stay hung past the socket timeout of several reconnection attempts
        assert not hub.stats.connected
        assert hub.running

        private_redis.resume()
        wait_until(lambda: hub.stats.connected, timeout=5, what="hub resubscribed")
        heard = hub.stats.redis_messages
        after = world.ask(world.person("c"), course)[1]
        assert stream.next_event()["id"] == after
        wait_until(lambda: hub.stats.redis_messages > heard, what="heard through Redis")
    finally:
        stream.close()
        server.stop()
        writer_redis.close()
        writer_db.dispose()
