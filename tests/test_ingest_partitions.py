"""A partitioned ingestion stream: a request's statements are spread over the partitions by
learner (one Lua call appends one entry per partition), each partition has its own consumer
(a process of its own under `lifeline worker`), and the result is the same as with one:
every statement stored once, in order per learner, repeats and conflicts answered item by
item, peer statistics summed across consumers that commit at the same time, dead letters put
back where they came from, and nothing left behind when the setting is lowered. Real
PostgreSQL, Redis and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from lti_tool.activity import pipeline, xapi
from lti_tool.activity.ingest import Scope
from lti_tool.activity.models import IngestDeadLetter
from lti_tool.config import ConfigError, Settings, settings_from_env
from lti_tool.db import utcnow
from lti_tool.detection.models import DetectionPeerStats
from tests.activity_helpers import Course_, make_course, raw_events, records, statement
from tests.test_ingest_pipeline import cli_env, wait_for

LINK1 = "https://lms.example.edu/activity/link-1"
LINK2 = "https://lms.example.edu/activity/link-2"
LEARNERS = ("alice", "bob", "carol", "dan", "erin", "frank")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(ingest_mode="stream", ingest_partitions=2)


@pytest.fixture
def course(app: Flask, platform: Any) -> Course_:
    return make_course(app, platform, learners=LEARNERS)


def services(app: Flask) -> Any:
    return app.extensions["lifeline"]


def partition_of(actor: str, partitions: int = 2) -> int:
    item = xapi.parse_statement(statement(actor, LINK1, success=False), 0, utcnow())
    return pipeline.partition_of(item, partitions)


def post(course: Course_, body: Any) -> Any:
    return course.client.post("/xapi/statements?detail=1", json=body, headers=course.xapi())


def lengths(app: Flask) -> list[int]:
    client = services(app).redis
    return [int(client.xlen(pipeline.stream_key(n))) for n in range(2)]


def test_the_learners_of_this_file_fall_in_both_partitions() -> None:
    # (the tests below need some of each; the hash is fixed: crc32 of the actor)
    assert {partition_of(a) for a in LEARNERS} == {0, 1}
    assert all(partition_of(a, 1) == 0 for a in LEARNERS)


def test_a_batch_is_split_by_learner_and_every_statement_stored_once_in_order(
    app: Flask, course: Course_
) -> None:
    body = []
    for attempt in range(3):
        for actor in LEARNERS:
            stamp = f"2026-03-01T10:0{attempt}:00Z"
            body.append(statement(actor, LINK1, success=attempt == 2, timestamp=stamp))
    response = post(course, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["counts"] == {"queued": 18}
    assert [r["id"] for r in response.get_json()["results"]] == [s["id"] for s in body]
    assert lengths(app) == [1, 1]  # one entry per partition for the one request
    client = services(app).redis
    for partition in (0, 1):
        [(entry_id, fields)] = client.xrange(pipeline.stream_key(partition))
        decoded = pipeline.decode_entry(
            entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()}
        )
        assert decoded.items and {pipeline.partition_of(i, 2) for i in decoded.items} == {partition}

    stored = pipeline.drain_all(services(app).db, services(app).redis, 2)
    assert stored == 2
    rows = records(app)
    assert len(rows) == 18 and len(raw_events(app)) == 18
    for actor in LEARNERS:
        mine = [r for r in rows if r.learner_id == course.people[actor]]
        assert [r.correct for r in sorted(mine, key=lambda r: r.id)] == [False, False, True]
    assert lengths(app) == [0, 0]


def test_repeats_and_conflicts_are_answered_per_item_across_partitions(
    app: Flask, course: Course_
) -> None:
    first = [statement(actor, LINK1, success=False) for actor in LEARNERS]
    assert post(course, first).status_code == 200
    changed = dict(first[1], result={"success": True})  # same id, other content
    again = [*first[::-1], changed, statement("carol", LINK2, success=True)]
    response = post(course, again)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["status"] for r in results] == ["duplicate"] * 6 + ["conflict", "queued"]
    assert [r["id"] for r in results] == [s["id"] for s in again]
    assert results[6]["field"] == "id"
    pipeline.drain_all(services(app).db, services(app).redis, 2)
    assert len(records(app)) == 7  # six first, one new; the conflict is kept raw only
    statuses = sorted(e.status for e in raw_events(app))
    assert statuses == ["accepted"] * 7 + ["conflict"]
    # A single conflicting statement is still a 409, whichever partition it falls in.
    for actor in ("alice", "bob"):
        stmt = next(s for s in first if s["actor"]["account"]["name"] == actor)
        clash = dict(stmt, result={"success": True})
        answer = course.client.put(
            f"/xapi/statements?statementId={stmt['id']}", json=clash, headers=course.xapi()
        )
        assert answer.status_code == 409, answer.get_data(as_text=True)


def test_consumers_of_two_partitions_committing_at_once_lose_no_peer_statistics(
    app: Flask, course: Course_
) -> None:
    svc = services(app)
    scope = Scope(course.platform_id, course.course_id)
    total = 0
    for round_ in range(6):
        now = utcnow()
        batch = []
        for actor in LEARNERS:
            for link in (LINK1, LINK2):
                stamp = f"2026-03-01T11:{round_:02d}:00Z"
                stmt = statement(actor, link, success=round_ % 3 == 2, timestamp=stamp)
                batch.append(xapi.parse_statement(stmt, len(batch), now))
        pipeline.accept(svc.redis, scope, "xapi", batch, now=now, partitions=2)
        total += len(batch)
    errors: list[BaseException] = []

    def consume(partition: int) -> None:
        try:
            # Small reads: many transactions per partition, interleaved with the other's.
            pipeline.Consumer(svc.db, svc.redis, partition=partition, read_count=1).drain(60)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consume, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors
    assert len(records(app)) == total == 72
    with svc.db.transaction() as session:
        stats = {
            row.exercise_key: row.stats
            for row in session.scalars(
                select(DetectionPeerStats).where(DetectionPeerStats.course_id == course.course_id)
            )
        }
        letters = session.scalars(select(IngestDeadLetter)).all()
    assert not letters
    # Each learner started and solved both exercises (the 3rd try of each round of three
    # passes): every consumer's additions are in the sums, none overwritten by the other's.
    for link in ("link-1", "link-2"):
        exercise = stats[str(course.exercises[link])]
        assert exercise["started"] == len(LEARNERS), exercise
        assert exercise["solved"] == len(LEARNERS), exercise


def test_a_dead_letter_goes_back_to_its_own_partition(app: Flask, course: Course_) -> None:
    svc = services(app)
    client = svc.redis
    client.xadd(pipeline.stream_key(1), {"d": "{not json", "m": "0"})
    pipeline.Consumer(svc.db, client, partition=1, pause=lambda _: None).drain()
    with svc.db.transaction() as session:
        letter = session.scalars(select(IngestDeadLetter)).one()
        assert letter.stream_id.endswith("@1")
        assert pipeline.retry_dead_letters(session, client) == [letter.id]
    assert lengths(app) == [0, 1]


def test_a_lowered_setting_leaves_no_partition_behind(app: Flask, course: Course_) -> None:
    svc = services(app)
    scope = Scope(course.platform_id, course.course_id)
    now = utcnow()
    items = [
        xapi.parse_statement(statement(a, LINK1, success=False), i, now)
        for i, a in enumerate(LEARNERS)
    ]
    pipeline.accept(svc.redis, scope, "xapi", items, now=now, partitions=4)
    in_use = pipeline.partitions_in_use(svc.redis, 1)
    assert in_use >= 2 and sum(svc.redis.xlen(pipeline.stream_key(n)) for n in range(4)) >= 2
    pipeline.drain_all(svc.db, svc.redis, in_use)
    assert len(records(app)) == len(LEARNERS)


def test_lifeline_worker_runs_one_consumer_process_per_partition(
    app: Flask, course: Course_, tmp_path: Path
) -> None:
    body = [statement(actor, LINK1, success=False) for actor in LEARNERS]
    assert post(course, body).status_code == 200
    assert all(n > 0 for n in lengths(app))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(cli_env(app), LIFELINE_INGEST_PARTITIONS="2")
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("lifeline")), "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: len(records(app)) == len(LEARNERS), timeout=60, what="both stored")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
    output = (tmp_path / "worker.log").read_text()
    assert "(partition 0)" in output and "(partition 1)" in output, output
    assert lengths(app) == [0, 0]


@pytest.mark.parametrize("value", ["0", "17", "two"])
def test_a_bad_partition_count_stops_start_up_naming_the_variable(value: str) -> None:
    base = {
        "LIFELINE_DATABASE_URL": "sqlite:///x.db",
        "LIFELINE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LIFELINE_SECRET_KEY": "k" * 40,
        "LIFELINE_BASE_URL": "https://lifeline.example.edu",
    }
    assert settings_from_env(base).ingest_partitions == 2
    with pytest.raises(ConfigError, match="INGEST_PARTITIONS"):
        settings_from_env({**base, "LIFELINE_INGEST_PARTITIONS": value})


@pytest.mark.parametrize("fast_path", [True, False])
def test_the_rate_limit_per_credential_is_a_setting(
    app: Flask, platform: Any, settings: Settings, fast_path: bool
) -> None:
    from lti_tool import create_app

    limited = create_app(settings.with_overrides(activity_rate_limit=2, xapi_fast_path=fast_path))
    course = make_course(limited, platform, learners=("alice",))
    codes = []
    for _ in range(3):
        stmt = statement("alice", LINK1, success=False)
        answer = course.client.put(
            f"/xapi/statements?statementId={stmt['id']}", json=stmt, headers=course.xapi()
        )
        codes.append(answer.status_code)
    assert codes == [204, 204, 429]
    assert "More than 2 requests in a minute" in answer.get_json()["detail"]
    assert int(answer.headers["Retry-After"]) >= 1
    with pytest.raises(ConfigError, match="ACTIVITY_RATE_LIMIT"):
        settings_from_env(
            {
                "LIFELINE_DATABASE_URL": "sqlite:///x.db",
                "LIFELINE_REDIS_URL": "redis://127.0.0.1:6379/0",
                "LIFELINE_SECRET_KEY": "k" * 40,
                "LIFELINE_BASE_URL": "https://lifeline.example.edu",
                "LIFELINE_ACTIVITY_RATE_LIMIT": "0",
            }
        )


def test_a_worker_with_fewer_partitions_than_the_web_starts_a_consumer_for_the_others(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The web (2 partitions) wrote to partition 1; a worker configured for 1 finds it at its
    next maintenance and starts a consumer process for it."""
    body = [statement(actor, LINK1, success=False) for actor in LEARNERS]
    assert post(course, body).status_code == 200
    for name, value in cli_env(app).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LIFELINE_INGEST_PARTITIONS", "1")
    processes = pipeline.ConsumerProcesses(1)
    processes.start()
    try:
        processes.ensure(services(app).redis)
        assert [p.partition for p in processes.processes] == [0, 1]
        wait_for(lambda: len(records(app)) == len(LEARNERS), timeout=60, what="all stored")
        assert lengths(app) == [0, 0]
    finally:
        processes.stop()


