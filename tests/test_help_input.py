"""Bad input to every POST endpoint of the learner, tutor and instructor blueprints: a clear 4xx
(JSON, or a page) that says what was wrong, never a 500, and the database exactly as before."""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, update

from lti_tool.courses import Course
from lti_tool.models_registry import metadata
from lti_tool.tutors import operations as tutor_ops
from lti_tool.tutors.models import Invitation
from tests.helpers import Actor, launch_as
from tests.platform import TestPlatform

BLUEPRINTS = ("learner", "tutor", "instructor")
QUESTION = "My loop prints 1 to 9 but I need 1 to 10, and there is no error at all."


@dataclass
class World:
    app: Flask
    alice: Actor  # learner of course-1 with a queued request
    bob: Actor  # learner of course-1 without a request
    tara: Actor  # tutor of course-1
    tom: Actor  # another tutor of course-1
    ida: Actor  # instructor of course-1
    anon: Actor  # a browser with only a CSRF token
    request_id: int
    foreign_pool: int  # course-2's pool
    token: str  # a valid invitation to course-1's pool

    def who(self, name: str) -> Actor:
        actor: Actor = getattr(self, name)
        return actor

    def req(self, action: str) -> str:
        return f"/tutor/requests/{self.request_id}/{action}"

    def mine(self, action: str) -> str:
        return f"/l/{self.alice.launch_id}/help/{self.request_id}/{action}"


@pytest.fixture
def world(app: Flask, platform: TestPlatform) -> World:
    alice = launch_as(app, platform, "learner", "alice", "Alice")
    created = alice.post(f"/l/{alice.launch_id}/help", {"question": QUESTION})
    assert created.status_code == 200
    launch_as(app, platform, "instructor", "ivan", context_id="course-2")
    anon = Actor(app.test_client(), "")
    assert anon.client.get("/tutor/login").status_code == 200
    with app.extensions["lifeline"].db.transaction() as session:
        courses = {c.context_id: c for c in session.scalars(select(Course))}
        foreign_pool = tutor_ops.ensure_course_pool(session, courses["course-2"]).id
        pool = tutor_ops.ensure_course_pool(session, courses["course-1"]).id
        token = tutor_ops.invite(session, "expert@example.org", pool, "Ida").token
    return World(
        app=app,
        alice=alice,
        bob=launch_as(app, platform, "learner", "bob"),
        tara=launch_as(app, platform, "tutor", "ta-tara", "Tara Tutor"),
        tom=launch_as(app, platform, "tutor", "ta-tom", "Tom Tutor"),
        ida=launch_as(app, platform, "instructor", "ida"),
        anon=anon,
        request_id=created.get_json()["request_id"],
        foreign_pool=foreign_pool,
        token=token,
    )


def _ok(response: Any) -> None:
    assert response.status_code < 400, response.get_data(as_text=True)[:300]


def _claim(w: World) -> None:
    _ok(w.tara.post(w.req("claim")))


STATES: dict[str, Callable[[World], None]] = {
    "queued": lambda w: None,
    "claimed": _claim,
    "held_by_tom": lambda w: _ok(w.tom.post(w.req("claim"))),
    "resolved": lambda w: (_claim(w), _ok(w.tara.post(w.req("resolve"), {"outcome": "solved"}))),
    "released": lambda w: (_claim(w), _ok(w.tara.post(w.req("release")))),  # version 3
    "cancelled": lambda w: _ok(w.alice.post(w.mine("cancel"))),
    "expired_invite": lambda w: _expire_invitations(w.app),
}


def _expire_invitations(app: Flask) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    with app.extensions["lifeline"].db.transaction() as session:
        session.execute(update(Invitation).values(expires_at=past))


