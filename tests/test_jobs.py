"""Jobs: enqueued only after the transaction commits, scheduled SLA checks, failed jobs for
admins, and the real `lifeline worker` surviving a SIGKILL mid-job and a Redis that hangs
(each against a private redis-server on a spare port, never the shared one)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from flask import Flask
from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lti_tool import create_app, jobs, tasks
from lti_tool.bus import attach_publisher
from lti_tool.cli import main as lifeline
from lti_tool.config import Settings, demo_settings
from lti_tool.courses import Course, Person
from lti_tool.db import Database
from lti_tool.help import operations as ops
from lti_tool.help.models import CourseSettings, HelpEvent, HelpRequest, PageLog
from lti_tool.lti.registry import add_platform
from lti_tool.migrate import upgrade
from lti_tool.notify import notifiers_from_settings, redact_url
from lti_tool.tutors.models import Tutor
from lti_tool.tutors.operations import add_to_pool, ensure_course_pool, set_availability
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.platform import TestPlatform
from tests.smtp_server import smtp_server, webhook_server

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
QUESTION = "Why does my SQL join return every row twice when I add the second table?"


def explode(request_id: int) -> None:
    """A job that always fails (for the failed-jobs commands)."""
    raise RuntimeError(f"the webhook for request {request_id} said no")


# -- shared set-up ---------------------------------------------------------------------------


@dataclass
class Course1:
    course_id: int
    pool_id: int
    platform_id: int


def _course(
    db: Database, platform_id: int, webhook: str | None = None, tutor_email: str | None = None
) -> Course1:
    with db.transaction() as session:
        course = Course(platform_id=platform_id, deployment_id="d", context_id="db1", title="DB")
        session.add(course)
        session.flush()
        session.add(CourseSettings(course_id=course.id, sla_minutes=5, notify_webhook=webhook))
        pool = ensure_course_pool(session, course)
        if tutor_email:
            tutor = Tutor(display_name="Ada", email=tutor_email, capacity=5)
            session.add(tutor)
            session.flush()
            add_to_pool(session, tutor.id, pool.id)
            set_availability(session, tutor, "available")
        return Course1(course.id, pool.id, platform_id)


def _request(session: Session, where: Course1, sub: str = "l-1") -> HelpRequest:
    course = session.get(Course, where.course_id)
    assert course is not None
    learner = Person(platform_id=where.platform_id, sub=sub, name="Lee")
    session.add(learner)
    session.flush()
    request, created = ops.request_help(
        session, learner=learner, course=course, exercise_id=None, new=ops.NewRequest(QUESTION)
    )
    assert created
    return request


def queued_jobs(connection: redis.Redis) -> list[tuple[str, tuple[Any, ...]]]:
    queue = Queue(jobs.QUEUE_NAME, connection=connection)
    return [(job.func_name, tuple(job.args)) for job in queue.get_jobs()]


def _worker_context(settings: Settings, db: Database, connection: redis.Redis) -> jobs.JobContext:
    """What a web process has in production: an RQ queue, jobs enqueued after commit."""
    return jobs.JobContext(
        settings,
        db,
        notifiers_from_settings(settings),
        Queue(jobs.QUEUE_NAME, connection=connection),
    )


@pytest.fixture
def hooked(
    app: Flask, redis_client: redis.Redis, settings: Settings
) -> tuple[sessionmaker[Session], jobs.JobContext]:
    """A sessionmaker with the production hooks on the shared test Redis (not inline)."""
    db: Database = app.extensions["lifeline"].db
    sessions = sessionmaker(db.engine, expire_on_commit=False)
    context = _worker_context(settings, db, redis_client)
    attach_publisher(sessions, redis_client)
    jobs.attach_enqueuer(sessions, context)
    return sessions, context


# -- enqueue after commit --------------------------------------------------------------------


def test_jobs_are_enqueued_only_after_the_commit(
    app: Flask,
    platform: TestPlatform,
    redis_client: redis.Redis,
    hooked: tuple[sessionmaker[Session], jobs.JobContext],
) -> None:
    sessions, _context = hooked
    where = _course(app.extensions["lifeline"].db, platform.platform_id)
    with sessions() as session:
        request = _request(session, where)
        session.flush()
        assert queued_jobs(redis_client) == []  # recorded, flushed, not committed: nothing
        session.commit()
        request_id = request.id
    assert queued_jobs(redis_client) == [(jobs.PAGE_REQUEST, (request_id, 1))]
    [job] = Queue(jobs.QUEUE_NAME, connection=redis_client).get_jobs()
    assert (job.retries_left, job.retry_intervals) == (4, [5, 15, 60, 180])
    assert job.timeout == jobs.JOB_TIMEOUT

    with sessions() as session:
        _request(session, where, sub="l-2")
        session.rollback()  # rolled back: no job
    assert len(queued_jobs(redis_client)) == 1

    with sessions() as session:
        tutor = Tutor(display_name="Bo", capacity=1)
        session.add(tutor)
        session.flush()
        ops.claim(session, request_id, tutor, {where.pool_id})
        session.commit()
    assert queued_jobs(redis_client)[1:] == [(jobs.ALERT_LEARNERS, (where.pool_id,))]


def test_redis_down_at_commit_does_not_fail_the_request(
    app: Flask, platform: TestPlatform, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    db: Database = app.extensions["lifeline"].db
    where = _course(db, platform.platform_id)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    sessions = sessionmaker(db.engine, expire_on_commit=False)
    context = _worker_context(settings, db, jobs.make_job_redis(dead, 1))
    jobs.attach_enqueuer(sessions, context)
    caplog.set_level(logging.WARNING, logger="lti_tool.jobs")
    started = time.monotonic()
    with sessions() as session:
        request_id = _request(session, where).id
        session.commit()
    assert time.monotonic() - started < 10
    with db.transaction() as session:
        assert session.get(HelpRequest, request_id) is not None
    assert any(
        "could not enqueue lti_tool.tasks.page_request" in r.getMessage()
        and "sweep will redo it" in r.getMessage()
        for r in caplog.records
    )


def test_paging_schedules_the_next_sla_check_once(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis, settings: Settings
) -> None:
    db: Database = app.extensions["lifeline"].db
    where = _course(db, platform.platform_id)
    with sessionmaker(db.engine)() as session, session.begin():  # no hooks: no inline paging
        request = _request(session, where)
        request_id, queued_at = request.id, request.queued_at
    context = _worker_context(settings, db, redis_client)
    with jobs.bound(context):
        tasks.page_request(request_id, 1)
        tasks.page_request(request_id, 1)  # delivered twice: still one scheduled check
    registry = ScheduledJobRegistry(jobs.QUEUE_NAME, connection=redis_client)
    [job_id] = registry.get_job_ids()
    due = queued_at.timestamp() + 5 * 60
    assert job_id == f"lifeline-sla-{request_id}-2-{int(due)}"
    assert abs(registry.get_expiration_time(Job.fetch(job_id, redis_client)).timestamp() - due) < 2
    assert tuple(Job.fetch(job_id, connection=redis_client).args) == (request_id, 2)


# -- failed jobs for admins ----------------------------------------------------------------


def test_admin_lists_failed_jobs_and_retries_them(
    database: Database, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "jobs-test-secret-" + "q" * 32,
        "BASE_URL": "https://lifeline.test",
    }.items():
        monkeypatch.setenv("LIFELINE_" + name, value)
    queue = Queue(jobs.QUEUE_NAME, connection=redis_client)
    failing = [queue.enqueue("tests.test_jobs.explode", n, failure_ttl=600) for n in (7, 8)]
    SimpleWorker([queue], connection=redis_client).work(burst=True, logging_level="WARNING")
    assert FailedJobRegistry(queue=queue).count == 2
    runner = CliRunner()

    listed = runner.invoke(lifeline, ["jobs", "failed"])
    assert listed.exit_code == 0, listed.output
    assert f"{failing[0].id}  tests.test_jobs.explode(7)  failed " in listed.output
    assert "    RuntimeError: the webhook for request 8 said no" in listed.output
    assert "2 failed job(s)." in listed.output
    as_json = json.loads(runner.invoke(lifeline, ["jobs", "failed", "--json"]).output)
    # (Failures within one second share a score in the registry: compare in any order.)
    assert sorted((row["id"], row["args"], row["error"]) for row in as_json) == sorted(
        [
            (failing[0].id, [7], "RuntimeError: the webhook for request 7 said no"),
            (failing[1].id, [8], "RuntimeError: the webhook for request 8 said no"),
        ]
    )
    assert all("Traceback" in row["traceback"] and row["failed_at"] for row in as_json)

    retried = runner.invoke(lifeline, ["jobs", "retry", failing[0].id])
    assert retried.exit_code == 0 and f"Requeued {failing[0].id}." in retried.output
    assert [job.id for job in queue.get_jobs()] == [failing[0].id]
    missing = runner.invoke(lifeline, ["jobs", "retry", "no-such-job"])
    assert missing.exit_code == 1
    assert "Not among the failed jobs: no-such-job" in missing.output
    assert runner.invoke(lifeline, ["jobs", "retry"]).exit_code == 2  # neither ids nor --all
    everything = runner.invoke(lifeline, ["jobs", "retry", "--all"])
    assert everything.exit_code == 0 and f"Requeued {failing[1].id}." in everything.output
    assert runner.invoke(lifeline, ["jobs", "failed"]).output.strip() == "No failed jobs."
    assert queue.count == 2


# -- the real worker, a private Redis --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up after {timeout:.0f} s waiting for {what}")


@dataclass
class PrivateRedis:
    process: subprocess.Popen[bytes]
    url: str

    def client(self) -> redis.Redis:
        return jobs.make_job_redis(self.url, 2)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    port = _free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = PrivateRedis(process, f"redis://127.0.0.1:{port}/0")
    try:
        probe = server.client()

        def ready() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        _wait("redis-server to start", ready, 10)
        yield server
    finally:
        with_signal = (signal.SIGCONT, signal.SIGTERM)
        for sig in with_signal:
            if process.poll() is None:
                os.kill(process.pid, sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the work horse runs in a process group of its own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


class WorkerProcess:
    def __init__(self, redis_url: str, log: Path, **env: str) -> None:
        self.log = log
        environment = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
        environment.update(
            LIFELINE_DATABASE_URL=DATABASE_URL,
            LIFELINE_REDIS_URL=redis_url,
            LIFELINE_SECRET_KEY="worker-test-secret-" + "w" * 32,
            LIFELINE_BASE_URL="https://lifeline.test",
        )
        environment.update({"LIFELINE_" + k: v for k, v in env.items()})
        self.output = log.open("ab")
        self.process = subprocess.Popen(
            [LIFELINE, "worker"],
            env=environment,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the worker, its scheduler and its work horse at once: a machine that died."""
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.output.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(redis_url: str, **env: str) -> WorkerProcess:
        worker = WorkerProcess(redis_url, tmp_path / f"worker-{len(started) + 1}.log", **env)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


