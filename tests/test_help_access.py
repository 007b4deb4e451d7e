"""Who may do what, endpoint by endpoint, with several people of different rights.

The cast (two platforms, so tenants are in play):
- platform A, course-1: learners alice and bob, instructor ida, tutors tara and tom (TAs);
- platform A, course-2: learner charlie, instructor ivan, tutor tess (TA);
- platform B (another LMS registration), also context "course-1" and the *same* subs: a learner
  "alice", a TA "ta-tara" and an instructor "ida", who are other people in another course.

Every endpoint of the learner, tutor and instructor blueprints has a check below (a new
endpoint without one fails ``test_every_endpoint_has_an_access_check``), and each check asserts
that its requests really reached that endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
from argon2 import PasswordHasher
from flask import Flask
from sqlalchemy import func, select

from lti_tool.courses import Course, Person
from lti_tool.help.models import HelpEvent, HelpRequest, HelpStatus
from lti_tool.tutors import operations as tutor_ops
from lti_tool.tutors.models import Tutor
from tests.helpers import Actor, launch_as
from tests.platform import ROLE_LEARNER, JwksServer, TestPlatform

BLUEPRINTS = ("learner", "tutor", "instructor", "admin", "registration")
Q_ALICE = "Alice: my loop prints 1 to 9 but I need 1 to 10, and there is no error."
Q_CHARLIE = "Charlie: my recursion never stops and Python gives up on the depth."
Q_OTHER = "Other alice: the list comprehension returns an empty list every time."


@dataclass
class World:
    app: Flask
    alice: Actor
    bob: Actor
    ida: Actor
    tara: Actor
    tom: Actor
    charlie: Actor
    ivan: Actor
    tess: Actor
    other_alice: Actor
    other_tara: Actor
    other_ida: Actor
    anon: Actor
    alice_req: int
    charlie_req: int
    other_req: int

    def row(self, request_id: int) -> tuple[str, int, int | None, int | None]:
        with self.app.extensions["lifeline"].db.transaction() as session:
            req = session.get(HelpRequest, request_id)
            assert req is not None
            return req.status, req.version, req.tutor_id, req.rating

    def counts(self) -> tuple[int, int]:
        with self.app.extensions["lifeline"].db.transaction() as session:
            requests = session.scalar(select(func.count()).select_from(HelpRequest)) or 0
            events = session.scalar(select(func.count()).select_from(HelpEvent)) or 0
            return requests, events


def _anonymous(app: Flask) -> Actor:
    """A browser with no launch and no tutor session, but a valid CSRF token."""
    client = app.test_client()
    assert client.get("/tutor/login").status_code == 200  # the page sets the token
    return Actor(client, "")


def _ask(actor: Actor, question: str) -> int:
    response = actor.post(f"/l/{actor.launch_id}/help", {"question": question})
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_json()["request_id"])


@pytest.fixture
def world(app: Flask, platform: TestPlatform, jwks_server: JwksServer) -> World:
    other = TestPlatform(jwks_server, issuer="https://other-lms.example", client_id="other-client")
    other.register(app)
    c2 = {"context_id": "course-2", "resource_link": "link-9"}
    w = World(
        app=app,
        alice=launch_as(app, platform, "learner", "alice", "Alice A"),
        bob=launch_as(app, platform, "learner", "bob", "Bob B"),
        ida=launch_as(app, platform, "instructor", "ida", "Ida Instructor"),
        tara=launch_as(app, platform, "tutor", "ta-tara", "Tara Tutor"),
        tom=launch_as(app, platform, "tutor", "ta-tom", "Tom Tutor"),
        charlie=launch_as(app, platform, "learner", "charlie", "Charlie C", **c2),
        ivan=launch_as(app, platform, "instructor", "ivan", "Ivan Instructor", **c2),
        tess=launch_as(app, platform, "tutor", "ta-tess", "Tess Tutor", **c2),
        other_alice=launch_as(app, other, "learner", "alice", "Alice Elsewhere"),
        other_tara=launch_as(app, other, "tutor", "ta-tara", "Tara Elsewhere"),
        other_ida=launch_as(app, other, "instructor", "ida", "Ida Elsewhere"),
        anon=_anonymous(app),
        alice_req=0,
        charlie_req=0,
        other_req=0,
    )
    w.alice_req = _ask(w.alice, Q_ALICE)
    w.charlie_req = _ask(w.charlie, Q_CHARLIE)
    w.other_req = _ask(w.other_alice, Q_OTHER)
    return w


class Call:
    """Send one request, check its status (and a phrase of the answer), record the endpoint."""

    def __init__(self, app: Flask) -> None:
        self.adapter = app.url_map.bind("lifeline.test")
        self.hit: set[str] = set()

    def __call__(
        self,
        who: Actor,
        method: str,
        url: str,
        expect: int,
        needle: str = "",
        data: dict[str, Any] | None = None,
    ) -> Any:
        endpoint, _ = self.adapter.match(urlsplit(url).path, method=method)
        self.hit.add(str(endpoint))
        response = who.post(url, data) if method == "POST" else who.get(url, json=True)
        text = response.get_data(as_text=True)
        assert response.status_code == expect, (method, url, response.status_code, text[:400])
        if needle:
            assert needle in text, (url, needle, text[:400])
        assert response.status_code != 500
        return response


Check = Callable[[World, Call], None]
CHECKS: dict[str, Check] = {}


def covers(endpoint: str) -> Callable[[Check], Check]:
    def register(check: Check) -> Check:
        assert endpoint not in CHECKS, endpoint
        CHECKS[endpoint] = check
        return check

    return register


# -- shared denials --------------------------------------------------------------------------


def learner_denials(
    w: World, call: Call, method: str, path: str, data: dict[str, Any] | None = None
) -> None:
    """``path`` has {launch} and {req}; alice's request must stay exactly as it was."""
    before = w.row(w.alice_req), w.counts()
    own = "No such request of yours"
    # Another learner of the same course, another course, another platform (same sub "alice").
    call(w.bob, method, path.format(launch=w.bob.launch_id, req=w.alice_req), 404, own, data)
    call(
        w.charlie, method, path.format(launch=w.charlie.launch_id, req=w.alice_req), 404, own, data
    )
    other = w.other_alice
    call(other, method, path.format(launch=other.launch_id, req=w.alice_req), 404, own, data)
    # Alice's own launch cannot reach the request of a learner of another course or platform.
    for foreign in (w.charlie_req, w.other_req):
        call(w.alice, method, path.format(launch=w.alice.launch_id, req=foreign), 404, own, data)
    # Alice's launch id used from another browser.
    stolen = path.format(launch=w.alice.launch_id, req=w.alice_req)
    call(w.bob, method, stolen, 403, "another browser", data)
    call(w.anon, method, stolen, 403, "another browser", data)
    call(w.ida, method, stolen, 403, "another browser", data)
    # Instructors and tutors through their own launch: these pages are for learners.
    for staff in (w.ida, w.tara):
        own_launch = path.format(launch=staff.launch_id, req=w.alice_req)
        call(staff, method, own_launch, 403, "for learners", data)
    assert (w.row(w.alice_req), w.counts()) == before


