"""Tutor accounts: invited experts (invitation link, argon2 password, login with lockout,
logout), LMS teaching assistants and mentors (one tutor per person, in every course's pool),
and the heartbeat that turns a silent 'available' tutor into 'away'."""

from __future__ import annotations

import datetime as dt
import re
from contextlib import AbstractContextManager
from urllib.parse import urlsplit

import redis
from argon2 import PasswordHasher
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lti_tool.help.models import HelpRequest
from lti_tool.tutors import operations as tutor_ops
from lti_tool.tutors.models import Invitation, PoolMember, Tutor, TutorLink
from tests.conftest import BASE_URL
from tests.helpers import Actor, launch_as
from tests.platform import CLAIM, LIS, JwksServer, TestPlatform

PASSWORD = "correct horse battery staple"
QUESTION = "My loop prints 1 to 9 but I need 1 to 10, and there is no error at all."


def _db(app: Flask) -> AbstractContextManager[Session]:
    return app.extensions["lifeline"].db.transaction()  # type: ignore[no-any-return]


def _browser(app: Flask) -> Actor:
    return Actor(app.test_client(), "")


def _ask(actor: Actor, question: str = QUESTION) -> int:
    response = actor.post(f"/l/{actor.launch_id}/help", {"question": question})
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_json()["request_id"])


def _invite(instructor: Actor, email: str) -> str:
    """The instructor's invite form; returns the path of the link shown on the page."""
    page = instructor.post(f"/l/{instructor.launch_id}/course/invite", {"email": email}, json=False)
    assert page.status_code == 200, page.get_data(as_text=True)[:500]
    match = re.search(r'data-testid="invite-link">([^<]+)<', page.get_data(as_text=True))
    assert match, "the page shows no invitation link"
    link = match.group(1)
    assert link.startswith(BASE_URL + "/tutor/invite/")
    return urlsplit(link).path


def _accept(browser: Actor, path: str, name: str = "Eve Expert", password: str = PASSWORD) -> int:
    page = browser.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    response = browser.post(path, {"display_name": name, "password": password}, json=False)
    return int(response.status_code)


def _queue(actor: Actor) -> list[int]:
    response = actor.get("/tutor/queue.json")
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return [item["request_id"] for item in response.get_json()["queue"]]


def _tutor_count(app: Flask) -> int:
    with _db(app) as session:
        return int(session.scalar(select(func.count()).select_from(Tutor)) or 0)


def test_invited_expert_joins_the_course_pool_with_an_argon2_password(
    app: Flask, platform: TestPlatform
) -> None:
    ida = launch_as(app, platform, "instructor", "ida", "Ida Instructor")
    alice = launch_as(app, platform, "learner", "alice")
    request_id = _ask(alice)
    path = _invite(ida, "Eve@Example.org")

    eve = _browser(app)
    page = eve.get(path)
    assert page.status_code == 200 and "eve@example.org" in page.get_data(as_text=True)
    assert "Ida Instructor" in page.get_data(as_text=True)
    response = eve.post(path, {"display_name": " Eve Expert ", "password": PASSWORD}, json=False)
    assert response.status_code == 303 and response.headers["Location"].endswith("/tutor/")
    assert _queue(eve) == [request_id]  # signed in, and serving the course's pool

    with _db(app) as session:
        tutor = session.scalars(select(Tutor).where(Tutor.email == "eve@example.org")).one()
        assert tutor.display_name == "Eve Expert"
        assert tutor.password_hash is not None and tutor.password_hash.startswith("$argon2id$")
        assert PASSWORD not in tutor.password_hash
        assert PasswordHasher().verify(tutor.password_hash, PASSWORD)
        invitation = session.scalars(select(Invitation)).one()
        assert invitation.accepted_at is not None and invitation.tutor_id == tutor.id
        assert len(invitation.token_hash) == 64 and invitation.token_hash not in path  # hashed
    settings = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert 'data-testid="pool-member">Eve Expert (eve@example.org)' in settings

    # The link is spent: neither the page nor the form works again, for anyone.
    again = _browser(app)
    used = again.get(path)
    assert used.status_code == 404 and "already used" in used.get_data(as_text=True)
    assert _accept_without_page(again, path, "Mallory", "another long password") == 400
    assert _tutor_count(app) == 1


