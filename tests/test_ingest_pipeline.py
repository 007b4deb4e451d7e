"""The ingestion pipeline ("stream" mode): requests accepted into a Redis stream in one round
trip, stored and evaluated by a real consumer (a thread here, a process under `lifeline
worker`) against the real PostgreSQL and Redis: at-least-once delivery made exactly-once in
PostgreSQL, crashes before the commit and before the acknowledgement, a Redis restart with
entries pending, poison entries moved to the dead letters (and back), repeats and conflicts
across the asynchronous boundary, order per learner, the live offer, and the fallbacks."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select

from lti_tool.activity import ingest, pipeline
from lti_tool.activity.ingest import Item, Scope
from lti_tool.activity.models import ActivityCredential, IngestDeadLetter
from lti_tool.cli import main
from lti_tool.config import Settings
from lti_tool.db import utcnow
from lti_tool.detection.models import DetectionExerciseState, Offer
from tests.activity_helpers import Course_, make_course, raw_events, records, statement
from tests.conftest import DATABASE_URL
from tests.test_live_detection import fail, tutor_available
from tests.test_sdk import bearer, token_of

LINK1 = "https://lms.example.edu/activity/link-1"
LINK2 = "https://lms.example.edu/activity/link-2"
LIFELINE = Path(sys.executable).with_name("lifeline")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(ingest_mode="stream")


@pytest.fixture
def course(app: Flask, platform: Any) -> Course_:
    return make_course(app, platform)


def services(app: Flask) -> Any:
    return app.extensions["lifeline"]


def consumer(app: Flask, **options: Any) -> pipeline.Consumer:
    return pipeline.Consumer(services(app).db, services(app).redis, **options)


def put(course: Course_, stmt: dict[str, Any]) -> Any:
    return course.client.put(
        f"/xapi/statements?statementId={stmt['id']}", json=stmt, headers=course.xapi()
    )


def post(course: Course_, body: Any) -> Any:
    return course.client.post("/xapi/statements?detail=1", json=body, headers=course.xapi())


def wait_for(check: Callable[[], bool], timeout: float = 15.0, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def stream_length(app: Flask) -> int:
    return int(services(app).redis.xlen(pipeline.STREAM))


def pending(app: Flask) -> int:
    summary = services(app).redis.xpending(pipeline.STREAM, pipeline.GROUP)
    return int(summary["pending"])


# -- accepted at once, stored by the consumer --------------------------------------------------


def test_statements_are_queued_at_once_and_stored_and_evaluated_by_a_running_consumer(
    app: Flask, course: Course_
) -> None:
    stmt = statement("alice", LINK1, success=False)
    response = put(course, stmt)
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.headers["X-Lifeline-Counts"] == "queued=1"
    single = course.client.post(
        "/xapi/statements", json=statement("bob", LINK2, "passed"), headers=course.xapi()
    )
    assert single.status_code == 200 and len(single.get_json()) == 1
    assert records(app) == []  # nothing in PostgreSQL yet: accepted into the stream
    assert stream_length(app) == 2

    with pipeline.running(services(app).db, services(app).redis):
        wait_for(lambda: len(records(app)) == 2, what="the consumer storing both")
    alice = next(r for r in records(app) if r.learner_id == course.people["alice"])
    assert (alice.kind, alice.correct, alice.exercise_id) == (
        "submit",
        False,
        course.exercises["link-1"],
    )
    assert alice.occurred_at == dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    raws = raw_events(app)
    assert {r.status for r in raws} == {"accepted"}
    assert json.loads(next(r.body for r in raws if r.external_id == stmt["id"])) == stmt
    assert stream_length(app) == 0 and pending(app) == 0  # acknowledged and deleted
    with services(app).db.transaction() as session:  # evaluated: the engine's state exists
        assert session.scalar(select(func.count()).select_from(DetectionExerciseState)) == 2
        # The credential's last use is noted by the consumer (the request never wrote).
        used = session.scalar(select(ActivityCredential.last_used_at))
        assert used is not None


def test_a_batch_is_answered_per_item_at_acceptance(app: Flask, course: Course_) -> None:
    first = statement("alice", LINK1, success=False)
    batch = [
        first,
        statement("alice", LINK2, "experienced"),  # valid, nothing detection uses
        {"actor": {"mbox": "not-an-email"}},  # invalid, kept raw with its reason
        statement("nobody", LINK1, success=True),  # valid: mapped or not is the consumer's call
        dict(first),  # the same again in this batch
        {**first, "result": {"success": True}},  # another statement under the same id
    ]
    response = post(course, batch)
    assert response.status_code == 200
    body = response.get_json()
    assert body["counts"] == {
        "queued": 2,
        "ignored": 1,
        "invalid": 1,
        "duplicate": 1,
        "conflict": 1,
    }
    assert [r["status"] for r in body["results"]] == [
        "queued",
        "ignored",
        "invalid",
        "queued",
        "duplicate",
        "conflict",
    ]
    assert body["results"][2]["field"] == "actor.mbox"
    assert consumer(app).drain() == 1  # one request, one stream entry
    statuses = sorted(r.status for r in raw_events(app))
    assert statuses == ["accepted", "conflict", "ignored", "invalid", "unmapped"]
    assert len(records(app)) == 1


def test_repeats_and_conflicts_across_the_asynchronous_boundary(
    app: Flask, course: Course_
) -> None:
    stmt = statement("alice", LINK1, success=False)
    changed = {**stmt, "result": {"success": True}}
    assert put(course, stmt).status_code == 204
    # Not stored yet, and still: the same statement is a duplicate, another one a 409.
    again = put(course, stmt)
    assert again.status_code == 204 and again.headers["X-Lifeline-Counts"] == "duplicate=1"
    refused = put(course, changed)
    assert refused.status_code == 409
    assert refused.get_json()["field"] == "id"
    in_batch = post(course, [changed, statement("bob", LINK2, success=True)])
    assert [r["status"] for r in in_batch.get_json()["results"]] == ["conflict", "queued"]
    assert consumer(app).drain() == 2
    assert len(records(app)) == 2
    kept = [r for r in raw_events(app) if r.status == "conflict"]
    assert len(kept) == 1 and json.loads(kept[0].body)["result"] == {"success": True}
    assert [r.correct for r in records(app) if r.learner_id == course.people["alice"]] == [False]

    # PostgreSQL has the last word: with Redis' memory of the ids gone (expired, or a Redis
    # that lost its data), a repeat is queued again and the consumer recognises it.
    client = services(app).redis

    def forget() -> None:
        for key in client.scan_iter(pipeline.ID_PREFIX + "*"):
            client.delete(key)

    forget()
    assert put(course, stmt).headers["X-Lifeline-Counts"] == "queued=1"
    forget()
    other = statement("alice", LINK1, success=True, statement_id=stmt["id"], timestamp=None)
    assert post(course, [other]).get_json()["counts"] == {"queued": 1}
    assert consumer(app).drain() == 2
    assert len(records(app)) == 2  # no second record for the repeat
    conflicts = [r for r in raw_events(app) if r.status == "conflict"]
    assert len(conflicts) == 2  # the later conflicting body kept aside, never replacing


def test_a_single_invalid_statement_is_still_a_400_naming_the_field(course: Course_) -> None:
    bad = statement("alice", LINK1, success=False)
    bad["result"]["score"] = {"scaled": 3}
    response = put(course, bad)
    assert response.status_code == 400
    assert response.get_json()["field"] == "result.score.scaled"
    assert stream_length(course.app) == 0


def test_the_rate_limit_is_part_of_the_one_round_trip(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(per_credential_per_minute=3))
    for _ in range(3):
        assert post(course, [statement(success=True)]).status_code == 200
    limited = post(course, [statement(success=True)])
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert stream_length(app) == 3  # the refused request queued nothing


def test_when_redis_cannot_take_a_request_it_is_stored_in_the_request(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    def down(*args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(pipeline, "accept", down)
    response = post(course, [statement("alice", LINK1, success=False)])
    assert response.status_code == 200
    assert response.get_json()["counts"] == {"accepted": 1}
    assert len(records(app)) == 1  # stored at once, nothing lost


# -- failures of the consumer --------------------------------------------------------------------


def test_a_consumer_that_dies_before_its_commit_is_replaced_and_nothing_is_stored_twice(
    app: Flask, course: Course_
) -> None:
    for actor in ("alice", "bob", "alice"):
        assert put(course, statement(actor, LINK1, success=False)).status_code == 204
    client = services(app).redis
    dead = consumer(app)
    assert dead.lead()
    read = dead._read(0)  # XREADGROUP: the entries are now pending on the dead consumer
    assert len(read) == 3 and pending(app) == 3
    client.delete(pipeline.LEADER)  # its lease lapses: it never renews it

    survivor = consumer(app)
    assert survivor.drain() == 3  # takes over the lease, claims the pending entries first
    assert len(records(app)) == 3
    assert pending(app) == 0 and stream_length(app) == 0


def test_a_consumer_that_dies_after_its_commit_is_redelivered_exactly_once(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = token_of(course.learners["alice"])
    for _ in range(3):
        answer = course.client.post(
            "/api/activity/sdk", json={"events": [fail()]}, headers=bearer(token)
        )
        assert answer.status_code == 200
        assert answer.get_json()["counts"] == {"queued": 1}
    first = consumer(app)

    def crash(entry_ids: list[str]) -> None:
        raise redis.ConnectionError("the worker died before XACK")

    monkeypatch.setattr(first, "_ack", crash)
    with pytest.raises(redis.ConnectionError):
        first.drain()
    assert len(records(app)) == 3  # committed ...
    assert pending(app) == 3  # ... never acknowledged
    services(app).redis.delete(pipeline.LEADER)

    assert consumer(app).drain() == 3  # redelivered
    assert len(records(app)) == 3  # stored once
    assert pending(app) == 0
    with services(app).db.transaction() as session:
        [state] = session.scalars(select(DetectionExerciseState)).all()
        assert state.state["failures"] == 3  # evaluated once


def test_a_poison_entry_goes_to_the_dead_letters_and_the_rest_of_the_batch_is_stored(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = services(app).redis
    put(course, statement("alice", LINK1, success=False))
    # An entry PostgreSQL refuses (an id longer than its column), between two good ones.
    now = utcnow()
    long_id = Item(0, "x" * 300, '{"x":1}', "c", reply_id=None, note="n")
    scope = Scope(course.platform_id, course.course_id)
    client.xadd(
        pipeline.STREAM,
        {"d": pipeline.encode_entry(scope, "xapi", None, now, [long_id], ["d"]), "m": "0"},
    )
    client.xadd(pipeline.STREAM, {"d": "{not json", "m": "0"})  # cannot even be decoded
    put(course, statement("bob", LINK1, success=True))

    worker = consumer(app, max_tries=2, pause=no_pause)
    worker.drain()
    assert len(records(app)) == 2  # both good statements stored
    assert pending(app) == 0 and stream_length(app) == 0
    with services(app).db.transaction() as session:
        letters = session.scalars(select(IngestDeadLetter).order_by(IngestDeadLetter.id)).all()
        reasons = [letter.reason for letter in letters]
    assert len(letters) == 2
    assert any("cannot be decoded" in r for r in reasons)
    assert any("failed 2 times" in r and "too long" in r for r in reasons)

    env = cli_env(app)
    shown = CliRunner().invoke(main, ["activity", "dead-letters"], env=env)
    assert shown.exit_code == 0, shown.output
    assert "cannot be decoded" in shown.output and "too long" in shown.output
    assert "2 dead letter(s)" in shown.output


def test_a_dead_letter_can_be_put_back_once_the_cause_is_fixed(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = pipeline.store_entries

    def broken(session: Any, entries: Any) -> int:
        if any("POISON" in i.body for e in entries for i in e.items):
            raise RuntimeError("a bug in the consumer")
        return real(session, entries)

    monkeypatch.setattr(pipeline, "store_entries", broken)
    post(course, [statement("alice", LINK1, success=False)])
    post(course, [statement("bob", LINK1, success=False, result={"response": "POISON"})])
    consumer(app, max_tries=1, pause=no_pause).drain()
    assert len(records(app)) == 1
    with services(app).db.transaction() as session:
        [letter] = session.scalars(select(IngestDeadLetter)).all()
        assert "a bug in the consumer" in letter.reason
        letter_id = letter.id

    monkeypatch.setattr(pipeline, "store_entries", real)  # the bug is fixed
    env = cli_env(app)
    done = CliRunner().invoke(
        main, ["activity", "dead-letters", "--retry", str(letter_id)], env=env
    )
    assert done.exit_code == 0, done.output
    assert f"#{letter_id} back" in done.output
    consumer(app).drain()
    assert len(records(app)) == 2
    shown = CliRunner().invoke(main, ["activity", "dead-letters"], env=env)
    assert "No dead letters" in shown.output


def cli_env(app: Flask) -> dict[str, str]:
    settings = services(app).settings
    return {
        "LIFELINE_DATABASE_URL": settings.database_url,
        "LIFELINE_REDIS_URL": settings.redis_url,
        "LIFELINE_SECRET_KEY": settings.secret_key,
        "LIFELINE_BASE_URL": settings.base_url,
    }


def test_a_database_outage_does_not_count_as_a_failure(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(course, statement("alice", LINK1, success=False))
    worker = consumer(app, max_tries=1, pause=no_pause)
    real = pipeline.store_entries

    def unreachable(session: Any, entries: Any) -> int:
        raise ConnectionError("the database is unreachable")

    monkeypatch.setattr(worker, "_database_up", lambda: False)
    monkeypatch.setattr(pipeline, "store_entries", unreachable)
    assert worker.lead()
    for _ in range(3):
        worker.process_once(block_ms=0)
    assert pending(app) == 1  # still waiting, never dead-lettered
    monkeypatch.setattr(pipeline, "store_entries", real)  # the database is back
    worker.process_once(block_ms=0)
    assert len(records(app)) == 1 and pending(app) == 0
    with services(app).db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(IngestDeadLetter)) == 0


def no_pause(seconds: float) -> None:
    pass


# -- order, detection, the offer -----------------------------------------------------------------


def test_events_of_a_learner_are_evaluated_in_the_order_they_were_accepted(
    app: Flask, course: Course_
) -> None:
    outcomes = [False, False, True, False, False]
    ids = []
    with pipeline.running(services(app).db, services(app).redis):
        for success in outcomes:  # no timestamps: they happened when they arrived
            stmt = statement("alice", LINK1, success=success, timestamp=None)
            ids.append(stmt["id"])
            assert put(course, stmt).status_code == 204
        wait_for(lambda: len(records(app)) == 5, what="five records")
    stored = records(app)
    by_raw = {r.id: r.external_id for r in raw_events(app)}
    assert [by_raw[r.raw_event_id] for r in stored] == ids
    assert [r.correct for r in sorted(stored, key=lambda r: r.id)] == outcomes
    with services(app).db.transaction() as session:
        [state] = session.scalars(select(DetectionExerciseState)).all()
    assert state.state["consecutive_failures"] == 2 and state.state["solved"] is True
    assert state.state["attempts"] == 5


def test_failing_submissions_through_the_stream_make_an_offer(
    app: Flask, platform: Any, course: Course_
) -> None:
    tutor_available(app, platform, course)
    token = token_of(course.learners["alice"])
    with pipeline.running(services(app).db, services(app).redis):
        for _ in range(5):
            answer = course.client.post(
                "/api/activity/sdk", json={"events": [fail()]}, headers=bearer(token)
            )
            assert answer.status_code == 200, answer.get_data(as_text=True)
        wait_for(lambda: len(offers(app)) == 1, what="an offer")
    [offer] = offers(app)
    assert offer.learner_id == course.people["alice"]
    assert offer.exercise_id == course.exercises["link-2"]  # her last launch


def offers(app: Flask) -> list[Offer]:
    with services(app).db.transaction() as session:
        rows = list(session.scalars(select(Offer)))
        session.expunge_all()
        return rows


# -- Redis restarts, and the worker's own process -------------------------------------------------


class RedisServer:
    """A redis-server of this test's own with AOF on (as in production), restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # a restart: AOF flushed on the way out
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    # `make test` installs redis-server (scripts/ensure-services.sh): missing is a failure.
    assert shutil.which("redis-server"), "redis-server is not installed (run `make test`)"
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-ingest-redis-"))
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def course_on_own_redis(
    database: Any, own_redis: RedisServer, settings: Settings, jwks_server: Any
) -> Iterator[tuple[Flask, Course_]]:
    """An app whose Redis is ``own_redis`` (a test may stop or kill it), with a course."""
    from lti_tool import create_app
    from lti_tool.courses import recent_launches
    from lti_tool.web import lti as lti_views
    from tests.conftest import _truncate
    from tests.platform import TestPlatform

    _truncate(database)
    recent_launches.clear()
    lti_views._last_noted.clear()
    app = create_app(settings.with_overrides(redis_url=own_redis.url))
    try:
        lms = TestPlatform(jwks_server)
        lms.register(app)
        yield app, make_course(app, lms)
    finally:
        services(app).hub.stop()
        services(app).db.dispose()