def no_tutor_session(
    w: World, call: Call, method: str, url: str, data: dict[str, Any] | None = None
) -> None:
    """Learners, instructors and strangers have no tutor session: 401, nothing changes."""
    before = w.row(w.alice_req), w.counts()
    for who in (w.alice, w.ida, w.anon, w.other_ida):
        call(who, method, url, 401, "Log in as a tutor first", data)
    assert (w.row(w.alice_req), w.counts()) == before


def outside_pools(
    w: World, call: Call, method: str, path: str, data: dict[str, Any] | None = None
) -> None:
    """``path`` has {req}: tutors never reach a request outside their pools."""
    before = w.row(w.alice_req), w.row(w.charlie_req), w.counts()
    pools = "No such request in your pools"
    call(w.tara, method, path.format(req=w.charlie_req), 404, pools, data)  # other course
    call(w.tara, method, path.format(req=w.other_req), 404, pools, data)  # other platform
    call(w.tess, method, path.format(req=w.alice_req), 404, pools, data)
    call(w.other_tara, method, path.format(req=w.alice_req), 404, pools, data)  # same sub
    call(w.tara, method, path.format(req=999_999), 404, pools, data)
    assert (w.row(w.alice_req), w.row(w.charlie_req), w.counts()) == before


def instructor_denials(
    w: World, call: Call, method: str, path: str, data: dict[str, Any] | None = None
) -> None:
    """``path`` has {launch}."""
    before = w.counts()
    call(w.alice, method, path.format(launch=w.alice.launch_id), 403, "for instructors", data)
    call(w.tara, method, path.format(launch=w.tara.launch_id), 403, "for instructors", data)
    stolen = path.format(launch=w.ida.launch_id)
    for who in (w.ivan, w.other_ida, w.alice, w.anon):
        call(who, method, stolen, 403, "another browser", data)
    assert w.counts() == before
    with w.app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(tutor_ops.Invitation)) == 0


def claim(w: World, call: Call) -> None:
    """Tara holds alice's request (an earlier check of the same chain may have claimed it)."""
    if w.row(w.alice_req)[0] != HelpStatus.CLAIMED.value:
        call(w.tara, "POST", f"/tutor/requests/{w.alice_req}/claim", 200)


# -- learner ---------------------------------------------------------------------------------


@covers("learner.new_request")
def _new_request(w: World, call: Call) -> None:
    url = "/l/{launch}/help/new"
    call(w.bob, "GET", url.format(launch=w.alice.launch_id), 403, "another browser")
    call(w.anon, "GET", url.format(launch=w.alice.launch_id), 403, "another browser")
    call(w.ida, "GET", url.format(launch=w.ida.launch_id), 403, "for learners")
    call(w.tara, "GET", url.format(launch=w.tara.launch_id), 403, "for learners")
    call(w.bob, "GET", url.format(launch=w.bob.launch_id), 200, 'data-testid="help-form"')
    # Alice has an open request: the form sends her to it, not to a second one.
    found = call(w.alice, "GET", url.format(launch=w.alice.launch_id), 302)
    assert found.headers["Location"].endswith(f"/help/{w.alice_req}")