def _accept_without_page(browser: Actor, path: str, name: str, password: str) -> int:
    assert browser.client.get("/tutor/login").status_code == 200  # a CSRF token
    response = browser.post(path, {"display_name": name, "password": password}, json=False)
    return int(response.status_code)


def test_an_expired_link_is_refused(app: Flask, platform: TestPlatform) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    path = _invite(ida, "late@example.org")
    with _db(app) as session:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.execute(update(Invitation).values(expires_at=past))
    late = _browser(app)
    page = late.get(path)
    assert page.status_code == 404 and "expired" in page.get_data(as_text=True)
    assert _accept_without_page(late, path, "Late", PASSWORD) == 400
    assert _tutor_count(app) == 0
    with _db(app) as session:
        assert session.scalars(select(Invitation)).one().accepted_at is None


def test_a_weak_password_is_refused_and_the_link_still_works(
    app: Flask, platform: TestPlatform
) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    path = _invite(ida, "eve@example.org")
    eve = _browser(app)
    for weak in ("", "short", "123456789"):
        page = eve.get(path)
        assert page.status_code == 200
        response = eve.post(path, {"display_name": "Eve", "password": weak}, json=False)
        assert response.status_code == 400
        assert "at least 10 characters" in response.get_data(as_text=True)
    assert _tutor_count(app) == 0
    assert eve.get("/tutor/queue.json").status_code == 401  # not signed in
    assert _accept(eve, path) == 303
    assert _tutor_count(app) == 1


def _account(app: Flask, email: str = "eve@example.org", name: str = "Eve Expert") -> None:
    with _db(app) as session:
        session.add(
            Tutor(display_name=name, email=email, password_hash=PasswordHasher().hash(PASSWORD))
        )


