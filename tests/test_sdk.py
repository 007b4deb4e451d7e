"""The page SDK: tokens from the learner's launch, POST /api/activity/sdk with a bearer token
(CORS for any origin, no cookies), and ``/static/lifeline.js`` driven by a real Chromium on
another origin against a real server (batching, retry, sendBeacon on leaving the page)."""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from flask import Flask
from itsdangerous.timed import TimestampSigner
from playwright.sync_api import Page, Route, sync_playwright
from werkzeug.serving import make_server

from lti_tool.activity import credentials, ingest
from lti_tool.activity.credentials import SdkIdentity
from tests.activity_helpers import Course_, make_course, raw_events, records
from tests.browser import free_port, launch_chromium
from tests.helpers import Actor

URL = "/api/activity/sdk"
SECRET = "test-secret-key-" + "x" * 32  # conftest's settings


@pytest.fixture
def course(app: Flask, platform: Any) -> Course_:
    return make_course(app, platform)


def token_of(actor: Actor) -> str:
    page = actor.client.get(f"/app/{actor.launch_id}").get_data(as_text=True)
    match = re.search(r'data-sdk-token="([^"]*)"', page)
    assert match, "no data-sdk-token on the landing page"
    return match.group(1)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + token}


def event(kind: str = "run", **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "kind": kind, **fields}


def send(course: Course_, token: str, body: Any, **headers: str) -> Any:
    return course.client.post(URL, json=body, headers={**bearer(token), **headers})


def test_the_learner_page_carries_a_token_for_that_learner_and_exercise(
    app: Flask, course: Course_
) -> None:
    alice = course.learners["alice"]  # her last launch was into link-2
    token = token_of(alice)
    identity = credentials.read_sdk_token(SECRET, token)
    assert identity == SdkIdentity(
        course.platform_id, course.course_id, course.people["alice"], course.exercises["link-2"]
    )
    # Instructors get none (the SDK is for learners' exercise pages).
    instructor_page = course.instructor.client.get(f"/app/{course.instructor.launch_id}")
    assert "data-sdk-token" not in instructor_page.get_data(as_text=True)

    now = dt.datetime.now(dt.UTC)
    batch = [
        event("run", at=(now - dt.timedelta(seconds=50)).isoformat()),
        event("compile_error", error={"type": "SyntaxError", "message": "invalid syntax"}),
        event("runtime_error", error="NameError", code_length=42),
        event("submit", correct=False, score=0.25),
        event("submit", correct=True, score=1),
        event("hint"),
        event("stuck"),
    ]
    response = send(course, token, {"events": batch})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["counts"] == {"accepted": 7}
    assert [r["id"] for r in response.get_json()["results"]] == [e["id"] for e in batch]
    got = records(app)
    assert [(r.kind, r.correct, r.score, r.error, r.code_length) for r in got] == [
        ("run", None, None, None, None),
        ("compile_error", None, None, "SyntaxError", None),
        ("runtime_error", None, None, "NameError", 42),
        ("submit", False, 0.25, None, None),
        ("submit", True, 1.0, None, None),
        ("hint", None, None, None, None),
        ("stuck", None, None, None, None),
    ]
    assert {(r.learner_id, r.exercise_id, r.source) for r in got} == {
        (course.people["alice"], course.exercises["link-2"], "sdk")
    }
    assert abs((got[0].occurred_at - (now - dt.timedelta(seconds=50))).total_seconds()) < 1


def test_the_page_clock_is_corrected_by_sent_at(app: Flask, course: Course_) -> None:
    token = token_of(course.learners["bob"])
    now = dt.datetime.now(dt.UTC)
    page_clock = now - dt.timedelta(hours=3)  # the learner's laptop is three hours behind
    body = {
        "sent_at": page_clock.isoformat(),
        "events": [event("run", at=(page_clock - dt.timedelta(seconds=30)).isoformat())],
    }
    assert send(course, token, body).status_code == 200
    [record] = records(app)
    assert abs((record.occurred_at - (now - dt.timedelta(seconds=30))).total_seconds()) < 5
    bad = send(course, token, {"sent_at": "soon", "events": []})
    assert bad.status_code == 400
    assert bad.get_json()["field"] == "sent_at"