@covers("learner.create_request")
def _create_request(w: World, call: Call) -> None:
    url, data = "/l/{launch}/help", {"question": "Please help me with this exercise today."}
    before = w.counts()
    call(w.bob, "POST", url.format(launch=w.alice.launch_id), 403, "another browser", data)
    call(w.anon, "POST", url.format(launch=w.alice.launch_id), 403, "another browser", data)
    call(w.ida, "POST", url.format(launch=w.ida.launch_id), 403, "for learners", data)
    call(w.tara, "POST", url.format(launch=w.tara.launch_id), 403, "for learners", data)
    assert w.counts() == before
    mine = call(w.bob, "POST", url.format(launch=w.bob.launch_id), 200, data=data).get_json()
    assert mine["request_id"] not in (w.alice_req, w.charlie_req, w.other_req)
    again = call(w.alice, "POST", url.format(launch=w.alice.launch_id), 200, data=data)
    assert again.get_json()["request_id"] == w.alice_req


@covers("learner.status")
def _status(w: World, call: Call) -> None:
    learner_denials(w, call, "GET", "/l/{launch}/help/{req}")
    page = call(w.alice, "GET", f"/l/{w.alice.launch_id}/help/{w.alice_req}", 200, Q_ALICE)
    assert Q_CHARLIE not in page.get_data(as_text=True)


@covers("learner.status_json")
def _status_json(w: World, call: Call) -> None:
    learner_denials(w, call, "GET", "/l/{launch}/help/{req}/status.json")
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/status.json"
    assert call(w.alice, "GET", url, 200).get_json()["request_id"] == w.alice_req


@covers("learner.cancel")
def _cancel(w: World, call: Call) -> None:
    learner_denials(w, call, "POST", "/l/{launch}/help/{req}/cancel")
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/cancel"
    assert call(w.alice, "POST", url, 200).get_json()["status"] == "cancelled"


@covers("learner.away")
def _away(w: World, call: Call) -> None:
    learner_denials(w, call, "POST", "/l/{launch}/help/{req}/away")
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/away"
    assert call(w.alice, "POST", url, 200).get_json()["away_until"] is not None


@covers("learner.back")
def _back(w: World, call: Call) -> None:
    call(w.alice, "POST", f"/l/{w.alice.launch_id}/help/{w.alice_req}/away", 200)
    learner_denials(w, call, "POST", "/l/{launch}/help/{req}/back")
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/back"
    assert call(w.alice, "POST", url, 200).get_json()["away_until"] is None


@covers("learner.rate")
def _rate(w: World, call: Call) -> None:
    if w.row(w.alice_req)[0] != HelpStatus.RESOLVED.value:
        claim(w, call)
        resolve = f"/tutor/requests/{w.alice_req}/resolve"
        call(w.tara, "POST", resolve, 200, data={"outcome": "solved"})
    learner_denials(w, call, "POST", "/l/{launch}/help/{req}/rate", {"rating": "1"})
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/rate"
    assert call(w.alice, "POST", url, 200, data={"rating": "4"}).get_json()["rating"] == 4


@covers("learner.chat")
def _chat(w: World, call: Call) -> None:
    claim(w, call)
    learner_denials(w, call, "POST", "/l/{launch}/help/{req}/chat", {"body": "let me in"})
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/chat"
    assert call(w.alice, "POST", url, 200, data={"body": "hi"}).get_json()["body"] == "hi"


@covers("learner.messages")
def _learner_messages(w: World, call: Call) -> None:
    claim(w, call)
    call(w.tara, "POST", f"/tutor/requests/{w.alice_req}/chat", 200, data={"body": "secret"})
    learner_denials(w, call, "GET", "/l/{launch}/help/{req}/messages.json")
    url = f"/l/{w.alice.launch_id}/help/{w.alice_req}/messages.json"
    log = call(w.alice, "GET", url, 200).get_json()["messages"]
    assert log[-1]["body"] == "secret" and log[-1]["author"] == "tutor"


# -- tutor: account --------------------------------------------------------------------------


@covers("tutor.login_form")
def _login_form(w: World, call: Call) -> None:
    for who in (w.anon, w.alice, w.tara):
        call(who, "GET", "/tutor/login", 200, 'data-testid="tutor-login"')


@covers("tutor.login")
def _login(w: World, call: Call) -> None:
    with w.app.extensions["lifeline"].db.transaction() as session:
        session.add(
            Tutor(
                display_name="Eve Expert",
                email="eve@example.org",
                password_hash=PasswordHasher().hash("correct horse battery"),
            )
        )
    wrong = {"email": "eve@example.org", "password": "wrong password!"}
    call(w.alice, "POST", "/tutor/login", 401, "do not match", wrong)
    call(w.alice, "GET", "/tutor/queue.json", 401)
    right = {"email": "eve@example.org", "password": "correct horse battery"}
    call(w.anon, "POST", "/tutor/login", 303, data=right)
    assert call(w.anon, "GET", "/tutor/queue.json", 200).get_json()["queue"] == []  # no pools