def _status(connection: redis.Redis, job_id: str) -> JobStatus | None:
    try:
        return Job.fetch(job_id, connection=connection).get_status()
    except redis.RedisError:
        return None


def test_a_job_whose_worker_was_sigkilled_runs_again_within_90_seconds_and_pages_once(
    app: Flask,
    platform: TestPlatform,
    settings: Settings,
    private_redis: PrivateRedis,
    workers: Callable[..., WorkerProcess],
) -> None:
    db: Database = app.extensions["lifeline"].db
    with smtp_server() as (smtp_port, mail), webhook_server() as (hook_url, hook):
        hook.hold_first, hook.hold_seconds = True, 120  # the first POST hangs: kill mid-send
        where = _course(db, platform.platform_id, hook_url, "ada@tutors.example.edu")
        connection = private_redis.client()
        sessions = sessionmaker(db.engine, expire_on_commit=False)
        jobs.attach_enqueuer(sessions, _worker_context(settings, db, connection))
        env = {"SMTP_URL": f"smtp://127.0.0.1:{smtp_port}", "HTTP_TIMEOUT": "120"}
        first = workers(private_redis.url, **env)
        with sessions() as session:  # the web tier: enqueued once this commits
            request_id = _request(session, where).id
            session.commit()
        assert hook.received.wait(30), first.text()
        [job_id] = [
            job_id
            for job_id in StartedJobRegistry(jobs.QUEUE_NAME, connection=connection).get_job_ids()
            if Job.fetch(job_id, connection=connection).func_name == jobs.PAGE_REQUEST
        ]
        first.kill()
        killed_at = time.monotonic()
        second = workers(private_redis.url, **env)

        _wait(
            f"job {job_id} to finish on the new worker",
            lambda: _status(connection, job_id) == JobStatus.FINISHED,
            90,
            every=0.5,
        )
        retried_after = time.monotonic() - killed_at
        print(f"\nSIGKILLed worker's job finished again {retried_after:.1f} s after the kill")
        assert retried_after < 90, second.text()
        job = Job.fetch(job_id, connection=connection)
        assert job.retries_left == 3  # the lost run counted as one failure, then it ran again
        assert f"Job {job_id}: scheduled for retry" in second.text()  # found abandoned
        # Idempotent: the email went out once; the webhook POST cut off mid-send was not
        # repeated (it may have arrived), and the wave completed.
        assert [e.rcpt_to for e in mail.emails] == [["ada@tutors.example.edu"]]
        assert len(hook.posts) == 1
        with db.transaction() as session:
            rows = session.scalars(
                select(PageLog).where(PageLog.request_id == request_id).order_by(PageLog.id)
            )
            assert [(r.channel, r.target, r.status) for r in rows] == [
                ("email", "ada@tutors.example.edu", "sent"),
                ("webhook", redact_url(hook_url), "sending"),
                ("wave", "done", "sent"),
            ]