def test_retries_are_idempotent_and_reused_ids_conflict(app: Flask, course: Course_) -> None:
    token = token_of(course.learners["alice"])
    batch = [event("run"), event("submit", correct=False)]
    assert send(course, token, {"events": batch}).get_json()["counts"] == {"accepted": 2}
    again = send(course, token, {"events": batch}).get_json()
    assert again["counts"] == {"duplicate": 2}
    reused = {**batch[0], "kind": "stuck"}
    mixed = send(course, token, {"events": [reused, event("hint")]}).get_json()
    assert [r["status"] for r in mixed["results"]] == ["conflict", "accepted"]
    single = send(course, token, reused)
    assert single.status_code == 409
    assert [r.kind for r in records(app)] == ["run", "submit", "hint"]
    # Event ids are per learner: bob may use alice's.
    bob = token_of(course.learners["bob"])
    assert send(course, bob, {"events": [reused]}).get_json()["counts"] == {"accepted": 1}


INVALID_EVENTS = [
    ({"kind": "jump"}, "kind"),
    ({"id": "x", "kind": None}, "kind"),
    ({"kind": "submit", "score": 2}, "score"),
    ({"kind": "submit", "score": "1"}, "score"),
    ({"kind": "submit", "correct": "yes"}, "correct"),
    ({"kind": "run", "at": "now"}, "at"),
    ({"kind": "run", "at": "2999-01-01T00:00:00Z"}, "at"),
    ({"kind": "runtime_error", "error": 42}, "error"),
    ({"kind": "runtime_error", "error": {"type": "x" * 300}}, "error.type"),
    ({"kind": "runtime_error", "error": {"type": "E", "stack": "..."}}, "error.stack"),
    ({"kind": "run", "code_length": -1}, "code_length"),
    ({"kind": "run", "code_length": 1.5}, "code_length"),
    ({"kind": "run", "id": "has spaces"}, "id"),
    ({"kind": "run", "learner": 7}, "learner"),
    ("run", "event"),
]


def test_invalid_events_name_the_field(app: Flask, course: Course_) -> None:
    token = token_of(course.learners["alice"])
    batch = [e for e, _ in INVALID_EVENTS]
    response = send(course, token, {"events": [*batch, event("run")]})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [(r["status"], r.get("field")) for r in results] == [
        *[("invalid", field) for _, field in INVALID_EVENTS],
        ("accepted", None),
    ]
    assert len(records(app)) == 1
    for bad, field in INVALID_EVENTS[:-1]:
        single = send(course, token, bad)
        assert single.status_code == 400, bad
        assert single.get_json()["field"] == field
    not_list = send(course, token, {"events": {"kind": "run"}})
    assert not_list.get_json()["field"] == "events"