@covers("tutor.logout")
def _logout(w: World, call: Call) -> None:
    no_tutor_session(w, call, "POST", "/tutor/logout")
    call(w.tara, "POST", "/tutor/logout", 303)
    call(w.tara, "GET", "/tutor/queue.json", 401, "Log in as a tutor first")
    call(w.tom, "GET", "/tutor/queue.json", 200)  # only Tara's browser was signed out


def _invitation(w: World) -> str:
    with w.app.extensions["lifeline"].db.transaction() as session:
        course = session.scalars(select(Course).where(Course.context_id == "course-1")).first()
        assert course is not None
        pool = tutor_ops.ensure_course_pool(session, course)
        return tutor_ops.invite(session, "newbie@example.org", pool.id, "Ida").token


@covers("tutor.invitation")
def _invitation_page(w: World, call: Call) -> None:
    token = _invitation(w)
    call(w.anon, "GET", "/tutor/invite/not-a-token", 404, "not valid")
    call(w.alice, "GET", "/tutor/invite/" + "x" * 300, 404, "not valid")
    call(w.anon, "GET", f"/tutor/invite/{token}", 200, "newbie@example.org")


@covers("tutor.accept")
def _accept(w: World, call: Call) -> None:
    token = _invitation(w)
    data = {"display_name": "Newbie", "password": "a long enough password"}
    call(w.anon, "POST", "/tutor/invite/not-a-token", 400, "not valid", data)
    call(w.anon, "POST", f"/tutor/invite/{token}", 303, data=data)
    queue = call(w.anon, "GET", "/tutor/queue.json", 200).get_json()["queue"]
    assert [item["request_id"] for item in queue] == [w.alice_req]  # course-1's pool only


# -- tutor: dashboard ------------------------------------------------------------------------


def _queue_ids(w: World, call: Call, who: Actor) -> list[int]:
    return [i["request_id"] for i in call(who, "GET", "/tutor/queue.json", 200).get_json()["queue"]]


@covers("tutor.queue_json")
def _queue_json(w: World, call: Call) -> None:
    no_tutor_session(w, call, "GET", "/tutor/queue.json")
    assert _queue_ids(w, call, w.tara) == [w.alice_req]
    assert _queue_ids(w, call, w.tom) == [w.alice_req]
    assert _queue_ids(w, call, w.tess) == [w.charlie_req]
    assert _queue_ids(w, call, w.other_tara) == [w.other_req]


@covers("tutor.dashboard")
def _dashboard(w: World, call: Call) -> None:
    no_tutor_session(w, call, "GET", "/tutor/")
    for who, mine, theirs in (
        (w.tara, Q_ALICE, (Q_CHARLIE, Q_OTHER)),
        (w.tess, Q_CHARLIE, (Q_ALICE, Q_OTHER)),
        (w.other_tara, Q_OTHER, (Q_ALICE, Q_CHARLIE)),
    ):
        page = call(who, "GET", "/tutor/", 200, mine).get_data(as_text=True)
        assert not any(q in page for q in theirs)


@covers("tutor.queue_fragment")
def _queue_fragment(w: World, call: Call) -> None:
    no_tutor_session(w, call, "GET", "/tutor/queue.fragment")
    page = call(w.tara, "GET", "/tutor/queue.fragment", 200, Q_ALICE).get_data(as_text=True)
    assert Q_CHARLIE not in page and Q_OTHER not in page
    page = call(w.other_tara, "GET", "/tutor/queue.fragment", 200, Q_OTHER).get_data(as_text=True)
    assert Q_ALICE not in page


@covers("tutor.availability")
def _availability(w: World, call: Call) -> None:
    data = {"availability": "available", "skills": "loops", "capacity": "2"}
    no_tutor_session(w, call, "POST", "/tutor/availability", data)
    assert call(w.tara, "POST", "/tutor/availability", 200, data=data).get_json() == {
        "availability": "available",
        "skills": ["loops"],
    }
    with w.app.extensions["lifeline"].db.transaction() as session:
        changed = session.scalars(select(Tutor).where(Tutor.availability == "available")).all()
        assert [t.display_name for t in changed] == ["Tara Tutor"]


@covers("tutor.heartbeat")
def _heartbeat(w: World, call: Call) -> None:
    no_tutor_session(w, call, "POST", "/tutor/heartbeat")
    assert call(w.tara, "POST", "/tutor/heartbeat", 200).get_json() == {"availability": "offline"}


# -- tutor: requests -------------------------------------------------------------------------