URLS: dict[str, Callable[[World], str]] = {
    "learner.create_request": lambda w: f"/l/{w.bob.launch_id}/help",
    "learner.cancel": lambda w: w.mine("cancel"),
    "learner.away": lambda w: w.mine("away"),
    "learner.back": lambda w: w.mine("back"),
    "learner.rate": lambda w: w.mine("rate"),
    "learner.chat": lambda w: w.mine("chat"),
    "tutor.login": lambda w: "/tutor/login",
    "tutor.logout": lambda w: "/tutor/logout",
    "tutor.accept": lambda w: f"/tutor/invite/{w.token}",
    "tutor.availability": lambda w: "/tutor/availability",
    "tutor.heartbeat": lambda w: "/tutor/heartbeat",
    "tutor.claim": lambda w: w.req("claim"),
    "tutor.release": lambda w: w.req("release"),
    "tutor.transfer": lambda w: w.req("transfer"),
    "tutor.resolve": lambda w: w.req("resolve"),
    "tutor.meeting": lambda w: w.req("meeting"),
    "tutor.chat": lambda w: w.req("chat"),
    "instructor.save_settings": lambda w: f"/l/{w.ida.launch_id}/course/settings",
    "instructor.invite": lambda w: f"/l/{w.ida.launch_id}/course/invite",
    "instructor.sync_roster": lambda w: f"/l/{w.ida.launch_id}/course/roster/sync",
}
WHO = {"learner": "alice", "tutor": "tara", "instructor": "ida"}
WHO_FOR = {"learner.create_request": "bob", "tutor.login": "anon", "tutor.accept": "anon"}
SETTINGS = {
    "skills": "loops",
    "cooldown_minutes": "0",
    "daily_cap": "0",
    "sla_minutes": "5",
    "step_away_minutes": "10",
}


@dataclass(frozen=True)
class Bad:
    endpoint: str
    data: dict[str, str]
    status: int
    says: str
    state: str = "queued"

    @property
    def id(self) -> str:
        shown = ",".join(f"{k}={v[:12]!r}" for k, v in self.data.items())
        return f"{self.endpoint}[{self.state}]({shown})"


