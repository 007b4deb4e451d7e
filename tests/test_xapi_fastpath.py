"""The xAPI fast path (``web/fastpath.py``): the ordinary successful POST / PUT of statements
answered outside Flask, in stream mode, against the real PostgreSQL and Redis.

Every answer it gives must be the one Flask gives (status, headers in order, body bytes): each
request is sent to the app (fast path on) and, with Redis emptied in between, to a second app
on the same database and Redis with the fast path off. Everything else (refusals, a credential
not in the cache, Redis down) must reach Flask, with the body it read put back."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from lti_tool import create_app
from lti_tool.activity import credentials, ingest, pipeline
from lti_tool.config import Settings
from lti_tool.detection.models import DetectionExerciseState
from lti_tool.web import SECURITY_HEADERS
from lti_tool.web.fastpath import XapiFastPath
from tests.activity_helpers import XAPI, Course_, basic, make_course, raw_events, records, statement
from tests.test_ingest_pipeline import RedisServer, course_on_own_redis, own_redis  # noqa: F401
from tests.test_streams import free_port

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
LINK1 = "https://lms.example.edu/activity/link-1"
LINK2 = "https://lms.example.edu/activity/link-2"

Answer = tuple[int, list[tuple[str, str]], bytes]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(ingest_mode="stream")


@pytest.fixture
def course(app: Flask, platform: Any, monkeypatch: pytest.MonkeyPatch) -> Course_:
    """The course, its credential in this process's cache (as after a forwarder's first
    request), kept there for the whole test."""
    monkeypatch.setattr(credentials, "CACHE_SECONDS", 600.0)
    made = make_course(app, platform)
    warm = send(app, "POST", "/xapi/statements", [statement("bob", LINK2)], made.xapi())
    assert warm[0] == 200
    return made


@pytest.fixture
def flask_only(app: Flask, settings: Settings) -> Iterator[Flask]:
    """The same app with the fast path switched off (``LIFELINE_XAPI_FAST_PATH=false``)."""
    other = create_app(settings.with_overrides(xapi_fast_path=False))
    yield other
    other.extensions["lifeline"].hub.stop()
    other.extensions["lifeline"].db.dispose()


def fast(app: Flask) -> XapiFastPath:
    wrapper = app.wsgi_app
    assert isinstance(wrapper, XapiFastPath)
    return wrapper


def send(
    app: Flask,
    method: str,
    url: str,
    body: Any,
    headers: dict[str, str],
    content_type: str = "application/json",
) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = app.test_client().open(
        url, method=method, data=data, headers=headers, content_type=content_type
    )
    return response.status_code, list(response.headers.items()), response.get_data()


def both(
    app: Flask, flask_only: Flask, requests: list[tuple[str, str, Any, dict[str, str]]]
) -> tuple[list[Answer], list[Answer]]:
    """The requests sent in order to the fast app, Redis emptied, then to the Flask-only app:
    the answers of each."""
    client = app.extensions["lifeline"].redis
    client.flushdb()
    fast_answers = [send(app, *r) for r in requests]
    client.flushdb()
    flask_answers = [send(flask_only, *r) for r in requests]
    return fast_answers, flask_answers


def put_url(stmt: dict[str, Any]) -> str:
    return f"/xapi/statements?statementId={stmt['id']}"


# -- the same answers -------------------------------------------------------------------------


def test_the_fast_path_is_on_in_stream_mode_and_can_be_switched_off(
    app: Flask, flask_only: Flask, settings: Settings
) -> None:
    assert isinstance(app.wsgi_app, XapiFastPath)
    assert not isinstance(flask_only.wsgi_app, XapiFastPath)
    sync = create_app(settings.with_overrides(ingest_mode="sync"))
    try:
        assert not isinstance(sync.wsgi_app, XapiFastPath)  # it stores in the request: Flask
    finally:
        sync.extensions["lifeline"].hub.stop()
        sync.extensions["lifeline"].db.dispose()


def test_single_post_put_and_batch_are_answered_as_flask_answers_them(
    app: Flask, flask_only: Flask, course: Course_
) -> None:
    headers = course.xapi()
    single = statement("alice", LINK1, success=False)
    unnamed = statement("bob", LINK2, success=True, statement_id=None)  # the answer has its id
    del unnamed["timestamp"]
    put_stmt = statement("bob", LINK1, "passed")
    batch = [
        statement("alice", LINK2, success=True),
        statement("alice", LINK2, "experienced"),  # ignored: not an attempt
        {"verb": "nonsense"},  # invalid, kept with its reason
    ]
    requests = [
        ("POST", "/xapi/statements", single, headers),
        ("PUT", put_url(put_stmt), put_stmt, headers),
        ("POST", "/xapi/statements", batch, headers),
        ("POST", "/xapi/statements?detail=1", [statement("bob", LINK1)], headers),
        ("POST", "/xapi/statements?detail=TRUE", [statement("bob", LINK2)], headers),
    ]
    before = fast(app).handled
    fast_answers, flask_answers = both(app, flask_only, requests)
    assert fast(app).handled == before + len(requests)  # every one answered outside Flask
    assert fast_answers == flask_answers
    assert [a[0] for a in fast_answers] == [200, 204, 200, 200, 200]
    _, headers_out, body = fast_answers[0]
    assert json.loads(body) == [single["id"]]
    assert headers_out[:2] == [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    names = [name for name, _ in headers_out]
    assert ("X-Experience-API-Version", "1.0.3") in headers_out
    assert ("Cache-Control", "no-store") in headers_out
    assert names[-len(SECURITY_HEADERS) :] == [name for name, _ in SECURITY_HEADERS]
    assert "Set-Cookie" not in names
    assert dict(fast_answers[1][1])["X-Lifeline-Counts"] == "queued=1"
    assert dict(fast_answers[2][1])["X-Lifeline-Counts"] == "ignored=1, invalid=1, queued=1"
    detail = json.loads(fast_answers[3][2])
    assert detail["counts"] == {"queued": 1} and set(detail) == {"ids", "results", "counts"}
    # The POST without an id: a new UUID each time, so only the shape can agree.
    fast_new = send(app, "POST", "/xapi/statements", unnamed, headers)
    flask_new = send(flask_only, "POST", "/xapi/statements", unnamed, headers)
    assert fast_new[0] == flask_new[0] == 200
    assert [n for n, _ in fast_new[1]] == [n for n, _ in flask_new[1]]
    assert len(json.loads(fast_new[2])[0]) == 36


def test_duplicates_and_conflicts_are_answered_as_flask_answers_them(
    app: Flask, flask_only: Flask, course: Course_
) -> None:
    headers = course.xapi()
    first = statement("alice", LINK1, success=False)
    other = {**statement("alice", LINK1, success=True), "id": first["id"]}
    requests = [
        ("PUT", put_url(first), first, headers),
        ("PUT", put_url(first), first, headers),  # the same again: duplicate, 204
        ("POST", "/xapi/statements", first, headers),  # duplicate, 200
        ("PUT", put_url(other), other, headers),  # another statement under its id: 409
        ("POST", "/xapi/statements", other, headers),  # 409
        ("POST", "/xapi/statements?detail=1", [first, other], headers),  # a batch keeps both
    ]
    before = fast(app).handled
    fast_answers, flask_answers = both(app, flask_only, requests)
    assert fast_answers == flask_answers
    assert fast(app).handled == before + len(requests)
    assert [a[0] for a in fast_answers] == [204, 204, 200, 409, 409, 200]
    assert dict(fast_answers[1][1])["X-Lifeline-Counts"] == "duplicate=1"
    conflict = json.loads(fast_answers[3][2])
    assert (conflict["error"], conflict["status"], conflict["field"]) == ("conflict", 409, "id")
    assert json.loads(fast_answers[5][2])["counts"] == {"conflict": 1, "duplicate": 1}
    assert int(app.extensions["lifeline"].redis.xlen(pipeline.STREAM)) == 2  # first; batch


def test_over_the_rate_limit_is_the_same_429(
    app: Flask, flask_only: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(per_credential_per_minute=1))
    headers = course.xapi()
    stmt = statement("alice", LINK1, success=False)
    requests = [
        ("POST", "/xapi/statements", [statement("bob", LINK1)], headers),
        ("PUT", put_url(stmt), stmt, headers),
    ]
    before = fast(app).handled
    fast_answers, flask_answers = both(app, flask_only, requests)
    assert fast(app).handled == before + 2
    assert [a[0] for a in fast_answers] == [200, 429]

    def without_retry_after(answer: Answer) -> tuple[Any, ...]:
        return answer[0], [h for h in answer[1] if h[0] != "Retry-After"], answer[2]

    assert without_retry_after(fast_answers[1]) == without_retry_after(flask_answers[1])
    fast_wait = int(dict(fast_answers[1][1])["Retry-After"])
    flask_wait = int(dict(flask_answers[1][1])["Retry-After"])
    assert 1 <= fast_wait <= 60 and abs(fast_wait - flask_wait) <= 1  # seconds to the minute
    refused = json.loads(fast_answers[1][2])
    assert refused["error"] == "rate_limited" and "More than 1 requests" in refused["detail"]
    assert [n for n, _ in fast_answers[1][1]].index("Retry-After") == 2  # after the body's


# -- everything else goes to Flask ----------------------------------------------------------------


def test_refusals_reach_flask_with_its_exact_answers(
    app: Flask, flask_only: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = statement("alice", LINK1, success=False)
    invalid = statement("alice", LINK1, success=False)
    invalid["result"]["score"] = {"scaled": 3}
    wrong_secret = basic(course.key, "not-the-secret")
    cases: list[tuple[str, str, Any, dict[str, str]]] = [
        ("POST", "/xapi/statements", good, XAPI),  # no credentials
        ("POST", "/xapi/statements", good, {**XAPI, **wrong_secret}),
        ("POST", "/xapi/statements", good, {**XAPI, "Authorization": "Basic !!!"}),
        ("POST", "/xapi/statements", good, {**XAPI, "Authorization": "Bearer x"}),
        ("POST", "/xapi/statements", good, course.auth()),  # no version header
        ("POST", "/xapi/statements", good, course.auth(**{"X-Experience-API-Version": "0.95"})),
        ("POST", "/xapi/statements", b"{not json", course.xapi()),
        ("POST", "/xapi/statements", b"   ", course.xapi()),
        ("POST", "/xapi/statements", b'"a string"', course.xapi()),
        ("POST", "/xapi/statements", invalid, course.xapi()),
        ("PUT", put_url(invalid), invalid, course.xapi()),
        ("PUT", "/xapi/statements", good, course.xapi()),  # no statementId
        ("PUT", put_url(statement()), good, course.xapi()),  # statementId disagrees
        ("PUT", "/xapi/statements?statementId=nope", good, course.xapi()),
        ("PUT", put_url(good), [good], course.xapi()),
        ("POST", "/xapi/statements?method=PUT", good, course.xapi()),
        ("POST", "/xapi/statements?detail=1&x=2", [good], course.xapi()),
        ("POST", "/xapi/statements", [good] * 501, course.xapi()),
    ]
    before = fast(app).handled
    fast_answers, flask_answers = both(app, flask_only, cases)
    assert fast(app).handled == before  # not one of them answered by the fast path
    for case, fast_answer, flask_answer in zip(cases, fast_answers, flask_answers, strict=True):
        assert fast_answer == flask_answer, case[:2]
    # The last but one is a valid batch with a query parameter the fast path does not know.
    assert [a[0] for a in fast_answers] == [401] * 4 + [400] * 12 + [200, 413]
    assert json.loads(fast_answers[9][2])["field"] == "result.score.scaled"  # body put back
    assert json.loads(fast_answers[6][2])["field"] == "body"

    # Attachments (multipart) and bodies over the limit.
    multipart = ("POST", "/xapi/statements", b"--x\r\n\r\n--x--", course.xapi())
    fast_multi = send(app, *multipart, content_type="multipart/mixed; boundary=x")
    flask_multi = send(flask_only, *multipart, content_type="multipart/mixed; boundary=x")
    assert fast_multi == flask_multi and fast_multi[0] == 415
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(max_body=2000))
    large = [statement("alice", LINK1, result={"response": "x" * 3000})]
    fast_large = send(app, "POST", "/xapi/statements", large, course.xapi())
    flask_large = send(flask_only, "POST", "/xapi/statements", large, course.xapi())
    assert fast_large == flask_large and fast_large[0] == 413
    options = ("OPTIONS", "/xapi/statements", b"", course.xapi())
    assert send(app, *options) == send(flask_only, *options)
    assert fast(app).handled == before


def test_a_credential_not_in_the_cache_is_looked_up_by_flask_then_served_fast(
    app: Flask, course: Course_
) -> None:
    credentials._cache.clear()
    before = fast(app).handled
    first = send(app, "POST", "/xapi/statements", statement("alice", LINK1), course.xapi())
    assert first[0] == 200 and fast(app).handled == before  # Flask read the database
    second = send(app, "POST", "/xapi/statements", statement("bob", LINK1), course.xapi())
    assert second[0] == 200 and fast(app).handled == before + 1  # cached by Flask's lookup


def test_a_body_read_by_the_fast_path_is_put_back_for_flask(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = pipeline.accept

    def first_call_fails(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # the fast path's attempt; Flask's own goes through
            raise redis.ConnectionError("Redis went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "accept", first_call_fails)
    stmt = statement("alice", LINK1, success=False)
    before = fast(app).handled
    status, _, body = send(app, "PUT", put_url(stmt), stmt, course.xapi())
    assert status == 204 and body == b""
    assert calls["n"] == 2 and fast(app).handled == before  # Flask answered, with the body
    fields = app.extensions["lifeline"].redis.xrange(pipeline.STREAM)[-1][1]
    assert stmt["id"] in fields[b"d"].decode()  # the statement Flask parsed was the one sent

    # A body shorter than its Content-Length (the client went away): Flask answers as always.
    sent = json.dumps(statement()).encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/xapi/statements",
        "CONTENT_LENGTH": "5000",
        "CONTENT_TYPE": "application/json",
        "HTTP_X_EXPERIENCE_API_VERSION": "1.0.3",
        "HTTP_AUTHORIZATION": course.auth()["Authorization"],
        "wsgi.input": io.BytesIO(sent),
    }
    handed: list[dict[str, Any]] = []

    def next_app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        handed.append(env)
        return [b""]

    wrapper = XapiFastPath(app, next_app, app.extensions["lifeline"])
    wrapper(environ, lambda *a: None)
    assert len(handed) == 1 and wrapper.handled == 0
    assert handed[0]["CONTENT_LENGTH"] == "5000"  # Werkzeug then sees the short body
    assert handed[0]["wsgi.input"].read() == sent


def test_statements_accepted_fast_are_stored_and_evaluated_by_the_consumer(
    app: Flask, course: Course_
) -> None:
    alice = statement("alice", LINK1, success=False)
    bob = statement("bob", LINK1, success=True)
    before = fast(app).handled
    assert send(app, "PUT", put_url(alice), alice, course.xapi())[0] == 204
    assert send(app, "POST", "/xapi/statements", bob, course.xapi())[0] == 200
    assert fast(app).handled == before + 2
    assert records(app) == []  # accepted into the stream, not stored yet
    services = app.extensions["lifeline"]
    assert pipeline.Consumer(services.db, services.redis).drain() >= 2
    stored = {r.learner_id: r for r in records(app)}
    assert stored[course.people["alice"]].correct is False
    assert stored[course.people["bob"]].correct is True
    raws = {r.external_id: r for r in raw_events(app)}
    assert json.loads(raws[alice["id"]].body) == alice
    with services.db.transaction() as session:  # evaluated: the engine's state rows exist
        evaluated = session.scalar(
            select(func.count())
            .select_from(DetectionExerciseState)
            .where(DetectionExerciseState.exercise_id == course.exercises["link-1"])
        )
        assert evaluated == 2  # alice's and bob's on link-1


# -- Redis down ----------------------------------------------------------------------------------


def test_with_redis_down_statements_are_stored_in_the_request(
    database: Any,
    own_redis: RedisServer,  # noqa: F811 - the fixture of test_ingest_pipeline
    settings: Settings,
    jwks_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with course_on_own_redis(database, own_redis, settings, jwks_server) as (app, course):
        monkeypatch.setattr(credentials, "CACHE_SECONDS", 600.0)
        warm = [statement("bob", LINK2, success=True) for _ in range(2)]
        for stmt in warm:  # Flask looks the credential up, then it is served fast
            assert send(app, "PUT", put_url(stmt), stmt, course.xapi())[0] == 204
        assert fast(app).handled == 1
        assert own_redis.process is not None
        own_redis.process.kill()  # Redis is gone, not restarted
        own_redis.process.wait(timeout=10)

        stmt = statement("alice", LINK1, success=False)
        status, headers, body = send(app, "PUT", put_url(stmt), stmt, course.xapi())
        assert status == 204, body
        assert dict(headers)["X-Lifeline-Counts"] == "accepted=1"  # stored, not queued
        single = statement("bob", LINK1, success=True)
        status, _, body = send(app, "POST", "/xapi/statements", single, course.xapi())
        assert status == 200 and json.loads(body) == [single["id"]]
        assert fast(app).handled == 1  # both fell through to Flask
        stored = {r.external_id for r in raw_events(app)}
        assert {stmt["id"], single["id"]} <= stored
        assert not stored & {w["id"] for w in warm}  # those are in the stream


def test_basic_credentials_are_read_as_flask_reads_them(app: Flask, course: Course_) -> None:
    wrapper = fast(app)
    token = base64.b64encode(f"{course.key}:{course.secret}".encode()).decode()
    assert wrapper._credential(f"Basic {token}") is not None
    assert wrapper._credential(f"basic   {token}\t") is not None  # as Werkzeug strips it
    assert wrapper._credential(f"Basic {token[:-2]}") is None  # not strict base64
    assert wrapper._credential(f"Bearer {token}") is None
    assert wrapper._credential(None) is None


def test_the_switch_is_a_setting() -> None:
    from lti_tool.config import settings_from_env

    env = {
        "LIFELINE_DATABASE_URL": "postgresql://u:p@127.0.0.1/db",
        "LIFELINE_REDIS_URL": "redis://127.0.0.1:6379/0",
        "LIFELINE_SECRET_KEY": "k" * 40,
        "LIFELINE_BASE_URL": "https://lifeline.example.edu",
    }
    assert settings_from_env(env).xapi_fast_path is True
    assert settings_from_env({**env, "LIFELINE_XAPI_FAST_PATH": "0"}).xapi_fast_path is False
    assert settings_from_env({**env, "LIFELINE_XAPI_FAST_PATH": "false"}).xapi_fast_path is False


# -- under gunicorn, over real sockets -----------------------------------------------------------


def _exchange(sock: socket.socket, request: bytes, chunks: int = 1) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request on a keep-alive connection (in ``chunks`` TCP writes, with
    pauses, as a slow client does) and read its response."""
    step = max(1, len(request) // chunks)
    for start in range(0, len(request), step):
        sock.sendall(request[start : start + step])
        if chunks > 1:
            time.sleep(0.05)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)content-length: *(\d+)", head)
    length = int(found.group(1)) if found else 0  # (a 204 has no body and no length)
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), body