@covers("tutor.session_page")
def _session_page(w: World, call: Call) -> None:
    no_tutor_session(w, call, "GET", f"/tutor/requests/{w.alice_req}")
    outside_pools(w, call, "GET", "/tutor/requests/{req}")
    call(w.tara, "GET", f"/tutor/requests/{w.alice_req}", 200, Q_ALICE)
    call(w.tess, "GET", f"/tutor/requests/{w.charlie_req}", 200, Q_CHARLIE)


@covers("tutor.claim")
def _claim(w: World, call: Call) -> None:
    no_tutor_session(w, call, "POST", f"/tutor/requests/{w.alice_req}/claim")
    outside_pools(w, call, "POST", "/tutor/requests/{req}/claim")
    claim(w, call)
    call(w.tom, "POST", f"/tutor/requests/{w.alice_req}/claim", 409, "Tara Tutor already claimed")
    assert w.row(w.alice_req)[0] == "claimed"


def _holder_only(w: World, call: Call, action: str, data: dict[str, Any], needle: str) -> None:
    """Alice's request is held by Tara: nobody else may ``action`` it, Tara may."""
    url = f"/tutor/requests/{w.alice_req}/{action}"
    claim(w, call)
    no_tutor_session(w, call, "POST", url, data)
    outside_pools(w, call, "POST", "/tutor/requests/{req}/" + action, data)
    before = w.row(w.alice_req), w.counts()
    call(w.tom, "POST", url, 403, needle, data)
    assert (w.row(w.alice_req), w.counts()) == before
    call(w.tara, "POST", url, 200, data=data)


@covers("tutor.release")
def _release(w: World, call: Call) -> None:
    _holder_only(w, call, "release", {}, "Only Tara Tutor, who holds it")
    assert w.row(w.alice_req)[0] == "queued"
    # Once released, nobody holds it: releasing again is a clear 409, not a silent success.
    call(w.tara, "POST", f"/tutor/requests/{w.alice_req}/release", 409, "not held by you")


@covers("tutor.transfer")
def _transfer(w: World, call: Call) -> None:
    _holder_only(w, call, "transfer", {}, "Only the tutor who holds this request")
    assert w.row(w.alice_req)[0] == "queued"


@covers("tutor.resolve")
def _resolve(w: World, call: Call) -> None:
    _holder_only(w, call, "resolve", {"outcome": "solved"}, "Only Tara Tutor, who holds it")
    assert w.row(w.alice_req)[0] == "resolved"
    again = {"outcome": "solved"}
    call(w.tom, "POST", f"/tutor/requests/{w.alice_req}/resolve", 409, "not held by you", again)


@covers("tutor.meeting")
def _meeting(w: World, call: Call) -> None:
    data = {"meeting_url": "https://meet.example.org/tara"}
    _holder_only(w, call, "meeting", data, "Only Tara Tutor, who holds it")
    status = w.alice.get(f"/l/{w.alice.launch_id}/help/{w.alice_req}/status.json").get_json()
    assert status["meeting_url"] == "https://meet.example.org/tara"


@covers("tutor.chat")
def _tutor_chat(w: World, call: Call) -> None:
    _holder_only(w, call, "chat", {"body": "hello"}, "Only the tutor who holds this request")


@covers("tutor.messages")
def _tutor_messages(w: World, call: Call) -> None:
    claim(w, call)
    call(
        w.alice, "POST", f"/l/{w.alice.launch_id}/help/{w.alice_req}/chat", 200, data={"body": "x"}
    )
    url = f"/tutor/requests/{w.alice_req}/messages.json"
    no_tutor_session(w, call, "GET", url)
    outside_pools(w, call, "GET", "/tutor/requests/{req}/messages.json")
    call(w.tom, "GET", url, 403, "only for the learner and their tutor")
    log = call(w.tara, "GET", url, 200).get_json()["messages"]
    assert log[-1]["body"] == "x" and log[-1]["author"] == "learner"


# -- instructor ------------------------------------------------------------------------------


@covers("instructor.settings_page")
def _settings_page(w: World, call: Call) -> None:
    instructor_denials(w, call, "GET", "/l/{launch}/course/settings")
    call(
        w.ida,
        "GET",
        f"/l/{w.ida.launch_id}/course/settings",
        200,
        "Tutor queue for Course course-1",
    )
    call(w.ivan, "GET", f"/l/{w.ivan.launch_id}/course/settings", 200, "Course course-2")


@covers("instructor.save_settings")
def _save_settings(w: World, call: Call) -> None:
    form = {
        "skills": "recursion",
        "cooldown_minutes": "0",
        "daily_cap": "0",
        "sla_minutes": "5",
        "step_away_minutes": "10",
    }
    instructor_denials(w, call, "POST", "/l/{launch}/course/settings", form)
    call(w.ida, "POST", f"/l/{w.ida.launch_id}/course/settings", 303, data=form)
    with w.app.extensions["lifeline"].db.transaction() as session:
        from lti_tool.help.models import CourseSettings

        rows = session.scalars(select(CourseSettings)).all()
        titles = [session.get(Course, r.course_id) for r in rows]
        assert [(c.platform_id, c.context_id) for c in titles if c] == [(1, "course-1")]