FOREIGN = "<foreign pool>"  # replaced by course-2's pool id
CASES = [
    # -- learner: ask
    Bad("learner.create_request", {}, 400, "Write your question first"),
    Bad("learner.create_request", {"question": "   \n "}, 400, "Write your question first"),
    Bad("learner.create_request", {"question": "segfault"}, 400, "Say a little more"),
    Bad("learner.create_request", {"question": "x" * 2001}, 400, "under 2000 characters"),
    Bad("learner.create_request", {"question": QUESTION, "tried": "y" * 2001}, 400, "I tried"),
    Bad("learner.create_request", {"question": QUESTION, "skills": "astrology"}, 400, "skills"),
    Bad("learner.create_request", {"question": QUESTION, "notify_email": "nope"}, 400, "email"),
    Bad(
        "learner.create_request",
        {"question": QUESTION, "notify_email": "a@example.org\nbcc:all@example.org"},
        400,
        "not an email address",
    ),
    Bad(
        "learner.create_request",
        {"question": QUESTION, "notify_email": "a" * 320 + "@example.org"},
        400,
        "not an email address",
    ),
    # -- learner: act on the request
    Bad("learner.cancel", {"version": "abc"}, 400, "version field must be a number"),
    Bad("learner.cancel", {"version": "1.0"}, 400, "version field must be a number"),
    Bad("learner.cancel", {"version": "7"}, 409, "changed since your page loaded"),
    Bad("learner.cancel", {"version": "9" * 25}, 400, "version field must be a number"),
    Bad("learner.cancel", {"version": "9" * 5000}, 400, "version field must be a number"),
    Bad("learner.cancel", {"version": "1"}, 409, "changed since your page loaded", "released"),
    Bad("learner.cancel", {}, 409, "already cancelled", "cancelled"),
    Bad("learner.away", {}, 409, "only step away while you are waiting", "claimed"),
    Bad("learner.away", {"version": "x"}, 400, "version field must be a number"),
    Bad("learner.back", {}, 409, "only step away while you are waiting", "resolved"),
    Bad("learner.rate", {"rating": "5"}, 409, "once the tutor has finished"),
    Bad("learner.rate", {}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "0"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "6"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "-1"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "x"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "4.5"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "9" * 30}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "9" * 5000}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "\u0663"}, 400, "rating from 1 to 5", "resolved"),
    Bad("learner.rate", {"rating": "4", "comment": "c" * 2001}, 400, "comment", "resolved"),
    Bad("learner.chat", {}, 400, "Write a message first", "claimed"),
    Bad("learner.chat", {"body": " \t\n "}, 400, "Write a message first", "claimed"),
    Bad("learner.chat", {"body": "m" * 4001}, 400, "under 4000 characters", "claimed"),
    Bad("learner.chat", {"body": "hello?"}, 409, "Chat is open while a tutor", "queued"),
    # -- tutor: account
    Bad("tutor.login", {}, 401, "do not match"),
    Bad("tutor.login", {"email": "nobody@example.org", "password": "x" * 50}, 401, "do not match"),
    Bad("tutor.accept", {}, 400, "Give the name learners will see"),
    Bad("tutor.accept", {"display_name": "Eve", "password": "short"}, 400, "at least 10"),
    Bad("tutor.accept", {"display_name": "E" * 201, "password": "p" * 12}, 400, "1 to 200"),
    Bad("tutor.accept", {"display_name": "Eve", "password": "p" * 201}, 400, "too long"),
    Bad(
        "tutor.accept",
        {"display_name": "Eve", "password": "p" * 12},
        400,
        "expired",
        "expired_invite",
    ),
    Bad("tutor.availability", {}, 400, "available, away or offline"),
    Bad("tutor.availability", {"availability": "busy"}, 400, "available, away or offline"),
    Bad("tutor.availability", {"availability": "available", "capacity": "x"}, 400, "whole number"),
    Bad("tutor.availability", {"availability": "available", "capacity": "0"}, 400, "1 and 10"),
    Bad("tutor.availability", {"availability": "available", "capacity": "11"}, 400, "1 and 10"),
    Bad("tutor.availability", {"availability": "away", "skills": "s" * 41}, 400, "40 characters"),
    # -- tutor: requests
    Bad("tutor.claim", {"version": "abc"}, 400, "version field must be a number"),
    Bad("tutor.claim", {"version": "9" * 5000}, 400, "version field must be a number"),
    Bad("tutor.claim", {"version": "-9" * 12}, 400, "version field must be a number"),
    Bad("tutor.claim", {"version": "9" * 30}, 400, "version field must be a number"),
    Bad("tutor.claim", {"version": "-3"}, 409, "changed since your page loaded"),
    Bad("tutor.claim", {"version": "1"}, 409, "changed since your page loaded", "released"),
    Bad("tutor.claim", {}, 409, "Tom Tutor already claimed", "held_by_tom"),
    Bad("tutor.claim", {}, 409, "it cannot be claimed", "cancelled"),
    Bad("tutor.release", {}, 409, "not held by you"),
    Bad("tutor.release", {"version": "1"}, 409, "changed since your page loaded", "claimed"),
    Bad("tutor.release", {"version": "2"}, 409, "changed since your page loaded", "released"),
    Bad("tutor.release", {"version": "two"}, 400, "version field must be a number", "claimed"),
    Bad("tutor.transfer", {"pool_id": FOREIGN}, 400, "does not serve this request's course"),
    Bad("tutor.transfer", {"pool_id": "99999"}, 400, "does not serve", "claimed"),
    Bad("tutor.transfer", {"pool_id": "abc"}, 400, "pool", "claimed"),
    Bad("tutor.transfer", {"pool_id": "\u00b2"}, 400, "pool", "claimed"),
    Bad("tutor.transfer", {"pool_id": "-1"}, 400, "pool", "claimed"),
    Bad("tutor.transfer", {"pool_id": "--5"}, 400, "pool", "claimed"),
    Bad("tutor.transfer", {"pool_id": "9" * 5000}, 400, "pool", "claimed"),
    Bad("tutor.transfer", {"skills": "astrology"}, 400, "not one of this course's skills"),
    Bad("tutor.transfer", {"version": "1"}, 409, "changed since your page loaded", "claimed"),
    Bad("tutor.transfer", {"version": "2"}, 409, "changed since your page loaded", "resolved"),
    Bad("tutor.transfer", {}, 409, "it cannot be transferred", "resolved"),
    Bad("tutor.resolve", {}, 400, "Choose an outcome", "claimed"),
    Bad("tutor.resolve", {"outcome": "great"}, 400, "Choose an outcome", "claimed"),
    Bad("tutor.resolve", {"outcome": "SOLVED "}, 400, "Choose an outcome", "claimed"),
    Bad("tutor.resolve", {"outcome": "solved", "note": "n" * 4001}, 400, "under 4000", "claimed"),
    Bad("tutor.resolve", {"outcome": "solved", "version": "1"}, 409, "changed since", "claimed"),
    Bad("tutor.resolve", {"outcome": "solved", "version": "2"}, 409, "changed since", "released"),
    Bad("tutor.resolve", {"outcome": "solved", "version": "x"}, 400, "version field", "claimed"),
    Bad("tutor.resolve", {"outcome": "solved"}, 409, "not held by you", "queued"),
    Bad("tutor.meeting", {}, 400, "https://", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "http://meet.example.org/r"}, 400, "https://", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "javascript:alert(1)"}, 400, "https://", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "https://"}, 400, "https://", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "https://[meet"}, 400, "https://", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "https://m.org/" + "r" * 1000}, 400, "https", "claimed"),
    Bad("tutor.meeting", {"meeting_url": "https://meet.example.org/r"}, 409, "not held", "queued"),
    Bad("tutor.chat", {}, 400, "Write a message first", "claimed"),
    Bad("tutor.chat", {"body": "m" * 4001}, 400, "under 4000 characters", "claimed"),
    Bad("tutor.chat", {"body": "hello"}, 403, "Only the tutor who holds", "queued"),
    Bad("tutor.chat", {"body": "still there?"}, 409, "Chat is open while", "resolved"),
    # -- instructor
    Bad("instructor.save_settings", {}, 400, "Cooldown must be a whole number"),
    Bad("instructor.save_settings", {**SETTINGS, "daily_cap": "lots"}, 400, "Daily cap"),
    Bad("instructor.save_settings", {**SETTINGS, "meeting_template": "x"}, 400, "{room}"),
    Bad("instructor.invite", {}, 400, "is not an email address"),
    Bad("instructor.invite", {"email": "bob"}, 400, "is not an email address"),
    Bad("instructor.invite", {"email": "e@example.org", "pool_id": FOREIGN}, 400, "not serve"),
    Bad("instructor.invite", {"email": "e@example.org", "pool_id": "abc"}, 400, "not serve"),
    Bad("instructor.invite", {"email": "e@example.org", "pool_id": "\u00b2"}, 400, "not serve"),
    Bad("instructor.save_settings", {**SETTINGS, "report_participation": "y"}, 400, "checkbox"),
    # no launch of the course offered a roster service (NRPS)
    Bad("instructor.sync_roster", {}, 409, "has not offered this course's roster"),
]
# Endpoints that read no field but the CSRF token: only the token checks below apply.
NO_FIELDS = {"tutor.heartbeat", "tutor.logout"}