def test_activity_consume_without_a_partition_consumes_them_all(
    app: Flask, course: Course_, tmp_path: Path
) -> None:
    body = [statement(actor, LINK1, success=False) for actor in LEARNERS]
    assert post(course, body).status_code == 200
    assert all(n > 0 for n in lengths(app))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(cli_env(app), LIFELINE_INGEST_PARTITIONS="2")
    log = (tmp_path / "consume.log").open("wb")
    consume = subprocess.Popen(
        [str(Path(sys.executable).with_name("lifeline")), "activity", "consume"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: len(records(app)) == len(LEARNERS), timeout=60, what="both stored")
    finally:
        consume.terminate()
        consume.wait(timeout=30)
        log.close()
    output = (tmp_path / "consume.log").read_text()
    assert "(partition 0)" in output and "(partition 1)" in output, output
    assert consume.returncode == 0, output
    assert lengths(app) == [0, 0]


def test_activity_consume_refuses_a_partition_out_of_range(app: Flask) -> None:
    from click.testing import CliRunner

    from lti_tool.cli import main

    result = CliRunner().invoke(
        main, ["activity", "consume", "--partition", "16"], env=cli_env(app)
    )
    assert result.exit_code == 2
    assert "--partition" in result.output and "0<=x<=15" in result.output