@covers("instructor.invite")
def _invite(w: World, call: Call) -> None:
    data = {"email": "expert@example.org"}
    instructor_denials(w, call, "POST", "/l/{launch}/course/invite", data)
    # Ida cannot invite into course-2's pool through her course-1 launch.
    with w.app.extensions["lifeline"].db.transaction() as session:
        course2 = session.scalars(select(Course).where(Course.context_id == "course-2")).one()
        foreign_pool = tutor_ops.ensure_course_pool(session, course2).id
    url = f"/l/{w.ida.launch_id}/course/invite"
    foreign = {"email": "expert@example.org", "pool_id": str(foreign_pool)}
    call(w.ida, "POST", url, 400, "does not serve this course", foreign)
    call(w.ida, "POST", url, 200, "/tutor/invite/", data)


@covers("instructor.sync_roster")
def _sync_roster(w: World, call: Call) -> None:
    from lti_tool.lms.models import CourseServices

    instructor_denials(w, call, "POST", "/l/{launch}/course/roster/sync")
    # No launch of these courses offered a roster service: a clear 409, nothing stored.
    url = f"/l/{w.ida.launch_id}/course/roster/sync"
    call(w.ida, "POST", url, 409, "has not offered this course&#39;s roster")
    with w.app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(CourseServices)) == 0


def _course_queue_ids(w: World, call: Call, who: Actor) -> list[int]:
    data = call(who, "GET", f"/l/{who.launch_id}/course/queue.json", 200).get_json()
    return [r["id"] for r in data["live"] + data["history"]]


@covers("instructor.queue_json")
def _course_queue_json(w: World, call: Call) -> None:
    instructor_denials(w, call, "GET", "/l/{launch}/course/queue.json")
    assert _course_queue_ids(w, call, w.ida) == [w.alice_req]
    assert _course_queue_ids(w, call, w.ivan) == [w.charlie_req]
    assert _course_queue_ids(w, call, w.other_ida) == [w.other_req]


@covers("instructor.queue_page")
def _course_queue_page(w: World, call: Call) -> None:
    instructor_denials(w, call, "GET", "/l/{launch}/course/queue")
    for who, mine, theirs in (
        (w.ida, Q_ALICE[:60], (Q_CHARLIE[:60], Q_OTHER[:60])),
        (w.ivan, Q_CHARLIE[:60], (Q_ALICE[:60], Q_OTHER[:60])),
        (w.other_ida, Q_OTHER[:60], (Q_ALICE[:60], Q_CHARLIE[:60])),
    ):
        page = call(who, "GET", f"/l/{who.launch_id}/course/queue", 200, mine)
        assert not any(q in page.get_data(as_text=True) for q in theirs)


# -- admin and dynamic registration -----------------------------------------------------------

ADMIN_EMAIL, ADMIN_PASSWORD = "root@lifeline.example", "admin password for tests"
ADMIN_DENIED = "Lifeline's administrators"


