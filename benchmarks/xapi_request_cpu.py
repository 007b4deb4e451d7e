"""CPU per single-statement xAPI request, in process: the WSGI app called directly with
pre-built environs (no server, no client), time.process_time over --requests requests,
median of --repeats rounds, alternating the apps round by round.

  (a) reference: a bare Flask app whose one view does one Redis INCR (as benchmarks/ingest.py)
  (b) Lifeline, the xAPI fast path off (every request through Flask)
  (c) Lifeline, the xAPI fast path on (``lti_tool/web/fastpath.py``)

It creates its own PostgreSQL database (dropped at the end) and starts its own redis-server on
a spare port (AOF as in production), sets up one course with a Basic credential and runs
``POST /xapi/statements`` of one new statement per request, stream mode. Nothing consumes the
stream: the redis-server is flushed between rounds.

    .venv/bin/python benchmarks/xapi_request_cpu.py [--requests 3000] [--repeats 5]
"""

from __future__ import annotations

import os
import sys

sys.path[:] = [  # this folder holds a queue.py: keep it off the path (as benchmarks/ingest.py)
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
import redis  # noqa: E402
from werkzeug.test import EnvironBuilder  # noqa: E402

PG_ADMIN = os.environ.get(
    "LIFELINE_BENCH_PG_ADMIN", "postgresql://lifeline:lifeline@127.0.0.1:5432/postgres"
)
DB_NAME = "lifeline_bench_xapi_cpu"
LMS = "https://lms.cpu-bench.example"
ADL = "http://adlnet.gov/expapi/verbs/"
CREDENTIALS = 20

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Any]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="lifeline-cpu-bench-redis-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--dir", workdir]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        url = f"redis://127.0.0.1:{port}/0"
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=1).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def database() -> Iterator[str]:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    base = PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0]
    try:
        yield f"{base}/{DB_NAME}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def lifeline_app(database_url: str, redis_url: str, fast_path: bool) -> tuple[Any, list[str]]:
    """The app (stream mode) and the Authorization headers of credentials of its course
    (several, as forwarders would: one credential may send 600 requests a minute)."""
    from lti_tool import create_app
    from lti_tool.activity import credentials
    from lti_tool.config import Settings
    from lti_tool.courses import Course, Exercise, Person
    from lti_tool.lti.registry import add_platform

    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        secret_key="cpu-bench-secret-key-" + "x" * 32,
        base_url="https://lifeline.cpu-bench.example",
        ingest_mode="stream",
        instance_path=tempfile.gettempdir(),
        xapi_fast_path=fast_path,
    )
    app = create_app(settings)
    db = app.extensions["lifeline"].db
    with db.transaction() as session:
        course = session.query(Course).filter_by(context_id="cpu").one_or_none()
        if course is None:
            lms = add_platform(
                session,
                name="CPU bench LMS",
                issuer=LMS,
                client_id="cpu-bench",
                auth_login_url=LMS + "/auth",
                auth_token_url=LMS + "/token",
                keyset_url=LMS + "/jwks.json",
                deployment_ids=["bench"],
            )
            session.flush()
            course = Course(platform_id=lms.id, deployment_id="bench", context_id="cpu", title="C")
            session.add(course)
            session.flush()
            session.add(Exercise(course_id=course.id, resource_link_id="link-0", title="Ex 0"))
            session.add(Person(platform_id=lms.id, sub="learner-0", name="L", email="l@x.example"))
        auths = []
        for i in range(CREDENTIALS):
            made = credentials.create(session, course, f"cpu bench {fast_path} {i}")
            token = f"{made.credential.key}:{made.secret}".encode()
            auths.append("Basic " + base64.b64encode(token).decode())
    return app, auths


def reference_app(redis_url: str) -> Any:
    from flask import Flask

    app = Flask("reference")
    client = redis.Redis.from_url(redis_url)

    @app.get("/")
    def hit() -> str:
        return str(client.incr("bench:reference"))  # one round trip

    return app


def statement_body() -> bytes:
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps(
        {
            "id": str(uuid.uuid4()),
            "actor": {"objectType": "Agent", "account": {"homePage": LMS, "name": "learner-0"}},
            "verb": {"id": ADL + "answered", "display": {"en-US": "answered"}},
            "object": {"objectType": "Activity", "id": f"{LMS}/activity/link-0"},
            "result": {"success": False, "response": "print(x)"},
            "timestamp": stamp,
        }
    ).encode()


def environs(n: int, auths: list[str] | None) -> list[dict[str, Any]]:
    if auths is None:
        base = EnvironBuilder(path="/", method="GET").get_environ()
        return [dict(base) for _ in range(n)]
    out = []
    for i in range(n):
        headers = {"Authorization": auths[i % len(auths)], "X-Experience-API-Version": "1.0.3"}
        body = statement_body()
        environ = EnvironBuilder(
            path="/xapi/statements",
            method="POST",
            headers=headers,
            data=body,
            content_type="application/json",
        ).get_environ()
        environ["wsgi.input"] = io.BytesIO(body)
        out.append(environ)
    return out


def run_round(app: WsgiApp, prepared: list[dict[str, Any]], expect: str) -> float:
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return None

    started = time.process_time()
    for environ in prepared:
        result = app(environ, start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    spent = time.process_time() - started
    bad = [s for s in statuses if not s.startswith(expect)]
    if bad:
        raise SystemExit(f"unexpected answers: {bad[:3]} ({len(bad)} of {len(statuses)})")
    return spent / len(prepared) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["a", "b", "c"], action="append")
    args = parser.parse_args()
    wanted = args.only or ["a", "b", "c"]
    with database() as database_url, redis_server() as redis_url:
        from sqlalchemy import create_engine

        from lti_tool.migrate import upgrade

        engine = create_engine(database_url)
        upgrade(engine)
        engine.dispose()
        apps: dict[str, tuple[WsgiApp, list[str] | None, str]] = {}
        if "a" in wanted:
            apps["a"] = (reference_app(redis_url).wsgi_app, None, "200")
        if "b" in wanted:
            app, auth = lifeline_app(database_url, redis_url, fast_path=False)
            apps["b"] = (app.wsgi_app, auth, "200")
        if "c" in wanted:
            app, auth = lifeline_app(database_url, redis_url, fast_path=True)
            apps["c"] = (app.wsgi_app, auth, "200")
        flush = redis.Redis.from_url(redis_url)
        results: dict[str, list[float]] = {k: [] for k in apps}
        for wsgi, auth, expect in apps.values():  # warm up: caches, connections, imports
            run_round(wsgi, environs(200, auth), expect)
        for _ in range(args.repeats):
            for name, (wsgi, auth, expect) in apps.items():
                prepared = environs(args.requests, auth)
                flush.flushdb()
                results[name].append(run_round(wsgi, prepared, expect))
        labels = {
            "a": "(a) reference: bare Flask + 1 Redis INCR",
            "b": "(b) Lifeline, xAPI fast path off",
            "c": "(c) Lifeline, xAPI fast path on",
        }
        reference = statistics.median(results["a"]) if "a" in results else None
        for name, values in results.items():
            med = statistics.median(values)
            ratio = f"  = {med / reference:.2f}x (a)" if reference else ""
            runs = " / ".join(f"{v:.0f}" for v in values)
            print(f"{labels[name]}: {med:.0f} µs CPU per request (runs {runs}){ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
