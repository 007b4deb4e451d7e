"""Live updates through real HTTP on 127.0.0.1: SSE streams and their JSON twins, their scopes,
replay with Last-Event-ID, heartbeats, and many streams under the real `lifeline serve`.

Real PostgreSQL and Redis; events are made the way the product makes them (help.operations in
a transaction that commits, published by the bus after the commit)."""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import queue
import selectors
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
import redis
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import Flask
from playwright.sync_api import sync_playwright
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from werkzeug.serving import BaseWSGIServer, make_server

from lti_tool.bus import CHANNEL
from lti_tool.courses import Course, Person
from lti_tool.db import Database
from lti_tool.help import operations as help_ops
from lti_tool.help.events import as_message
from lti_tool.help.models import CoursePool, HelpEvent, HelpRequest
from lti_tool.services import Services
from lti_tool.streams import Scope, Signal, Subscription, backoff_delay
from lti_tool.tutors import operations as tutor_ops
from lti_tool.tutors.models import Pool, Tutor
from lti_tool.web.streams import event_stream
from tests.browser import launch_chromium
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.platform import (
    CLAIM,
    ROLE_INSTRUCTOR,
    ROLE_LEARNER,
    JwksServer,
    TestPlatform,
    jwk_of,
)

QUESTION = "My recursive function never reaches the base case, why?"
EOF_MARK = {"eof": True}


# -- a real server and a real SSE client -----------------------------------------------------