def test_a_redis_restart_keeps_accepted_and_pending_entries(
    database: Any, own_redis: RedisServer, settings: Settings, jwks_server: Any
) -> None:
    with course_on_own_redis(database, own_redis, settings, jwks_server) as (app, course):
        for actor in ("alice", "bob"):
            assert put(course, statement(actor, LINK1, success=False)).status_code == 204
        reader = consumer(app)
        assert reader.lead() and len(reader._read(0)) == 2  # read, never committed
        assert put(course, statement("alice", LINK2, success=True)).status_code == 204

        own_redis.stop()  # Redis restarts with two entries pending and one never read
        own_redis.start()

        assert put(course, statement("bob", LINK2, success=True)).status_code == 204
        services(app).redis.delete(pipeline.LEADER)  # the first reader is gone
        assert consumer(app).drain() == 4
        assert len(records(app)) == 4
        assert pending(app) == 0


def test_lifeline_worker_runs_the_consumer_in_a_process_of_its_own(
    app: Flask, course: Course_, tmp_path: Path
) -> None:
    for actor in ("alice", "bob"):
        assert put(course, statement(actor, LINK1, success=False)).status_code == 204
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(cli_env(app))
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(LIFELINE), "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(records(app)) == 2, timeout=60, what="the worker storing them")
        assert put(course, statement("alice", LINK2, success=True)).status_code == 204
        wait_for(lambda: len(records(app)) == 3, timeout=20, what="the next one")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    started = re.search(r"ingest consumer (\S+) started", output)
    assert started, output
    child = int(started.group(1).rsplit(".", 2)[1])  # named host.pid.n
    assert child != worker.pid  # a process of its own

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(gone, timeout=20, what="the consumer stopping with its worker")


def test_settings_name_the_ingest_mode() -> None:
    from lti_tool.config import ConfigError, settings_from_env

    base = {
        "LIFELINE_DATABASE_URL": DATABASE_URL,
        "LIFELINE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LIFELINE_SECRET_KEY": "s" * 40,
        "LIFELINE_BASE_URL": "https://lifeline.test",
    }
    assert settings_from_env(base).ingest_mode == "stream"
    assert settings_from_env({**base, "LIFELINE_INGEST_MODE": "SYNC"}).ingest_mode == "sync"
    with pytest.raises(ConfigError, match="INGEST_MODE"):
        settings_from_env({**base, "LIFELINE_INGEST_MODE": "later"})