def test_login_logout_and_lockout_after_ten_failures(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    _account(app)
    _account(app, "other@example.org", "Other Expert")
    eve = _browser(app)
    assert eve.client.get("/tutor/login").status_code == 200

    ok = eve.post("/tutor/login", {"email": " EVE@example.org ", "password": PASSWORD}, json=False)
    assert ok.status_code == 303 and ok.headers["Location"].endswith("/tutor/")
    assert eve.post("/tutor/availability", {"availability": "available"}).status_code == 200
    assert eve.post("/tutor/logout", json=False).status_code == 303
    with _db(app) as session:
        tutor = session.scalars(select(Tutor).where(Tutor.email == "eve@example.org")).one()
        assert tutor.availability == "offline"
    assert eve.get("/tutor/queue.json").status_code == 401

    for attempt in range(10):
        wrong = eve.post(
            "/tutor/login", {"email": "eve@example.org", "password": f"nope {attempt}"}
        )
        assert wrong.status_code == 401, attempt
        assert "do not match" in wrong.get_data(as_text=True)
    locked = eve.post("/tutor/login", {"email": "eve@example.org", "password": PASSWORD})
    assert locked.status_code == 429 and "Too many failed attempts" in locked.get_data(as_text=True)
    assert eve.get("/tutor/queue.json").status_code == 401
    key = "lifeline:tutor-login-failures:eve@example.org"
    assert int(redis_client.get(key) or 0) == 10
    assert 0 < int(redis_client.ttl(key)) <= 15 * 60  # type: ignore[arg-type]
    # Another account is not locked by Eve's failures.
    other = eve.post("/tutor/login", {"email": "other@example.org", "password": PASSWORD})
    assert other.status_code == 303
    # Once the window passes (the key expires), the right password works and clears the count.
    redis_client.delete(key)
    eve2 = _browser(app)
    assert eve2.client.get("/tutor/login").status_code == 200
    assert (
        eve2.post("/tutor/login", {"email": "eve@example.org", "password": PASSWORD}).status_code
        == 303
    )
    assert redis_client.get(key) is None


def test_an_invitation_never_resets_an_existing_account(
    app: Flask, platform: TestPlatform, jwks_server: JwksServer
) -> None:
    """An instructor of another platform invites Eve's email and sees the link: using it with
    a new password must not take Eve's account over. Eve herself adds the course to it."""
    other = TestPlatform(jwks_server, issuer="https://other-lms.example", client_id="other-client")
    other.register(app)
    ida = launch_as(app, platform, "instructor", "ida")
    alice = launch_as(app, platform, "learner", "alice")
    mallory = launch_as(app, other, "instructor", "mallory", "Mallory")
    zoe = launch_as(app, other, "learner", "zoe")
    eve = _browser(app)
    assert _accept(eve, _invite(ida, "eve@example.org")) == 303
    with _db(app) as session:
        before = session.scalars(select(Tutor)).one().password_hash

    path = _invite(mallory, "eve@example.org")
    page = mallory.get(path).get_data(as_text=True)
    assert "current password" in page
    assert _accept(mallory, path, "Eve (hacked)", "mallory's new password") == 400
    assert mallory.get("/tutor/queue.json").status_code == 401
    with _db(app) as session:
        tutor = session.scalars(select(Tutor)).one()
        assert (tutor.password_hash, tutor.display_name) == (before, "Eve Expert")
        assert len(tutor_ops.tutor_pool_ids(session, tutor.id)) == 1

    # Eve opens the same link with her current password: one account, two platforms' pools.
    assert _accept(eve, path, "Eve", PASSWORD) == 303
    mine, theirs = _ask(alice), _ask(zoe, "Zoe: my function returns None instead of the sum.")
    assert sorted(_queue(eve)) == sorted([mine, theirs])
    assert _tutor_count(app) == 1


def test_teaching_assistants_and_mentors_become_tutors_of_each_course_pool(
    app: Flask, platform: TestPlatform
) -> None:
    alice = launch_as(app, platform, "learner", "alice")
    charlie = launch_as(app, platform, "learner", "charlie", context_id="course-2")
    first = _ask(alice)
    second = _ask(charlie, "Charlie: the recursion never stops and Python gives up.")

    ta = launch_as(app, platform, "tutor", "ta-1", "Tim TA")
    assert _queue(ta) == [first]
    # The same person, TA of a second course: the same tutor, now in both pools.
    ta = launch_as(app, platform, "tutor", "ta-1", "Tim TA", context_id="course-2")
    assert sorted(_queue(ta)) == [first, second]
    mentor_role = {CLAIM + "roles": [LIS + "membership#Mentor"]}
    mentor = launch_as(app, platform, "learner", "mentor-1", "Mo Mentor", **mentor_role)
    assert _queue(mentor) == [first]
    with _db(app) as session:
        tutors = {t.display_name: t for t in session.scalars(select(Tutor))}
        assert sorted(tutors) == ["Mo Mentor", "Tim TA"]
        assert len(tutor_ops.tutor_pool_ids(session, tutors["Tim TA"].id)) == 2
        assert len(tutor_ops.tutor_pool_ids(session, tutors["Mo Mentor"].id)) == 1
        assert session.scalar(select(func.count()).select_from(TutorLink)) == 2
        members = session.scalar(select(func.count()).select_from(PoolMember))
        assert members == 3
    # Learners are never made tutors.
    assert alice.get("/tutor/queue.json").status_code == 401


def test_an_available_tutor_whose_heartbeat_stopped_counts_as_away(
    app: Flask, platform: TestPlatform
) -> None:
    alice = launch_as(app, platform, "learner", "alice")
    tara = launch_as(app, platform, "tutor", "ta-tara", "Tara")
    request_id = _ask(alice)
    status_url = f"/l/{alice.launch_id}/help/{request_id}/status.json"

    def estimate() -> dict[str, object]:
        return dict(alice.get(status_url).get_json()["estimate"])

    assert estimate()["tutors_available"] == 0  # TAs start offline
    assert tara.post("/tutor/availability", {"availability": "available"}).status_code == 200
    assert estimate()["tutors_available"] == 1

    def last_seen(seconds_ago: int) -> None:
        with _db(app) as session:
            seen = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
            session.execute(update(Tutor).values(last_seen_at=seen))

    last_seen(50)
    assert estimate()["tutors_available"] == 1
    last_seen(61)
    gone = estimate()
    assert gone["tutors_available"] == 0
    assert "No tutor is online" in str(gone["text"])
    with _db(app) as session:
        tutor = session.scalars(select(Tutor)).one()
        assert tutor.availability == "available"  # what they chose is kept...
        assert tutor_ops.effective_availability(tutor).value == "away"  # ...but it is stale
    # The dashboard's heartbeat brings them back.
    assert tara.post("/tutor/heartbeat").get_json() == {"availability": "available"}
    assert estimate()["tutors_available"] == 1
    with _db(app) as session:
        assert session.get(HelpRequest, request_id) is not None