def snapshot(app: Flask) -> dict[str, list[Any]]:
    """Every row of every table, in primary key order."""
    with app.extensions["lifeline"].db.engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in metadata().sorted_tables
        }


def _send(w: World, endpoint: str, data: dict[str, str], **kwargs: Any) -> Any:
    who = _who(w, endpoint)
    data = {k: str(w.foreign_pool) if v == FOREIGN else v for k, v in data.items()}
    return who.post(URLS[endpoint](w), data, **kwargs)


def _message(response: Any) -> str:
    """What the person is told: the JSON error fields, or the text of the page."""
    body = response.get_json(silent=True)
    if isinstance(body, dict):
        return " ".join(str(body.get(k, "")) for k in ("error", "title", "detail"))
    assert response.mimetype == "text/html", response.mimetype
    return html.unescape(response.get_data(as_text=True))


def _check(world: World, case: Bad, json: bool, before: dict[str, list[Any]]) -> str | None:
    """None if the case is answered as it should be, else what went wrong."""
    response = _send(world, case.endpoint, case.data, json=json)
    told = _message(response)
    if response.status_code != case.status or case.says not in told:
        return f"{case.id} json={json}: {response.status_code} {told[:300]!r}"
    if snapshot(world.app) != before:
        return f"{case.id} json={json}: the database changed"
    return None