def _request(method: str, url: str, body: bytes, course: Course_) -> bytes:
    headers = {**course.xapi(), "Content-Type": "application/json", "Host": "127.0.0.1"}
    lines = [f"{method} {url} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_lifeline_serve_answers_through_the_fast_path_over_real_sockets(
    app: Flask, course: Course_, tmp_path: Path
) -> None:
    """gunicorn's gevent worker, keep-alive, a body that arrives in pieces, a refusal after the
    fast path read the body: the same answers as in process, and the statements queued."""
    svc = app.extensions["lifeline"]
    settings = svc.settings
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        LIFELINE_DATABASE_URL=settings.database_url,
        LIFELINE_REDIS_URL=settings.redis_url,
        LIFELINE_SECRET_KEY=settings.secret_key,
        LIFELINE_BASE_URL=f"http://127.0.0.1:{port}",
        LIFELINE_INSTANCE_PATH=str(tmp_path),
        LIFELINE_INGEST_MODE="stream",
        LIFELINE_INGEST_PARTITIONS="1",
    )
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [LIFELINE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline, "lifeline serve did not start"
                time.sleep(0.1)
        with sock:
            stmts = [statement("alice", LINK1, success=False) for _ in range(3)]
            put = [
                _request(
                    "PUT", f"/xapi/statements?statementId={s['id']}", json.dumps(s).encode(), course
                )
                for s in stmts
            ]
            assert _exchange(sock, put[0]) == (204, b"")  # Flask: the credential is looked up
            assert _exchange(sock, put[1], chunks=4) == (204, b"")  # fast path, body in pieces
            assert _exchange(sock, put[1]) == (204, b"")  # a repeat: duplicate
            single = statement("bob", LINK1, success=True)
            status, body = _exchange(
                sock, _request("POST", "/xapi/statements", json.dumps(single).encode(), course)
            )
            assert (status, json.loads(body)) == (200, [single["id"]])
            status, body = _exchange(
                sock, _request("POST", "/xapi/statements", b'{"actor": ', course), chunks=2
            )
            assert status == 400 and json.loads(body)["field"] == "body"  # Flask's answer
            status, body = _exchange(sock, put[2])
            assert status == 204  # the connection is still in step after the refusal
        queued = [json.loads(f[b"d"])["i"][0][1] for _, f in svc.redis.xrange(pipeline.STREAM)]
        # After the fixture's warm-up: each new statement once (the repeat was not queued).
        assert queued[-4:] == [stmts[0]["id"], stmts[1]["id"], single["id"], stmts[2]["id"]]
        assert len(queued) == 5
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(timeout=30)
        log.close()