class ServerThread:
    """The app under werkzeug's threaded server on 127.0.0.1 (a real socket, real HTTP)."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        services(self.app).hub.stop()
        self.server.shutdown()
        self.server.server_close()


class Stream:
    """One SSE connection; a reader thread parses what arrives into ``items``."""

    def __init__(
        self, port: int, path: str, cookie: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        self.conn.connect()
        self.sock = self.conn.sock
        assert self.sock is not None
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if cookie:
            sent["Cookie"] = f"lifeline_session={cookie}"
        self.conn.request("GET", path, headers=sent)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = self.response.headers
        self.items: queue.Queue[dict[str, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        fields: dict[str, Any] = {}
        try:
            while True:
                raw = self.response.readline()
                if not raw:
                    break
                line = raw.decode().rstrip("\r\n")
                if line == "":
                    if fields:
                        if "data" in fields:
                            fields["data"] = json.loads(fields["data"])
                        if "id" in fields:
                            fields["id"] = int(fields["id"])
                        self.items.put(fields)
                    fields = {}
                elif line.startswith(":"):
                    self.items.put({"comment": line[1:].strip()})
                else:
                    name, _, value = line.partition(":")
                    fields[name] = value[1:] if value.startswith(" ") else value
        except (OSError, http.client.HTTPException, ValueError):
            pass
        finally:
            self.items.put(EOF_MARK)

    def next_item(self, timeout: float = 5.0) -> dict[str, Any]:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"nothing arrived within {timeout} s") from None

    def next_event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event (comments and the retry field skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            item = self.next_item(max(0.01, deadline - time.monotonic()))
            if item is EOF_MARK:
                raise AssertionError("the stream ended")
            if "event" in item:
                return item

    def quiet_for(self, seconds: float) -> None:
        """Nothing but heartbeats arrives for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self.items.get(timeout=left)
            except queue.Empty:
                return
            assert "event" not in item and item is not EOF_MARK, item

    def events_until(self, event_id: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Every event up to and including ``event_id`` (it must arrive)."""
        got = []
        while True:
            event = self.next_event(timeout)
            got.append(event)
            if event["id"] >= event_id:
                return got

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the server may have closed it already
            self.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.conn.close()
        self.sock.close()


# -- the people and the data -----------------------------------------------------------------


def services(app: Flask) -> Services:
    found: Services = app.extensions["lifeline"]
    return found


@dataclass
class World:
    app: Flask
    platform_id: int
    courses: dict[str, int] = field(default_factory=dict)
    pools: dict[str, int] = field(default_factory=dict)
    database: Database | None = None  # writes through another handle (another process)

    @property
    def db(self) -> Database:
        return self.database or services(self.app).db

    def course(self, context_id: str, platform_id: int | None = None) -> int:
        platform_id = platform_id or self.platform_id
        key = f"{platform_id}:{context_id}"
        if key not in self.courses:
            with self.db.transaction() as session:
                course = session.scalars(
                    select(Course).where(
                        Course.platform_id == platform_id, Course.context_id == context_id
                    )
                ).first()
                if course is None:
                    course = Course(
                        platform_id=platform_id,
                        deployment_id="deployment-1",
                        context_id=context_id,
                        title=f"Course {context_id}",
                    )
                    session.add(course)
                    session.flush()
                self.courses[key] = course.id
                self.pools[key] = tutor_ops.ensure_course_pool(session, course).id
        return self.courses[key]

    def pool(self, context_id: str, platform_id: int | None = None) -> int:
        self.course(context_id, platform_id)
        return self.pools[f"{platform_id or self.platform_id}:{context_id}"]

    def person(self, sub: str, platform_id: int | None = None) -> int:
        platform_id = platform_id or self.platform_id
        with self.db.transaction() as session:
            found = session.scalars(
                select(Person).where(Person.platform_id == platform_id, Person.sub == sub)
            ).first()
            if found is None:
                found = Person(platform_id=platform_id, sub=sub, name=sub.title())
                session.add(found)
                session.flush()
            return found.id

    def ask(self, learner_id: int, course_id: int, question: str = QUESTION) -> tuple[int, int]:
        """A learner opens a request; (request id, event id)."""
        with self.db.transaction() as session:
            learner = session.get(Person, learner_id)
            course = session.get(Course, course_id)
            assert learner is not None and course is not None
            request, created = help_ops.request_help(
                session,
                learner=learner,
                course=course,
                exercise_id=None,
                new=help_ops.NewRequest(question),
            )
            assert created
            request_id = request.id
        return request_id, self.last_event_for(request_id)

    def tutor(self, name: str, *pool_ids: int) -> int:
        with self.db.transaction() as session:
            tutor = Tutor(display_name=name, capacity=5)
            session.add(tutor)
            session.flush()
            for pool_id in pool_ids:
                tutor_ops.add_to_pool(session, tutor.id, pool_id)
            return tutor.id

    def claim(self, tutor_id: int, request_id: int) -> int:
        with self.db.transaction() as session:
            tutor = session.get(Tutor, tutor_id)
            assert tutor is not None
            pools = tutor_ops.tutor_pool_ids(session, tutor_id)
            help_ops.claim(session, request_id, tutor, pools)
        return self.last_event_for(request_id)

    def chat(self, request_id: int, author: str, body: str) -> int:
        with self.db.transaction() as session:
            request = session.get(HelpRequest, request_id)
            assert request is not None
            help_ops.post_message(session, request, author, author.title(), body)
        return self.last_event_for(request_id)

    def cancel(self, request_id: int, learner_id: int) -> int:
        with self.db.transaction() as session:
            help_ops.cancel(session, request_id, learner_id)
        return self.last_event_for(request_id)

    def last_event_for(self, request_id: int) -> int:
        with self.db.transaction() as session:
            return int(
                session.scalar(
                    select(func.max(HelpEvent.id)).where(HelpEvent.request_id == request_id)
                )
            )

    def newest(self) -> int:
        with self.db.transaction() as session:
            return int(session.scalar(select(func.max(HelpEvent.id))) or 0)

    def stored(self, event_id: int) -> dict[str, Any]:
        with self.db.transaction() as session:
            event = session.get(HelpEvent, event_id)
            assert event is not None
            return as_message(event)


def tutor_cookie(app: Flask, tutor_id: int) -> str:
    """Sign a tutor in the way the app does: the session key 'tutor_id'."""
    client = app.test_client()
    with client.session_transaction() as session:
        session["tutor_id"] = tutor_id
    cookie = client.get_cookie("lifeline_session")
    assert cookie is not None
    return cookie.value


@dataclass
class Launched:
    cookie: str
    launch_id: str
    person_id: int
    course_id: int


def launch(
    app: Flask, lms: TestPlatform, sub: str, role: str, context_id: str = "course-1"
) -> Launched:
    """A real LTI launch (login, signed id_token) in a fresh browser."""
    client = app.test_client()
    response = lms.launch(
        client,
        sub=sub,
        name=sub.title(),
        **{
            CLAIM + "roles": [role],
            CLAIM + "context": {"id": context_id, "title": f"Course {context_id}"},
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    with client.session_transaction() as session:
        launch_id = session["launches"][-1]
    cookie = client.get_cookie("lifeline_session")
    assert cookie is not None
    with services(app).db.transaction() as session:
        person = session.scalars(
            select(Person).where(Person.platform_id == lms.platform_id, Person.sub == sub)
        ).one()
        course = session.scalars(
            select(Course).where(
                Course.platform_id == lms.platform_id, Course.context_id == context_id
            )
        ).one()
        return Launched(cookie.value, launch_id, person.id, course.id)


def get_json(port: int, path: str, cookie: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(
            "GET",
            path,
            headers={"Cookie": f"lifeline_session={cookie}", "Accept": "application/json"},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def wait_until(condition: Any, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def live(app: Flask) -> Iterator[ServerThread]:
    hub = services(app).hub
    hub.heartbeat = 0.5
    hub.fallback_poll = 0.25  # also the listener's tick: stop() returns that fast
    server = ServerThread(app)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def world(app: Flask, platform: TestPlatform) -> World:
    return World(app, platform.platform_id)


@pytest.fixture
def other_lms(app: Flask, jwks_server: JwksServer) -> TestPlatform:
    lms = TestPlatform(jwks_server, issuer="https://other-lms.example.org", client_id="other-1")
    lms.register(app, name="Other LMS")
    return lms


# -- an event reaches an open stream ---------------------------------------------------------


def test_a_committed_request_reaches_an_open_tutor_stream(
    app: Flask, live: ServerThread, world: World
) -> None:
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    learner = world.person("lin")
    stream = Stream(live.port, "/tutor/events", tutor_cookie(app, tutor))
    try:
        assert stream.status == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.headers["Cache-Control"] == "no-cache"
        assert stream.headers["X-Accel-Buffering"] == "no"
        assert stream.next_item() == {"retry": "3000"}  # the first thing on the wire
        wait_until(lambda: services(app).hub.stats.connected, what="hub subscribed")

        started = time.monotonic()
        request_id, event_id = world.ask(learner, course)
        event = stream.next_event()
        latency = time.monotonic() - started
        assert event["id"] == event_id
        assert event["event"] == "request.created"
        assert event["data"] == world.stored(event_id)
        assert event["data"]["request_id"] == request_id
        assert latency < 2.0
        assert services(app).hub.stats.redis_messages >= 1  # it came through Redis
    finally:
        stream.close()


def test_reconnect_with_last_event_id_replays_exactly_what_was_missed(
    app: Flask, live: ServerThread, world: World
) -> None:
    course, other_course = world.course("course-1"), world.course("course-2")
    tutor = world.tutor("Tara", world.pool("course-1"))
    cookie = tutor_cookie(app, tutor)
    learners = [world.person(f"learner-{n}") for n in range(4)]
    stream = Stream(live.port, "/tutor/events", cookie)
    first_id = world.ask(learners[0], course)[1]
    seen = stream.next_event()
    assert seen["id"] == first_id
    stream.close()

    # While disconnected: two events for this tutor, one of a pool they are not in.
    missed_request, missed_1 = world.ask(learners[1], course)
    world.ask(learners[2], other_course)
    missed_2 = world.cancel(missed_request, learners[1])

    # The browser resends the last id it saw; the page's ?last_event_id is only for the
    # first connection, so the header wins over it.
    again = Stream(
        live.port, "/tutor/events?last_event_id=0", cookie, {"Last-Event-ID": str(seen["id"])}
    )
    try:
        assert again.next_item() == {"retry": "3000"}
        replayed = [again.next_event(), again.next_event()]
        assert [(e["id"], e["event"]) for e in replayed] == [
            (missed_1, "request.created"),
            (missed_2, "request.cancelled"),
        ]
        assert [e["data"] for e in replayed] == [world.stored(missed_1), world.stored(missed_2)]
        # ...then it is live, with nothing replayed twice.
        live_id = world.ask(learners[3], course)[1]
        assert again.next_event()["id"] == live_id
    finally:
        again.close()

    # The first connection of a page names its snapshot with ?last_event_id=.
    fresh = Stream(live.port, f"/tutor/events?last_event_id={missed_1}", cookie)
    try:
        assert fresh.next_event()["id"] == missed_2
        assert fresh.next_event()["id"] == live_id
    finally:
        fresh.close()


def test_heartbeats_keep_an_idle_stream_open(app: Flask, live: ServerThread, world: World) -> None:
    tutor = world.tutor("Tara", world.pool("course-1"))
    stream = Stream(live.port, "/tutor/events", tutor_cookie(app, tutor))
    try:
        assert stream.next_item() == {"retry": "3000"}
        started = time.monotonic()
        pings = [stream.next_item(2.0) for _ in range(3)]
        assert pings == [{"comment": "ping"}] * 3
        # One ping per heartbeat interval (0.5 s here, 15 s in production), not a flood.
        assert 1.0 <= time.monotonic() - started < 4.0
    finally:
        stream.close()


def test_a_stream_ends_when_its_client_goes_away(
    app: Flask, live: ServerThread, world: World
) -> None:
    hub = services(app).hub
    tutor = world.tutor("Tara", world.pool("course-1"))
    streams = [Stream(live.port, "/tutor/events", tutor_cookie(app, tutor)) for _ in range(3)]
    for stream in streams:
        assert stream.next_item() == {"retry": "3000"}
    wait_until(lambda: hub.subscriber_count == 3, what="three subscribers")
    for stream in streams:
        stream.close()
    # Noticed at the next heartbeat write at the latest: no subscriber is left behind.
    wait_until(lambda: hub.subscriber_count == 0, timeout=5, what="no subscribers")


def test_a_stream_caps_its_lifetime_and_the_client_resumes(
    app: Flask, live: ServerThread, world: World
) -> None:
    hub = services(app).hub
    hub.stream_lifetime = 1.0
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    cookie = tutor_cookie(app, tutor)
    stream = Stream(live.port, "/tutor/events", cookie)
    first = world.ask(world.person("a"), course)[1]
    assert stream.next_event()["id"] == first
    started = time.monotonic()
    while (item := stream.next_item(3.0)) is not EOF_MARK:
        assert "event" not in item
    assert time.monotonic() - started < 2.5
    stream.close()
    wait_until(lambda: hub.subscriber_count == 0, what="no subscribers")

    missed = world.ask(world.person("b"), course)[1]
    again = Stream(live.port, "/tutor/events", cookie, {"Last-Event-ID": str(first)})
    try:
        assert again.next_event()["id"] == missed
    finally:
        again.close()


# -- scopes ----------------------------------------------------------------------------------


def test_a_tutor_sees_only_their_pools_and_not_other_tutors_chats(
    app: Flask, live: ServerThread, world: World, other_lms: TestPlatform
) -> None:
    course, elsewhere = world.course("course-1"), world.course("course-2")
    foreign = world.course("course-1", other_lms.platform_id)  # same context id, other LMS
    tara = world.tutor("Tara", world.pool("course-1"))
    theo = world.tutor("Theo", world.pool("course-1"))
    lin, lou = world.person("lin"), world.person("lou")
    foreigner = world.person("lin", other_lms.platform_id)
    tara_stream = Stream(live.port, "/tutor/events", tutor_cookie(app, tara))
    theo_stream = Stream(live.port, "/tutor/events", tutor_cookie(app, theo))
    try:
        world.ask(lou, elsewhere)  # another pool
        world.ask(foreigner, foreign)  # another registration
        request_id, created = world.ask(lin, course)
        claimed = world.claim(theo, request_id)
        said = world.chat(request_id, "learner", "hello, can you see my screen?")
        _, barrier = world.ask(lou, course)

        tara_got = tara_stream.events_until(barrier)
        assert [(e["id"], e["event"]) for e in tara_got] == [
            (created, "request.created"),
            (claimed, "request.claimed"),
            (barrier, "request.created"),
        ]
        assert all(e["data"]["pool_id"] == world.pool("course-1") for e in tara_got)
        theo_got = theo_stream.events_until(barrier)
        assert [e["id"] for e in theo_got] == [created, claimed, said, barrier]
        assert theo_got[2]["data"]["data"]["body"] == "hello, can you see my screen?"

        # The JSON twin answers with the same scope.
        status, body = get_json(live.port, "/tutor/events.json?after=0", tutor_cookie(app, tara))
        assert status == 200
        assert [e["id"] for e in body["events"]] == [created, claimed, barrier]
        assert body["last_event_id"] == barrier and body["more"] is False
    finally:
        tara_stream.close()
        theo_stream.close()


def test_a_learner_follows_only_their_own_request(
    app: Flask, live: ServerThread, world: World, platform: TestPlatform, other_lms: TestPlatform
) -> None:
    lin = launch(app, platform, "lin", ROLE_LEARNER)
    lou = launch(app, platform, "lou", ROLE_LEARNER)
    lin_elsewhere = launch(app, other_lms, "lin", ROLE_LEARNER)  # same sub, other LMS
    tutor = world.tutor("Tara", world.pool("course-1"))
    lin_request, lin_created = world.ask(lin.person_id, lin.course_id)
    lou_request, _ = world.ask(lou.person_id, lou.course_id)
    foreign_request, _ = world.ask(lin_elsewhere.person_id, lin_elsewhere.course_id)

    base = f"/l/{lin.launch_id}/help"
    # Not their request, or not theirs through this launch: 404, stream and JSON alike.
    for path in (f"{base}/{lou_request}/events", f"{base}/{foreign_request}/events"):
        refused = Stream(live.port, path, lin.cookie)
        assert refused.status == 404
        refused.close()
        assert get_json(live.port, path + ".json?after=0", lin.cookie)[0] == 404
    # A launch made in another browser: refused.
    assert get_json(live.port, f"{base}/{lin_request}/events.json", lou.cookie)[0] == 403

    stream = Stream(live.port, f"{base}/{lin_request}/events?last_event_id=0", lin.cookie)
    try:
        assert stream.status == 200
        first = stream.next_event()
        assert (first["id"], first["event"]) == (lin_created, "request.created")
        assert first["data"] == world.stored(lin_created)
        # Lou's place in the same pool moves: Lin hears that the queue changed, nothing more.
        # (The replay folds the queue changes it finds into one.)
        queue_moved = stream.next_event()
        assert queue_moved["event"] == "queue.changed"
        assert queue_moved["data"] == {"id": queue_moved["id"], "kind": "queue.changed"}

        claimed = world.claim(tutor, lou_request)
        said = world.chat(lou_request, "learner", "this is private to Lou and the tutor")
        mine = world.claim(tutor, lin_request)
        got = stream.events_until(mine)
        assert [(e["id"], e["event"]) for e in got] == [
            (claimed, "queue.changed"),  # the chat message moved nobody: not even that
            (mine, "request.claimed"),
        ]
        assert got[0]["data"] == {"id": claimed, "kind": "queue.changed"}
        assert got[1]["data"]["data"]["tutor_name"] == "Tara"
        assert said not in [e["id"] for e in got]

        status, body = get_json(
            live.port, f"{base}/{lin_request}/events.json?after={lin_created}", lin.cookie
        )
        assert status == 200
        kinds = [(e["id"], e["kind"]) for e in body["events"]]
        assert kinds[-2:] == [(claimed, "queue.changed"), (mine, "request.claimed")]
        assert all(
            e == {"id": e["id"], "kind": "queue.changed"}
            for e in body["events"]
            if e["kind"] == "queue.changed"
        )
        assert "private to Lou" not in json.dumps(body)
    finally:
        stream.close()


def test_a_learner_follows_their_request_into_another_pool(
    app: Flask, live: ServerThread, world: World, platform: TestPlatform
) -> None:
    lin = launch(app, platform, "lin", ROLE_LEARNER)
    first_pool = world.pool("course-1")
    with services(app).db.transaction() as session:
        second_pool = Pool(name="Recursion specialists")
        session.add(second_pool)
        session.flush()
        session.add(CoursePool(course_id=lin.course_id, pool_id=second_pool.id))
        second = second_pool.id
    tutor = world.tutor("Tara", first_pool, second)
    request_id, _ = world.ask(lin.person_id, lin.course_id)
    other_course = world.course("course-2")  # a pool-mate of the second pool, elsewhere
    with services(app).db.transaction() as session:
        session.add(CoursePool(course_id=other_course, pool_id=second))

    stream = Stream(live.port, f"/l/{lin.launch_id}/help/{request_id}/events", lin.cookie)
    try:
        assert stream.next_item() == {"retry": "3000"}
        with services(app).db.transaction() as session:
            found = session.get(Tutor, tutor)
            assert found is not None
            help_ops.transfer(session, request_id, found, {first_pool, second}, second, None)
        moved = world.last_event_for(request_id)
        event = stream.next_event()
        assert (event["id"], event["event"]) == (moved, "request.transferred")
        assert event["data"]["pool_id"] == second

        # The old pool moving is no longer Lin's business; the new one's is.
        world.ask(world.person("lou"), world.course("course-1"))
        _, in_new_pool = world.ask(world.person("lou"), other_course)
        assert world.stored(in_new_pool)["pool_id"] == second
        event = stream.next_event()
        assert (event["id"], event["event"]) == (in_new_pool, "queue.changed")
    finally:
        stream.close()


def test_an_instructor_sees_only_their_course(
    app: Flask, live: ServerThread, world: World, platform: TestPlatform, other_lms: TestPlatform
) -> None:
    teacher = launch(app, platform, "prof", ROLE_INSTRUCTOR)
    learner = launch(app, platform, "lin", ROLE_LEARNER)
    other_course = launch(app, platform, "lou", ROLE_LEARNER, context_id="course-2")
    foreign = launch(app, other_lms, "lin", ROLE_LEARNER)  # "course-1" of another LMS
    tutor = world.tutor("Tara", world.pool("course-1"))

    # A learner's launch is not an instructor's: refused.
    assert (
        get_json(live.port, f"/l/{learner.launch_id}/course/events.json", learner.cookie)[0] == 403
    )
    stream = Stream(live.port, f"/l/{teacher.launch_id}/course/events", teacher.cookie)
    try:
        assert stream.status == 200
        world.ask(other_course.person_id, other_course.course_id)
        world.ask(foreign.person_id, foreign.course_id)
        request_id, created = world.ask(learner.person_id, learner.course_id)
        claimed = world.claim(tutor, request_id)
        said = world.chat(request_id, "learner", "the words stay between us")
        got = stream.events_until(said)
        assert [(e["id"], e["event"]) for e in got] == [
            (created, "request.created"),
            (claimed, "request.claimed"),
            (said, "chat.message"),
        ]
        assert all(e["data"]["course_id"] == teacher.course_id for e in got)
        assert "body" not in got[2]["data"]["data"]  # who wrote, not what
        assert got[2]["data"]["data"]["author"] == "learner"

        status, body = get_json(
            live.port, f"/l/{teacher.launch_id}/course/events.json?after=0", teacher.cookie
        )
        assert status == 200
        assert [e["id"] for e in body["events"]] == [created, claimed, said]
        assert "stay between us" not in json.dumps(body)
    finally:
        stream.close()


def test_a_forged_bus_message_carries_nothing_through(
    app: Flask, live: ServerThread, world: World, redis_client: redis.Redis
) -> None:
    """Pub/sub channels are server-wide (another deployment or test run on the same Redis
    publishes on the same channel): the hub takes events from the database, not the wire."""
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    stream = Stream(live.port, "/tutor/events", tutor_cookie(app, tutor))
    try:
        assert stream.next_item() == {"retry": "3000"}
        hub = services(app).hub
        wait_until(lambda: hub.stats.connected, what="hub subscribed")
        forged_id = world.newest() + 1
        forged = {"id": forged_id, "kind": "request.created", "pool_id": world.pool("course-1")}
        forged.update({"request_id": 999, "course_id": course, "data": {"forged": True}})
        redis_client.publish(CHANNEL, json.dumps(forged))
        redis_client.publish(CHANNEL, "not json at all")
        wait_until(lambda: hub.stats.redis_messages >= 2, what="messages heard")
        real_id = world.ask(world.person("lin"), course)[1]
        event = stream.next_event()
        assert event["id"] == real_id and event["data"] == world.stored(real_id)
        assert "forged" not in json.dumps(event)
    finally:
        stream.close()


def test_json_polling_twin(app: Flask, live: ServerThread, world: World) -> None:
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    cookie = tutor_cookie(app, tutor)
    first = world.ask(world.person("a"), course)[1]
    second = world.ask(world.person("b"), course)[1]
    # No 'after': where to start from, nothing else.
    assert get_json(live.port, "/tutor/events.json", cookie) == (
        200,
        {"events": [], "last_event_id": second},
    )
    status, body = get_json(live.port, f"/tutor/events.json?after={first}", cookie)
    assert status == 200
    assert body == {"events": [world.stored(second)], "last_event_id": second, "more": False}
    # An id this log never issued: start again from now.
    assert get_json(live.port, "/tutor/events.json?after=99999", cookie)[1] == {
        "events": [],
        "last_event_id": second,
        "resync": True,
    }
    assert get_json(live.port, "/tutor/events.json?after=soon", cookie)[0] == 400
    assert get_json(live.port, "/tutor/events.json?after=0", "")[0] == 401  # not signed in
    refused = Stream(live.port, "/tutor/events", None)
    assert refused.status == 401
    refused.close()


def test_an_unknown_last_event_id_asks_the_client_to_resync(
    app: Flask, live: ServerThread, world: World
) -> None:
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    known = world.ask(world.person("a"), course)[1]
    stream = Stream(live.port, "/tutor/events", tutor_cookie(app, tutor), {"Last-Event-ID": "9999"})
    try:
        event = stream.next_event()
        assert event["event"] == "resync" and event["id"] == known
        later = world.ask(world.person("b"), course)[1]
        assert stream.next_event()["id"] == later  # and it goes on from there
    finally:
        stream.close()


# -- the hub: slow readers, back-off ----------------------------------------------------------


def test_a_slow_subscriber_is_resynced_from_the_database_not_waited_for(
    app: Flask, world: World
) -> None:
    hub = services(app).hub
    hub.queue_size = 3
    try:
        course = world.course("course-1")
        tutor = world.tutor("Tara", world.pool("course-1"))
        view = TutorViewForTest(tutor, frozenset({world.pool("course-1")}))
        hub.heartbeat = 0.2
        stream = event_stream(hub, services(app).db.sessionmaker, view, None)
        assert next(stream) == "retry: 3000\n\n"  # subscribed
        assert next(stream) == ": ping\n\n"  # replayed nothing; now it reads nothing for a while
        made = [world.ask(world.person(f"p{n}"), course)[1] for n in range(8)]
        wait_until(lambda: hub.last_event_id >= made[-1], what="all dispatched")
        # The hub went on dispatching (its inbox of 3 overflowed instead of blocking it)...
        assert hub.stats.dispatched >= 8
        # ...and the stream reads what it missed from the database, each event once, in order.
        text = next(stream)
        ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
        assert ids == made
        stream.close()
        assert hub.subscriber_count == 0
    finally:
        hub.stop()


@dataclass
class TutorViewForTest:
    tutor_id: int
    pool_ids: frozenset[int]

    @property
    def scope(self) -> Scope:
        return Scope(pool_ids=self.pool_ids, tutor_id=self.tutor_id)

    def where(self) -> Any:
        return HelpEvent.pool_id.in_(self.pool_ids)

    def render(self, event: dict[str, Any]) -> dict[str, Any] | None:
        return event


def test_an_overflowing_inbox_keeps_one_resync_and_close_gets_through() -> None:
    sub = Subscription(Scope(), maxsize=2)
    for n in range(5):
        sub.offer({"id": n})
    assert sub.overflows >= 1
    items = [sub.get(0.1) for _ in range(3)]
    assert Signal.RESYNC in items and items[-1] is None
    for n in range(5):
        sub.offer({"id": n})
    sub.close()
    assert sub.closed
    got = [sub.get(0.1) for _ in range(3)]
    assert Signal.CLOSED in got


def test_scope_matches_any_of_its_parts() -> None:
    scope = Scope(request_ids=frozenset({1}), pool_ids=frozenset({2}), tutor_id=3)
    assert scope.matches({"request_id": 1, "pool_id": 9})
    assert scope.matches({"request_id": 8, "pool_id": 2})
    assert scope.matches({"request_id": 8, "pool_id": 9, "tutor_id": 3})
    assert not scope.matches({"request_id": 8, "pool_id": 9, "tutor_id": 4, "course_id": 2})
    assert not Scope().matches({"request_id": None, "pool_id": None, "tutor_id": None})
    assert Scope(course_ids=frozenset({5})).matches({"course_id": 5})


def test_the_reconnect_back_off_is_capped_and_never_gives_up() -> None:
    delays = [backoff_delay(n, 0.5, 15.0) for n in range(1, 10_001)]
    assert delays[:6] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0]
    assert max(delays) == 15.0 and delays[-1] == 15.0  # attempt 10,000 still waits 15 s


# -- live.js in a real browser -------------------------------------------------------------


LAST_ID_IS = "(id) => window.live.lastEventId() === id"  # a function: the page's CSP has no eval


@pytest.mark.browser
def test_live_js_follows_the_stream_resumes_and_falls_back_to_polling(
    app: Flask, live: ServerThread, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    hub = services(app).hub
    hub.stream_lifetime = 1.5  # the stream ends now and then: EventSource must resume
    course = world.course("course-1")
    cookie = tutor_cookie(app, world.tutor("Tara", world.pool("course-1")))
    snapshot = world.ask(world.person("a"), course)[1]
    base = f"http://127.0.0.1:{live.port}"
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            context = browser.new_context()
            context.add_cookies([{"name": "lifeline_session", "value": cookie, "url": base}])
            page = context.new_page()
            page.goto(base + "/healthz")  # any page of ours: the same origin as the streams
            page.add_script_tag(url="/static/live.js")
            page.evaluate(
                """([streamUrl, pollUrl, last]) => {
                    window.got = []; window.states = [];
                    window.live = LifelineLive.connect({
                        streamUrl, pollUrl, lastEventId: last, pollInterval: 300,
                        onEvent: (kind, data, id) => window.got.push([kind, id, data.id]),
                        onState: (state) => window.states.push(state),
                    });
                }""",
                ["/tutor/events", "/tutor/events.json", snapshot],
            )
            made = [world.ask(world.person(f"p{n}"), course)[1] for n in range(2)]
            page.wait_for_function(LAST_ID_IS, arg=made[-1], timeout=5000)
            time.sleep(2.0)  # past the stream's lifetime: the browser reconnects by itself
            made += [world.ask(world.person(f"q{n}"), course)[1] for n in range(2)]
            page.wait_for_function(LAST_ID_IS, arg=made[-1], timeout=8000)
            got = page.evaluate("window.got")
            assert got == [["request.created", i, i] for i in made]  # each once, in order
            assert page.evaluate("window.states")[:2] == ["connecting", "live"]
            assert caplog.text.count("GET /tutor/events?last_event_id=") >= 2  # it reconnected
            page.evaluate("window.live.close()")

            # A stream that cannot open (here: no such endpoint) falls back to polling.
            page.evaluate(
                """([last]) => {
                    window.got = []; window.states = [];
                    window.live = LifelineLive.connect({
                        streamUrl: "/tutor/no-such-stream", pollUrl: "/tutor/events.json",
                        lastEventId: last, pollInterval: 300,
                        onEvent: (kind, data, id) => window.got.push([kind, id]),
                        onState: (state) => window.states.push(state),
                    });
                }""",
                [made[-1]],
            )
            page.wait_for_function("() => window.states.includes('polling')", timeout=5000)
            polled = world.ask(world.person("r"), course)[1]
            page.wait_for_function(LAST_ID_IS, arg=polled, timeout=5000)
            assert page.evaluate("window.got") == [["request.created", polled]]
            page.evaluate("window.live.close()")
        finally:
            browser.close()


# -- many streams under the real `lifeline serve` (gunicorn, gevent) --------------------------

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
STREAMS = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timed_get(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        conn.close()


class RawStreams:
    """Many SSE connections on non-blocking sockets, read from one thread with a selector."""

    def __init__(self, port: int, path: str, cookie: str, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.buffers: dict[socket.socket, bytearray] = {}
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
            f"Cookie: lifeline_session={cookie}\r\n\r\n"
        ).encode()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(request)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.buffers[sock] = bytearray()

    def read_until(self, marker: bytes, timeout: float) -> dict[socket.socket, float]:
        """When each connection first had ``marker`` in what it received."""
        seen: dict[socket.socket, float] = {
            s: time.monotonic() for s, b in self.buffers.items() if marker in b
        }
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.buffers) and time.monotonic() < deadline:
            for key, _ in self.selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset by the server
                    chunk = b""
                self.buffers[sock] += chunk if chunk else b"<EOF>"
                if not chunk:
                    self.selector.unregister(sock)
                if sock not in seen and marker in self.buffers[sock]:
                    seen[sock] = time.monotonic()
        return seen

    def close(self) -> None:
        for sock in self.buffers:
            sock.close()
        self.selector.close()


class HttpsKeyset:
    """A platform keyset served over real TLS (a self-signed certificate for 127.0.0.1)."""

    def __init__(self, tmp: Path, document: dict[str, Any]) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        self.ca = tmp / "keyset-ca.pem"
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = tmp / "keyset-key.pem"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        body = json.dumps(document).encode()
        self.hits = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.ca, key_file)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.httpd.server_address[1]}/keys.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def launch_over_http(base: str, lms: TestPlatform) -> requests.Response:
    """A real browser's LTI login and launch against a running server."""
    browser = requests.Session()
    login = browser.post(base + "/lti/login", data=lms.login_params(), allow_redirects=False)
    assert login.status_code == 302, login.text[:300]
    query = parse_qs(urlsplit(login.headers["Location"]).query)
    token = lms.sign(lms.claims(query["nonce"][0]))
    return browser.post(
        base + "/lti/launch",
        data={"id_token": token, "state": query["state"][0]},
        allow_redirects=False,
        timeout=15,
    )


def test_lifeline_serve_holds_hundreds_of_streams_and_still_answers(
    app: Flask, world: World, settings: Any, tmp_path: Path, jwks_server: JwksServer
) -> None:
    # A platform whose keyset is served over HTTPS: the launch fetches it from inside the
    # gevent worker (with ssl patched too late, that fetch dies in a RecursionError).
    tls_lms = TestPlatform(jwks_server, issuer="https://tls-lms.example.net", client_id="tls-1")
    keyset = HttpsKeyset(tmp_path, {"keys": [jwk_of(tls_lms.key, tls_lms.kid)]})
    tls_lms.register(app, name="TLS LMS", keyset_url=keyset.url)
    course = world.course("course-1")
    tutor = world.tutor("Tara", world.pool("course-1"))
    cookie = tutor_cookie(app, tutor)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        LIFELINE_DATABASE_URL=DATABASE_URL,
        LIFELINE_REDIS_URL=REDIS_URL,
        LIFELINE_SECRET_KEY=settings.secret_key,
        LIFELINE_BASE_URL="https://lifeline.test",
        LIFELINE_INSTANCE_PATH=str(tmp_path),
        REQUESTS_CA_BUNDLE=str(keyset.ca),
    )
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [LIFELINE, "serve", "--port", str(port), "--workers", "1"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    streams: RawStreams | None = None
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if timed_get(port, "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "Using worker: LifelineWorker" in log.read_text()
        # gevent patched the standard library before anything imported it.
        assert "MonkeyPatchWarning" not in log.read_text(), log.read_text()
        launched = launch_over_http(f"http://127.0.0.1:{port}", tls_lms)
        assert launched.status_code == 200, launched.text[:500]
        assert keyset.hits == 1

        started = time.monotonic()
        streams = RawStreams(port, "/tutor/events", cookie, STREAMS)
        opened = streams.read_until(b"retry: 3000", timeout=30)
        connect_seconds = time.monotonic() - started
        assert len(opened) == STREAMS, log.read_text()[-2000:]
        assert all(b"200 OK" in buf for buf in streams.buffers.values())

        # Ordinary requests still answer fast with every stream open.
        timings = [timed_get(port, "/healthz") for _ in range(30)]
        assert {status for status, _ in timings} == {200}
        ordinary = sorted(t for _, t in timings)
        assert ordinary[-1] < 1.0, ordinary

        # One event reaches all of them.
        made = time.monotonic()
        event_id = world.ask(world.person("lin"), course)[1]
        marker = f"id: {event_id}\nevent: request.created".encode()
        arrived = streams.read_until(marker, timeout=15)
        assert len(arrived) == STREAMS
        delays = sorted(t - made for t in arrived.values())
        p50, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
        assert p99 < 3.0, delays[-5:]

        # A query waiting on a lock blocks its own stream only: psycopg waits cooperatively.
        dsn = make_url(DATABASE_URL).set(drivername="postgresql")
        with psycopg.connect(dsn.render_as_string(hide_password=False)) as locker:
            locker.execute("LOCK TABLE help_events IN ACCESS EXCLUSIVE MODE")
            waiting = Stream(port, "/tutor/events?last_event_id=0", cookie)
            time.sleep(0.3)  # its replay query is now waiting for the lock
            status, took = timed_get(port, "/healthz")
            assert status == 200 and took < 1.0, took
            locker.rollback()
        assert waiting.next_event()["id"] == event_id
        waiting.close()
        print(
            f"\n{STREAMS} streams connected in {connect_seconds:.2f} s; /healthz p50 "
            f"{statistics.median(ordinary) * 1000:.1f} ms max {ordinary[-1] * 1000:.1f} ms; "
            f"event fan-out p50 {p50 * 1000:.1f} ms p99 {p99 * 1000:.1f} ms"
        )

        # A graceful stop ends the streams at once instead of waiting them out.
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - stopping < 10
        assert proc.returncode == 0, log.read_text()[-2000:]
        ended = streams.read_until(b"<EOF>", timeout=5)
        assert len(ended) == STREAMS
    finally:
        keyset.stop()
        if streams is not None:
            streams.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