def _admin(w: World) -> Actor:
    """A signed-in Lifeline administrator (made once per world)."""
    found: Actor | None = getattr(w, "_admin_actor", None)
    if found is None:
        from lti_tool.admin.accounts import create_admin

        with w.app.extensions["lifeline"].db.transaction() as session:
            create_admin(session, ADMIN_EMAIL, ADMIN_PASSWORD)
        found = _anonymous(w.app)
        signed_in = found.post("/admin/login", {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
        assert signed_in.status_code == 303, signed_in.get_data(as_text=True)[:400]
        w._admin_actor = found  # type: ignore[attr-defined]
    return found


def _platform_state(w: World) -> list[tuple[int, str, list[str]]]:
    from lti_tool.lti.models import Platform

    with w.app.extensions["lifeline"].db.transaction() as session:
        return [
            (p.id, p.status, [d.deployment_id for d in p.deployments])
            for p in session.scalars(select(Platform).order_by(Platform.id))
        ]


def _not_admins(w: World) -> list[Actor]:
    """Everyone of the world: launches of every role, both platforms, and a stranger."""
    return [w.alice, w.ida, w.tara, w.other_ida, w.other_tara, w.anon]


def admin_denials(w: World, call: Call, url: str, data: dict[str, Any]) -> None:
    before = _platform_state(w), w.counts()
    for who in _not_admins(w):
        call(who, "POST", url, 403, ADMIN_DENIED, data)
    assert (_platform_state(w), w.counts()) == before


@covers("admin.login_form")
def _admin_login_form(w: World, call: Call) -> None:
    for who in _not_admins(w):
        call(who, "GET", "/admin/login", 200, 'data-testid="admin-login"')
    call(_admin(w), "GET", "/admin/login", 303)


@covers("admin.login")
def _admin_login(w: World, call: Call) -> None:
    _admin(w)  # the account exists; nobody else gets in with a guess
    for number, who in enumerate(_not_admins(w)):
        # One guess at the admin's password each would lock the account (it should), so
        # the others try being an admin under their own name.
        email = ADMIN_EMAIL if number == 0 else f"person{number}@lms.example"
        data = {"email": email, "password": "a wrong guess"}
        call(who, "POST", "/admin/login", 401, "do not match", data)
    right = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
    call(_anonymous(w.app), "POST", "/admin/login", 303, "", right)


@covers("admin.dashboard")
def _admin_dashboard(w: World, call: Call) -> None:
    for who in _not_admins(w):
        response = call(who, "GET", "/admin/", 303)
        assert response.headers["Location"].endswith("/admin/login")
    page = call(_admin(w), "GET", "/admin/", 200, 'data-testid="admin-platforms"')
    assert page.get_data(as_text=True).count('data-testid="admin-platform"') == 2


@covers("admin.platform_status")
def _admin_platform_status(w: World, call: Call) -> None:
    pid = _platform_state(w)[0][0]
    url = f"/admin/platforms/{pid}/status"
    admin_denials(w, call, url, {"action": "disable"})
    call(_admin(w), "POST", url, 303, "", {"action": "disable"})
    assert _platform_state(w)[0][1] == "disabled"
    call(_admin(w), "POST", url, 303, "", {"action": "enable"})
    assert _platform_state(w)[0][1] == "active"
    call(_admin(w), "POST", "/admin/platforms/999999/status", 404, "no platform", {"action": "x"})


@covers("admin.platform_deployment")
def _admin_platform_deployment(w: World, call: Call) -> None:
    pid = _platform_state(w)[1][0]
    url = f"/admin/platforms/{pid}/deployments"
    admin_denials(w, call, url, {"deployment_id": "dep-from-a-stranger"})
    call(_admin(w), "POST", url, 303, "", {"deployment_id": "dep-from-the-admin"})
    assert "dep-from-the-admin" in _platform_state(w)[1][2]


@covers("admin.platform_new_deployments")
def _admin_platform_new_deployments(w: World, call: Call) -> None:
    from lti_tool.lti.models import Platform

    pid = _platform_state(w)[1][0]
    url = f"/admin/platforms/{pid}/new-deployments"
    admin_denials(w, call, url, {"accept": "yes"})
    call(_admin(w), "POST", url, 303, "", {"accept": "yes"})
    with w.app.extensions["lifeline"].db.transaction() as session:
        platform = session.get(Platform, pid)
        assert platform is not None and platform.accept_new_deployments


@covers("admin.registration_setting")
def _admin_registration_setting(w: World, call: Call) -> None:
    from lti_tool.admin.settings import registration_status

    url = "/admin/settings/registration"
    admin_denials(w, call, url, {"registration_status": "active"})
    with w.app.extensions["lifeline"].db.transaction() as session:
        assert registration_status(session).value == "pending"
    call(_admin(w), "POST", url, 303, "", {"registration_status": "active"})
    with w.app.extensions["lifeline"].db.transaction() as session:
        assert registration_status(session).value == "active"


@covers("admin.logout")
def _admin_logout(w: World, call: Call) -> None:
    admin_denials(w, call, "/admin/logout", {})
    admin = _admin(w)
    call(admin, "GET", "/admin/", 200)  # the strangers' attempts did not end it
    call(admin, "POST", "/admin/logout", 303)
    call(admin, "GET", "/admin/", 303)


@covers("registration.start")
def _registration_start(w: World, call: Call) -> None:
    """Public by design (the LMS opens it); without a usable configuration it stores nothing."""
    before = _platform_state(w)
    for who in _not_admins(w):
        call(who, "GET", "/lti/register", 400, "missing_openid_configuration")
        url = "/lti/register?openid_configuration=http://lms.example.edu/config"
        call(who, "GET", url, 400, "must use https")
    assert _platform_state(w) == before


@covers("registration.confirm")
def _registration_confirm(w: World, call: Call) -> None:
    """A Register press needs a handle only a confirmation page holds; a forged one does
    nothing, whoever sends it."""
    before = _platform_state(w)
    for who in [*_not_admins(w), _admin(w)]:
        for handle in ("", "A" * 43):
            data = {"handle": handle, "name": "Forged"}
            call(who, "POST", "/lti/register/confirm", 400, "registration_page_expired", data)
    assert _platform_state(w) == before


# -- the tests -------------------------------------------------------------------------------


# Checks run in chains, one world per chain (building a world is most of the cost): each check
# leaves the world in a state the next one of its chain expects.
CHAINS = {
    "reads": [
        "instructor.settings_page",
        "instructor.queue_json",
        "instructor.queue_page",
        "learner.new_request",
        "learner.status",
        "learner.status_json",
        "tutor.login_form",
        "tutor.queue_json",
        "tutor.dashboard",
        "tutor.queue_fragment",
        "tutor.session_page",
        "tutor.heartbeat",
        "tutor.invitation",
    ],
    "learner-actions": ["learner.create_request", "learner.away", "learner.back", "learner.cancel"],
    "session": [
        "tutor.claim",
        "learner.chat",
        "tutor.chat",
        "learner.messages",
        "tutor.messages",
        "tutor.meeting",
        "tutor.release",
    ],
    "finish": ["tutor.transfer", "tutor.resolve", "learner.rate"],
    "accounts": [
        "instructor.save_settings",
        "instructor.sync_roster",
        "instructor.invite",
        "tutor.availability",
        "tutor.logout",
        "tutor.login",
        "tutor.accept",
    ],
    "admin": [
        "admin.login_form",
        "admin.login",
        "admin.dashboard",
        "registration.start",
        "registration.confirm",
        "admin.platform_status",
        "admin.platform_deployment",
        "admin.platform_new_deployments",
        "admin.registration_setting",
        "admin.logout",
    ],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_access(chain: str, world: World) -> None:
    for endpoint in CHAINS[chain]:
        call = Call(world.app)
        CHECKS[endpoint](world, call)
        assert endpoint in call.hit, f"the check for {endpoint} never called it"


def test_every_endpoint_has_an_access_check(app: Flask) -> None:
    endpoints = {
        rule.endpoint
        for rule in app.url_map.iter_rules()
        if rule.endpoint.split(".", 1)[0] in BLUEPRINTS
    }
    assert len(endpoints) > 30
    missing = endpoints - set(CHECKS)
    assert not missing, f"endpoints without an access check: {sorted(missing)}"
    assert not set(CHECKS) - endpoints, "checks for endpoints that no longer exist"
    chained = [endpoint for chain in CHAINS.values() for endpoint in chain]
    assert sorted(chained) == sorted(CHECKS), "every check runs in exactly one chain"


def test_same_context_and_sub_on_two_platforms_never_mix(world: World) -> None:
    """Platform B's "course-1" and "alice" are another course and another person."""
    w = world
    with w.app.extensions["lifeline"].db.transaction() as session:
        courses = session.scalars(select(Course).where(Course.context_id == "course-1")).all()
        alices = session.scalars(select(Person).where(Person.sub == "alice")).all()
        assert len(courses) == 2 and len({c.platform_id for c in courses}) == 2
        assert len(alices) == 2 and len({p.platform_id for p in alices}) == 2
        mine = session.get(HelpRequest, w.alice_req)
        theirs = session.get(HelpRequest, w.other_req)
        assert mine is not None and theirs is not None
        assert mine.course_id != theirs.course_id and mine.learner_id != theirs.learner_id
        assert mine.pool_id != theirs.pool_id and mine.platform_id != theirs.platform_id
        # The two TAs with the same sub are two tutors, each in their own course's pool.
        taras = session.scalars(select(Tutor).where(Tutor.display_name.like("Tara%"))).all()
        assert len(taras) == 2
        pools = [tutor_ops.tutor_pool_ids(session, t.id) for t in taras]
        assert pools[0].isdisjoint(pools[1])
    # Alice on platform B asking again finds her own platform-B request, not alice-A's.
    again = w.other_alice.post(f"/l/{w.other_alice.launch_id}/help", {"question": Q_OTHER})
    assert again.get_json()["request_id"] == w.other_req
    # A claim by platform B's tutor touches only platform B.
    assert w.other_tara.post(f"/tutor/requests/{w.other_req}/claim").status_code == 200
    assert w.row(w.alice_req)[:3] == (HelpStatus.QUEUED.value, 1, None)
    assert w.tara.post(
        f"/tutor/requests/{w.other_req}/resolve", {"outcome": "solved"}
    ).status_code == (404)
    status = w.alice.get(f"/l/{w.alice.launch_id}/help/{w.alice_req}/status.json").get_json()
    assert status["status"] == "queued" and status["estimate"]["tutors_available"] == 0


def test_a_launch_by_someone_else_ends_the_tutor_session_of_a_shared_browser(
    app: Flask, platform: TestPlatform
) -> None:
    """A TA used the lab computer; a learner then opens the course in the same browser."""
    shared = launch_as(app, platform, "tutor", "ta-tara", "Tara Tutor")
    assert shared.get("/tutor/queue.json").status_code == 200
    roles = "https://purl.imsglobal.org/spec/lti/claim/roles"
    # The same person launching again, even as a learner of another course, keeps it.
    context = {"id": "course-2", "title": "Course 2"}
    own = platform.launch(
        shared.client,
        sub="ta-tara",
        name="Tara Tutor",
        **{roles: [ROLE_LEARNER], "https://purl.imsglobal.org/spec/lti/claim/context": context},
    )
    assert own.status_code == 200
    assert shared.get("/tutor/queue.json").status_code == 200
    response = platform.launch(
        shared.client,
        sub="student-7",
        name="Sam Student",
        **{roles: [ROLE_LEARNER]},
    )
    assert response.status_code == 200
    denied = shared.get("/tutor/queue.json", json=True)
    assert denied.status_code == 401 and "Log in as a tutor first" in denied.get_json()["detail"]
    assert shared.post("/tutor/requests/1/claim").status_code == 401