def test_the_worker_times_out_on_a_hung_redis_and_recovers(
    app: Flask, private_redis: PrivateRedis, workers: Callable[..., WorkerProcess]
) -> None:
    worker = workers(private_redis.url)
    connection = private_redis.client()
    _wait(
        "the worker to register",
        lambda: connection.smembers(f"rq:workers:{jobs.QUEUE_NAME}"),
        20,
    )
    time.sleep(1)  # let it settle into its blocking dequeue
    os.kill(private_redis.process.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        _wait(
            "the worker to notice the hung Redis",
            lambda: "Redis connection timeout" in worker.text(),
            jobs.REDIS_SOCKET_TIMEOUT + 10,
        )
        noticed_after = time.monotonic() - stopped_at
        time.sleep(3)  # a few seconds more of silence
    finally:
        os.kill(private_redis.process.pid, signal.SIGCONT)
    print(f"\nworker noticed the hung Redis after {noticed_after:.1f} s")
    assert noticed_after < jobs.REDIS_SOCKET_TIMEOUT + 5
    assert worker.process.poll() is None, worker.text()

    job = Queue(jobs.QUEUE_NAME, connection=connection).enqueue(jobs.SWEEP)
    _wait(
        "a job enqueued after Redis came back to finish",
        lambda: _status(connection, job.id) == JobStatus.FINISHED,
        45,
        every=0.5,
    )
    fetched = Job.fetch(job.id, connection=connection)
    # Done by a worker the loop started after the first gave up on the hung Redis.
    assert fetched.worker_name is not None, worker.text()
    assert int(fetched.worker_name.rsplit(".", 1)[1]) >= 2, worker.text()
    assert "a new one starts in" in worker.text()


# -- the demo: inline jobs on SQLite, no Redis -------------------------------------------------


def test_demo_runs_jobs_inline_on_sqlite_and_its_sweep_escalates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIFELINE_INSTANCE_PATH", str(tmp_path / "instance"))
    settings = demo_settings("127.0.0.1", 5999)
    migrate_db = Database(settings.database_url)
    upgrade(migrate_db.engine)
    migrate_db.dispose()
    app = create_app(settings)
    db: Database = app.extensions["lifeline"].db
    context: jobs.JobContext = app.extensions["lifeline"].jobs
    try:
        assert context.inline
        with db.transaction() as session:
            platform_id = add_platform(
                session,
                name="Demo",
                issuer="https://demo.test",
                client_id="c",
                auth_login_url="https://demo.test/auth",
                auth_token_url="https://demo.test/token",
                keyset_url="https://demo.test/jwks",
                deployment_ids=["d"],
            ).id
        where = _course(db, platform_id, tutor_email="ada@tutors.example.edu")
        with db.transaction() as session:
            request_id = _request(session, where).id  # committed: wave 1 runs inline
        shown = capsys.readouterr().err
        assert (
            "To: ada@tutors.example.edu" in shown and "[Lifeline] A learner needs a tutor" in shown
        )
        with db.transaction() as session:  # six minutes later, still nobody
            request = session.get(HelpRequest, request_id)
            assert request is not None
            request.queued_at -= dt.timedelta(minutes=6)
            for event in session.scalars(select(HelpEvent)):
                event.at -= dt.timedelta(minutes=6)
        assert context.run_now(jobs.SWEEP)  # what the demo's sweeper thread does
        assert "Still waiting after 6 min" in capsys.readouterr().err
        with db.transaction() as session:
            rows = session.execute(
                select(PageLog.wave, PageLog.channel, PageLog.status).order_by(PageLog.id)
            ).all()
        assert [tuple(r) for r in rows] == [
            (1, "email", "logged"),
            (1, "wave", "sent"),
            (2, "email", "logged"),
            (2, "wave", "sent"),
        ]
    finally:
        db.dispose()