def test_expired_forged_and_missing_tokens_are_401(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = course.learners["alice"]
    identity = credentials.read_sdk_token(SECRET, token_of(alice))
    with monkeypatch.context() as patched:
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 7300)
        expired = credentials.issue_sdk_token(SECRET, identity)
    response = send(course, expired, [event()])
    assert response.status_code == 401
    assert "expired" in response.get_json()["detail"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "WWW-Authenticate" not in response.headers

    good = token_of(alice)
    payload, _, signature = good.rpartition(".")
    # (not the last character: its low bits are base64 padding and may decode the same)
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    other_secret = credentials.issue_sdk_token("another-secret-" + "y" * 32, identity)
    forged_identity = SdkIdentity(
        identity.platform_id, identity.course_id, course.people["bob"], identity.exercise_id
    )
    with alice.client.session_transaction() as session:
        session["x"] = 1  # a cookie signed with the same app secret, for another purpose
    cookie = alice.client.get_cookie("lifeline_session")
    assert cookie is not None
    forged = [
        f"{payload}.{flipped}",
        other_secret,
        credentials.issue_sdk_token(SECRET, forged_identity).rsplit(".", 2)[0]
        + "."
        + good.rsplit(".", 2)[1]
        + "."
        + signature,
        cookie.value,
        "not-a-token",
        "x" * 600,
        "é",
        "",
    ]
    for token in forged:
        assert send(course, token, [event()]).status_code == 401, token
    assert course.client.post(URL, json=[event()]).status_code == 401
    basic = course.client.post(URL, json=[event()], headers=course.auth())
    assert basic.status_code == 401
    assert records(app) == []
    # A token whose exercise is gone no longer works.
    gone = SdkIdentity(identity.platform_id, identity.course_id, identity.learner_id, 99999)
    assert send(course, credentials.issue_sdk_token(SECRET, gone), [event()]).status_code == 401
    wrong_course = SdkIdentity(identity.platform_id, 99999, identity.learner_id, 1)
    response = send(course, credentials.issue_sdk_token(SECRET, wrong_course), [event()])
    assert response.status_code == 401


def test_cors_preflight_and_headers_allow_any_origin_without_credentials(
    course: Course_,
) -> None:
    preflight = course.client.options(
        URL,
        headers={
            "Origin": "https://exercises.example.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0

    token = token_of(course.learners["alice"])
    origin = {"Origin": "https://exercises.example.org"}
    for response in (
        send(course, token, [event()], **origin),
        send(course, token, [{"kind": "nope"}], **origin),
        send(course, token, {"kind": "nope"}, **origin),
        course.client.post(URL, data=b"{", headers=origin, content_type="application/json"),
    ):
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert "Access-Control-Allow-Credentials" not in response.headers
        assert "Set-Cookie" not in response.headers


def test_a_beacon_carries_the_token_in_a_text_body(app: Flask, course: Course_) -> None:
    token = token_of(course.learners["alice"])
    body = json.dumps({"token": token, "events": [{"id": "b1", "kind": "stuck"}]})
    response = course.client.post(URL, data=body, content_type="text/plain;charset=UTF-8")
    assert response.status_code == 200
    assert [r.kind for r in records(app)] == ["stuck"]
    # With an Authorization header, the body's token is not looked at.
    mixed = course.client.post(
        URL, data=body, content_type="text/plain", headers={"Authorization": "Basic eDp5"}
    )
    assert mixed.status_code == 401


def test_limits_per_learner(app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch) -> None:
    token = token_of(course.learners["alice"])
    bob = token_of(course.learners["bob"])
    assert send(course, bob, [event() for _ in range(501)]).status_code == 413
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(per_learner_per_minute=2))
    assert send(course, token, [event()]).status_code == 200
    assert send(course, token, [event()]).status_code == 200
    limited = send(course, token, [event()])
    assert limited.status_code == 429
    assert limited.headers["Access-Control-Allow-Origin"] == "*"
    assert int(limited.headers["Retry-After"]) >= 1
    # Bob has his own budget.
    assert send(course, bob, [event()]).status_code == 200
    assert len(records(app)) == 3


HOSTILE = [
    b"",
    b"[",
    b"null",
    b"[null]",
    b'{"events": null}',
    b'{"events": [[]], "sent_at": 5}',
    b'{"events": [], "sent_at": "0001-01-01T00:00:00+14:00"}',
    b'{"events": [{"kind": "run", "at": "9999-12-31T23:59:59-14:00"}]}',
    b'{"events": [{"kind": "run", "at": "0001-01-01T00:00:00Z"}], '
    b'"sent_at": "9999-12-31T00:00:00Z"}',
    b'{"events": [{"kind": "run", "at": "9999-12-30T00:00:00Z"}], '
    b'"sent_at": "0001-01-02T00:00:00Z"}',
    b'{"events": [{"kind": "run", "id": "\\u0000"}]}',
    b'{"events": [{"kind": "run", "\\ud800": 1}]}',
    b'{"events": [{"kind": "runtime_error", "error": {"type": "\\ud800"}}]}',
    b'{"events": [{"kind": "run", "code_length": 1e999}]}',
    b'{"events": [{"kind": "submit", "score": NaN}]}',
    b'{"events": [{"kind": ["run"]}]}',
    b'{"events": [{"kind": {"a": 1}}]}',
    b'{"token": 5, "events": []}',
    b"[" * 30_000 + b"]" * 30_000,
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_never_a_500(course: Course_, body: bytes) -> None:
    token = token_of(course.learners["alice"])
    response = course.client.post(
        URL, data=body, headers=bearer(token), content_type="application/json"
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"


# -- the script in a real browser, on another origin ---------------------------------------------


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", free_port(), app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=5)


EXERCISE_PAGE = """<!doctype html><html><body>
<h1>Exercise 3: recursion</h1>
<script src="{lifeline}/static/lifeline.js"></script>
<script>
  Lifeline.init({{ token: "{token}", flushMs: 100 }});
</script>
</body></html>"""


@pytest.fixture
def exercise_site(live_server: str) -> Iterator[dict[str, Any]]:
    """An exercise page on its own origin (another port), embedding the script."""
    site: dict[str, Any] = {"token": ""}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = EXERCISE_PAGE.format(lifeline=live_server, token=site["token"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    site["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/exercise"
    yield site
    httpd.shutdown()
    httpd.server_close()


def _wait_for(page: Page, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        page.wait_for_timeout(100)  # not time.sleep: Playwright routes run while it waits
    raise AssertionError("timed out waiting")


@pytest.mark.browser
def test_the_script_reports_from_another_origin_retries_and_beacons_on_leaving(
    app: Flask, course: Course_, live_server: str, exercise_site: dict[str, Any]
) -> None:
    exercise_site["token"] = token_of(course.learners["alice"])
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page()
            calls: list[str] = []

            def flaky(route: Route) -> None:
                calls.append(route.request.method)
                if route.request.method == "POST" and calls.count("POST") == 1:
                    route.abort("connectionreset")  # the first POST fails: the SDK retries
                else:
                    route.continue_()

            page.route("**/api/activity/sdk", flaky)
            page.goto(exercise_site["url"])
            page.evaluate(
                """() => {
                  Lifeline.run();
                  Lifeline.error({ type: "SyntaxError", message: "invalid syntax" });
                  Lifeline.submit({ correct: false, score: 0.5 });
                }"""
            )
            _wait_for(page, lambda: len(records(app)) == 3)
            assert calls.count("POST") >= 2  # failed once, retried
            assert [(r.kind, r.correct, r.score, r.error) for r in records(app)] == [
                ("run", None, None, None),
                ("compile_error", None, None, "SyntaxError"),
                ("submit", False, 0.5, None),
            ]
            assert page.evaluate("Lifeline.stats()") == {"pending": 0, "sent": 3, "dropped": 0}

            # Leaving the page: what is still queued goes out by navigator.sendBeacon.
            page.unroute("**/api/activity/sdk")
            page.evaluate(
                "token => { Lifeline.init({ token, flushMs: 600000 }); Lifeline.stuck(); }",
                exercise_site["token"],
            )
            assert page.evaluate("Lifeline.pending()") == 1
            page.goto("about:blank")
            _wait_for(page, lambda: len(records(app)) == 4)
            assert records(app)[-1].kind == "stuck"
            beacon = raw_events(app)[-1]
            assert beacon.source == "sdk"
            assert "token" not in beacon.body  # the token is never stored
        finally:
            browser.close()