@pytest.mark.parametrize("state", sorted({c.state for c in CASES}))
def test_bad_input_is_a_clear_4xx_and_changes_nothing(state: str, world: World) -> None:
    """Each case, as a JSON call and as a plain form post (the answer is then a page or JSON).

    The cases of one state share a world: none of them may change it, which is checked."""
    STATES[state](world)
    cases = [c for c in CASES if c.state == state]
    before = snapshot(world.app)
    problems = [p for c in cases for j in (True, False) if (p := _check(world, c, j, before))]
    assert not problems, "\n".join(problems)


def _post_endpoints(app: Flask) -> set[str]:
    return {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or set()) and rule.endpoint.split(".")[0] in BLUEPRINTS
    }


def test_every_post_endpoint_has_bad_input_cases(app: Flask) -> None:
    posts = _post_endpoints(app)
    assert set(URLS) == posts, "keep URLS in step with the POST endpoints"
    covered = {c.endpoint for c in CASES} | NO_FIELDS
    assert not posts - covered, f"POST endpoints with no bad-input case: {posts - covered}"


def _main_field(endpoint: str) -> str:
    return next((k for c in CASES if c.endpoint == endpoint for k in c.data), "anything")


def _who(world: World, endpoint: str) -> Actor:
    return world.who(WHO_FOR.get(endpoint, WHO[endpoint.split(".")[0]]))


@pytest.fixture
def claimed(world: World) -> World:
    STATES["claimed"](world)
    return world


def test_missing_or_wrong_csrf_token_is_400_everywhere(claimed: World) -> None:
    before = snapshot(claimed.app)
    for endpoint in sorted(URLS):
        who = _who(claimed, endpoint)
        for token in ("", who.csrf()[::-1], "x" * 5000):
            headers = {"Accept": "application/json", "X-CSRF-Token": token}
            response = who.client.post(URLS[endpoint](claimed), data={"a": "b"}, headers=headers)
            assert response.status_code == 400, (endpoint, response.status_code)
            assert "CSRF check failed" in response.get_json()["detail"], endpoint
    assert snapshot(claimed.app) == before


def test_oversized_posts_are_413_everywhere(claimed: World) -> None:
    before = snapshot(claimed.app)
    for endpoint in sorted(URLS):
        response = _send(claimed, endpoint, {_main_field(endpoint): "x" * 300_000})
        assert response.status_code == 413, endpoint
        assert response.get_json()["error"] == "request_entity_too_large"
    assert snapshot(claimed.app) == before


def test_a_nul_character_is_refused_everywhere_not_a_500(claimed: World) -> None:
    """PostgreSQL cannot store (or even compare) text holding NUL: say so, do not crash."""
    before = snapshot(claimed.app)
    for endpoint in sorted(URLS):
        field = _main_field(endpoint)
        response = _send(claimed, endpoint, {field: "Valid looking text\x00 with a NUL inside"})
        assert response.status_code == 400, (endpoint, response.get_data(as_text=True)[:300])
        detail = response.get_json()["detail"]
        assert "NUL" in detail and repr(field) in detail, (endpoint, detail)
    assert snapshot(claimed.app) == before


def test_huge_or_odd_ids_in_urls_are_404_not_500(claimed: World) -> None:
    before = snapshot(claimed.app)
    for request_id in ("9" * 20, "9" * 400, "0", "00001x", "-1"):
        for who, url in (
            (claimed.tara, f"/tutor/requests/{request_id}/claim"),
            (claimed.alice, f"/l/{claimed.alice.launch_id}/help/{request_id}/cancel"),
        ):
            response = who.post(url)
            assert response.status_code == 404, (url, response.status_code)
        response = claimed.tara.get(f"/tutor/requests/{request_id}", json=True)
        assert response.status_code == 404
    for launch_id in ("x" * 5000, "%00", "..%2F..%2Ftutor"):
        response = claimed.alice.post(f"/l/{launch_id}/help/1/cancel")
        assert response.status_code in (403, 404), (launch_id, response.status_code)
    assert snapshot(claimed.app) == before
