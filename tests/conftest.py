"""Fixtures: a real PostgreSQL database (migrated with Alembic), a real Redis (flushed around
every test), the app factory, and a test LMS platform that signs real RS256 launches."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlalchemy.engine import make_url

from lti_tool import create_app, jobs
from lti_tool.config import Settings
from lti_tool.courses import recent_launches
from lti_tool.db import Database
from lti_tool.lms import endpoints as lms_endpoints
from lti_tool.migrate import upgrade
from lti_tool.models_registry import metadata
from lti_tool.web import lti as lti_views
from tests.lms_services import LmsServices, start_lms, worker_context
from tests.platform import JwksServer, TestPlatform

# Each pytest process gets its own database and (mostly) its own Redis db, so several runs on
# one machine do not trample each other.
DATABASE_URL = os.environ.get(
    "LIFELINE_TEST_DATABASE_URL",
    f"postgresql+psycopg://lifeline:lifeline@127.0.0.1:5432/lifeline_test_{os.getpid()}",
)


def _private_redis() -> str:
    """A redis-server of this test run's own, on a spare port: pub/sub channels and
    FLUSHDB of concurrent runs on one machine can then never meet."""
    binary = shutil.which("redis-server")
    if binary is None:  # fall back to the machine's Redis (ensure-services starts it)
        return f"redis://127.0.0.1:6379/{8 + os.getpid() % 8}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="lifeline-test-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--logfile",
            os.path.join(workdir, "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(_stop, process, workdir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return f"redis://127.0.0.1:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the test run's redis-server did not start")


def _stop(process: subprocess.Popen[bytes], workdir: str) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
    shutil.rmtree(workdir, ignore_errors=True)


REDIS_URL = os.environ.get("LIFELINE_TEST_REDIS_URL") or _private_redis()
BASE_URL = "https://lifeline.test"


def _recreate_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(database="postgres").set(drivername="postgresql")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{parsed.database}"')


def _drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = parsed.set(database="postgres").set(drivername="postgresql")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database() -> Iterator[Database]:
    _recreate_database(DATABASE_URL)
    db = Database(DATABASE_URL)
    upgrade(db.engine)
    yield db
    db.dispose()
    _drop_database(DATABASE_URL)


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _truncate(db: Database) -> None:
    tables = ", ".join(t.name for t in metadata().sorted_tables)
    with db.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def settings(tmp_path: object) -> Settings:
    return Settings(
        database_url=DATABASE_URL,
        redis_url=REDIS_URL,
        secret_key="test-secret-key-" + "x" * 32,
        base_url=BASE_URL,
        jobs_inline=True,
        # Ingestion stores inside the request, so a test sees rows right after its POST; the
        # stream pipeline has its own tests (test_ingest_pipeline.py) with a real consumer.
        ingest_mode="sync",
        # One stream partition: the pipeline tests drive partition 0's consumer; partitioned
        # streams are tested on their own (test_ingest_partitions.py).
        ingest_partitions=1,
        instance_path=str(tmp_path),
        testing=True,
    )


@pytest.fixture
def app(database: Database, redis_client: redis.Redis, settings: Settings) -> Iterator[Flask]:
    _truncate(database)
    recent_launches.clear()
    lms_endpoints.recent.clear()
    lti_views._last_noted.clear()
    application = create_app(settings)
    yield application
    application.extensions["lifeline"].hub.stop()
    application.extensions["lifeline"].db.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def platform(app: Flask, jwks_server: JwksServer) -> TestPlatform:
    lms = TestPlatform(jwks_server)
    lms.register(app)
    return lms


# -- LMS services (NRPS, AGS, tokens): a fake LMS on 127.0.0.1 and an RQ worker's context -----


@pytest.fixture
def lms(app: Flask) -> Iterator[LmsServices]:
    server = start_lms(app)
    yield server
    server.stop()


@pytest.fixture
def worker(app: Flask, settings: Settings, redis_client: redis.Redis) -> jobs.JobContext:
    return worker_context(settings, app.extensions["lifeline"].db, redis_client)
