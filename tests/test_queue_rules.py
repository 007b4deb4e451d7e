"""The queue's rules: its order, places kept across release / no-show / stepping away, the
limits (cooldown, daily cap, one active request, tutor capacity), the wait estimate, what a
tutor sees first, and the audit log written in the same transaction as each change."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from lti_tool.courses import Course, Person
from lti_tool.help import operations as ops
from lti_tool.help import queue
from lti_tool.help.models import CoursePool, HelpEvent, HelpRequest
from lti_tool.tutors import operations as tutor_ops
from lti_tool.tutors.models import Tutor
from tests.helpers import Actor, launch_as
from tests.platform import TestPlatform

NOW = dt.datetime.now(dt.UTC)
SETTINGS = {"cooldown_minutes": "0", "daily_cap": "0", "sla_minutes": "5"}


@contextmanager
def db(app: Flask) -> Iterator[Session]:
    with app.extensions["lifeline"].db.transaction() as session:
        yield session


def ask(actor: Actor, question: str = "") -> int:
    question = question or f"{actor.launch_id[:6]}: my loop stops one short and I cannot see why."
    response = actor.post(f"/l/{actor.launch_id}/help", {"question": question})
    assert response.status_code == 200, response.get_data(as_text=True)
    return int(response.get_json()["request_id"])


def status(actor: Actor, request_id: int) -> dict[str, Any]:
    response = actor.get(f"/l/{actor.launch_id}/help/{request_id}/status.json")
    assert response.status_code == 200
    return dict(response.get_json())


def tutor_queue(tutor: Actor) -> list[dict[str, Any]]:
    response = tutor.get("/tutor/queue.json")
    assert response.status_code == 200
    return list(response.get_json()["queue"])


def order(tutor: Actor) -> list[int]:
    return [item["request_id"] for item in tutor_queue(tutor)]


def configure(app: Flask, platform: TestPlatform, **fields: str) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    form = {**SETTINGS, "step_away_minutes": "10", **fields}
    response = ida.post(f"/l/{ida.launch_id}/course/settings", form, json=False)
    assert response.status_code == 303, response.get_data(as_text=True)[:400]


def learners(app: Flask, platform: TestPlatform, *names: str, **kw: Any) -> list[Actor]:
    return [launch_as(app, platform, "learner", name, name.title(), **kw) for name in names]


def events(app: Flask, request_id: int | None = None) -> list[tuple[str, str, Any, Any]]:
    with db(app) as session:
        query = select(HelpEvent).order_by(HelpEvent.id)
        if request_id is not None:
            query = query.where(HelpEvent.request_id == request_id)
        return [(e.kind, e.actor, e.from_status, e.to_status) for e in session.scalars(query)]


# -- order ---------------------------------------------------------------------------------


def test_order_is_priority_class_then_severity_then_time_queued(
    app: Flask, platform: TestPlatform
) -> None:
    people = learners(app, platform, "ann", "ben", "cat", "dan", "eve")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    ids = [ask(p) for p in people]
    # (priority, severity, minutes after NOW it was queued)
    shape = {
        ids[0]: (0, 0.9, 1),
        ids[1]: (1, 0.1, 5),
        ids[2]: (0, 0.9, 0),
        ids[3]: (0, 0.2, -10),
        ids[4]: (1, 0.5, 9),
    }
    with db(app) as session:
        for request_id, (priority, severity, minutes) in shape.items():
            session.execute(
                update(HelpRequest)
                .where(HelpRequest.id == request_id)
                .values(
                    priority=priority,
                    severity=severity,
                    queued_at=NOW + dt.timedelta(minutes=minutes),
                )
            )
    expected = [ids[4], ids[1], ids[2], ids[0], ids[3]]
    assert order(tara) == expected
    positions = {i: status(p, i)["position"] for p, i in zip(people, ids, strict=True)}
    assert [positions[i] for i in expected] == [1, 2, 3, 4, 5]
    ida = launch_as(app, platform, "instructor", "ida")
    live = ida.get(f"/l/{ida.launch_id}/course/queue.json").get_json()["live"]
    assert [row["id"] for row in live] == expected


def test_severity_from_detection_sets_the_place(app: Flask, platform: TestPlatform) -> None:
    """``request_help(severity=...)`` is how a stuck-detector ranks a request."""
    ann, _ben = learners(app, platform, "ann", "ben")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    first = ask(ann)
    with db(app) as session:
        course = session.scalars(select(Course)).one()
        person = session.scalars(select(Person).where(Person.sub == "ben")).one()
        new = ops.NewRequest("Ben is stuck on the same exercise for twenty minutes now.")
        second, _ = ops.request_help(
            session, learner=person, course=course, exercise_id=None, new=new, severity=0.8
        )
        second_id = second.id
    assert order(tara) == [second_id, first]
    assert status(ann, first)["ahead"] == 1


# -- places kept ---------------------------------------------------------------------------


def test_release_and_no_show_keep_the_original_place(app: Flask, platform: TestPlatform) -> None:
    configure(app, platform, step_away_minutes="5")
    ann, ben, cat = learners(app, platform, "ann", "ben", "cat")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    a, b, c = ask(ann), ask(ben), ask(cat)
    with db(app) as session:
        queued_at = {r.id: r.queued_at for r in session.scalars(select(HelpRequest))}

    assert tara.post(f"/tutor/requests/{a}/claim").status_code == 200
    assert order(tara) == [b, c] and status(ben, b)["position"] == 1
    no_show = tara.post(f"/tutor/requests/{a}/resolve", {"outcome": "no_show", "note": "gone"})
    assert no_show.status_code == 200 and no_show.get_json()["status"] == "queued"
    mine = status(ann, a)
    assert (mine["status"], mine["position"]) == ("queued", 1)
    away_until = dt.datetime.fromisoformat(mine["away_until"])
    assert (
        dt.timedelta(minutes=4.9) < away_until - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=5)
    )
    assert [i["away"] for i in tutor_queue(tara)] == [True, False, False]

    assert tara.post(f"/tutor/requests/{b}/claim").status_code == 200
    assert tara.post(f"/tutor/requests/{b}/release").status_code == 200
    assert order(tara) == [a, b, c]
    with db(app) as session:
        assert {r.id: r.queued_at for r in session.scalars(select(HelpRequest))} == queued_at

    # Ann never came back: once her time is up, the queue closes her request.
    with db(app) as session:
        assert ops.expire_away(session, away_until - dt.timedelta(seconds=1)) == []
        assert ops.expire_away(session, away_until + dt.timedelta(seconds=1)) == [a]
    assert status(ann, a)["status"] == "cancelled" and status(ann, a)["outcome"] == "no_show"
    assert order(tara) == [b, c] and status(ben, b)["position"] == 1
    assert events(app, a)[-1] == ("request.expired", "system", "queued", "cancelled")


def test_step_away_keeps_the_place_for_the_configured_time(
    app: Flask, platform: TestPlatform
) -> None:
    configure(app, platform, step_away_minutes="3")
    ann, ben = learners(app, platform, "ann", "ben")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    a, b = ask(ann), ask(ben)
    away = ann.post(f"/l/{ann.launch_id}/help/{a}/away").get_json()
    until = dt.datetime.fromisoformat(away["away_until"])
    assert dt.timedelta(minutes=2.9) < until - dt.datetime.now(dt.UTC) <= dt.timedelta(minutes=3)
    assert (status(ann, a)["position"], status(ben, b)["position"]) == (1, 2)
    # Coming back clears it; stepping away again restarts the clock.
    assert ann.post(f"/l/{ann.launch_id}/help/{a}/back").get_json()["away_until"] is None
    with db(app) as session:
        assert ops.expire_away(session, dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)) == []
    assert ann.post(f"/l/{ann.launch_id}/help/{a}/away").status_code == 200
    # Time passes (the away deadline moves into the past); the tutor dashboard expires it.
    with db(app) as session:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        session.execute(update(HelpRequest).where(HelpRequest.id == a).values(away_until=past))
    assert tara.get("/tutor/").status_code == 200
    assert status(ann, a)["status"] == "cancelled"
    assert status(ben, b)["position"] == 1
    assert ann.post(f"/l/{ann.launch_id}/help/{a}/back").status_code == 409


# -- limits --------------------------------------------------------------------------------


def test_cooldown_after_a_session_is_429_with_retry_after(
    app: Flask, platform: TestPlatform
) -> None:
    configure(app, platform, cooldown_minutes="30")
    (ann,) = learners(app, platform, "ann")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    first = ask(ann)
    assert tara.post(f"/tutor/requests/{first}/claim").status_code == 200
    assert tara.post(f"/tutor/requests/{first}/resolve", {"outcome": "solved"}).status_code == 200

    refused = ann.post(f"/l/{ann.launch_id}/help", {"question": "One more question about loops!"})
    assert refused.status_code == 429
    assert 29 * 60 < int(refused.headers["Retry-After"]) <= 30 * 60 + 1
    assert "again in about 30 minute(s)" in refused.get_json()["error"]
    page = ann.post(f"/l/{ann.launch_id}/help", {"question": "One more about loops!"}, json=False)
    assert page.status_code == 429 and "spaces out requests" in page.get_data(as_text=True)
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(HelpRequest)) == 1
        later = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=31)
        session.execute(update(HelpRequest).values(resolved_at=later))
    assert ask(ann) != first


def test_daily_cap_is_429(app: Flask, platform: TestPlatform) -> None:
    configure(app, platform, daily_cap="2")
    ann, ben = learners(app, platform, "ann", "ben")
    for _ in range(2):
        request_id = ask(ann)
        assert ann.post(f"/l/{ann.launch_id}/help/{request_id}/cancel").status_code == 200
    refused = ann.post(f"/l/{ann.launch_id}/help", {"question": "A third question for today."})
    assert refused.status_code == 429 and "today's 2 tutor requests" in refused.get_json()["error"]
    ask(ben)  # the cap is per learner
    with db(app) as session:
        first = session.scalars(select(HelpRequest).order_by(HelpRequest.id)).first()
        assert first is not None
        first.created_at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=25)
    ask(ann)  # a day later, one slot is free again


def test_one_active_request_per_learner_even_with_concurrent_posts(
    app: Flask, platform: TestPlatform
) -> None:
    """Six browsers (or tabs) of one learner press "Ask" at the same moment."""
    tabs = [launch_as(app, platform, "learner", "ann", "Ann") for _ in range(6)]
    launch_as(app, platform, "learner", "ben")
    barrier = threading.Barrier(len(tabs))
    answers: list[tuple[int, Any]] = []
    lock = threading.Lock()

    def press(tab: Actor) -> None:
        token = tab.csrf()
        barrier.wait(timeout=10)
        response = tab.client.post(
            f"/l/{tab.launch_id}/help",
            data={"question": "Ann: my loop stops one short and I cannot see why."},
            headers={"X-CSRF-Token": token, "Accept": "application/json"},
        )
        with lock:
            answers.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=press, args=(tab,)) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [code for code, _ in answers] == [200] * len(tabs)
    assert len({body["request_id"] for _, body in answers}) == 1
    with db(app) as session:
        assert session.scalar(select(func.count()).select_from(HelpRequest)) == 1
        assert session.scalar(select(func.count()).select_from(CoursePool)) == 1
    assert [e[0] for e in events(app)] == ["request.created"]


def test_two_first_requests_of_a_new_course_share_one_pool(
    app: Flask, platform: TestPlatform
) -> None:
    """The course's pool is made on first use; a second transaction making it at the same
    time waits for the first and uses its pool, instead of making a pool nobody serves."""
    launch_as(app, platform, "learner", "ann")
    database = app.extensions["lifeline"].db
    first, second = database.sessionmaker(), database.sessionmaker()
    made: list[int] = []
    try:
        course = first.scalars(select(Course)).one()
        pool_id = tutor_ops.ensure_course_pool(first, course).id  # not committed yet
        done = threading.Event()

        def later() -> None:
            other = second.scalars(select(Course)).one()
            made.append(tutor_ops.ensure_course_pool(second, other).id)
            second.commit()
            done.set()

        thread = threading.Thread(target=later)
        thread.start()
        assert not done.wait(0.5), "the second transaction must wait for the first"
        first.commit()
        thread.join(timeout=10)
        assert done.is_set()
    finally:
        first.close()
        second.close()
    assert made == [pool_id]
    with db(app) as session:
        assert session.scalars(select(CoursePool.pool_id)).all() == [pool_id]


def test_a_tutor_at_capacity_cannot_claim_until_they_resolve(
    app: Flask, platform: TestPlatform
) -> None:
    people = learners(app, platform, "ann", "ben", "cat", "dan")
    tara = launch_as(app, platform, "tutor", "ta-tara", "Tara")
    a, b, c, d = (ask(p) for p in people)
    assert tara.post(f"/tutor/requests/{a}/claim").status_code == 200
    full = tara.post(f"/tutor/requests/{b}/claim")
    assert full.status_code == 409 and "your capacity" in full.get_json()["error"]
    assert status(people[1], b)["status"] == "queued"
    assert [e[0] for e in events(app, b)] == ["request.created"]
    assert tara.post(f"/tutor/requests/{a}/resolve", {"outcome": "solved"}).status_code == 200
    assert tara.post(f"/tutor/requests/{b}/claim").status_code == 200
    # Raising the capacity to two allows exactly one more.
    raised = {"availability": "available", "capacity": "2"}
    assert tara.post("/tutor/availability", raised).status_code == 200
    assert tara.post(f"/tutor/requests/{c}/claim").status_code == 200
    assert tara.post(f"/tutor/requests/{d}/claim").status_code == 409
    assert tara.get("/tutor/queue.json").get_json()["sessions"] == [b, c]


# -- wait estimate -------------------------------------------------------------------------


def _history(app: Flask, minutes: list[float], days_ago: float = 1) -> None:
    """Resolved sessions of known lengths in course-1's pool."""
    with db(app) as session:
        course = session.scalars(select(Course).where(Course.context_id == "course-1")).one()
        pool = tutor_ops.ensure_course_pool(session, course)
        for n, length in enumerate(minutes):
            sub = f"past-{uuid.uuid4().hex[:10]}"
            person = Person(platform_id=course.platform_id, sub=sub, name=f"Past {n}")
            session.add(person)
            session.flush()
            end = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago, minutes=n)
            session.add(
                HelpRequest(
                    platform_id=course.platform_id,
                    course_id=course.id,
                    learner_id=person.id,
                    pool_id=pool.id,
                    status="resolved",
                    question="An older question",
                    claimed_at=end - dt.timedelta(minutes=length),
                    resolved_at=end,
                    queued_at=end - dt.timedelta(minutes=length + 3),
                    created_at=end - dt.timedelta(minutes=length + 3),
                    outcome="solved",
                )
            )


def test_wait_estimate_is_a_range_from_available_tutors_and_recent_sessions(
    app: Flask, platform: TestPlatform
) -> None:
    busy, ann, ben, cat = learners(app, platform, "busy", "ann", "ben", "cat")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    held = ask(busy)
    a, b, c = ask(ann), ask(ben), ask(cat)
    _history(app, [4, 8, 12, 16])  # 25th percentile 4 min, 75th 12 min
    two_slots = {"availability": "available", "capacity": "2"}
    assert tara.post("/tutor/availability", two_slots).status_code == 200
    assert tara.post(f"/tutor/requests/{held}/claim").status_code == 200  # one slot left

    def estimate(who: Actor, request_id: int) -> tuple[Any, ...]:
        e = status(who, request_id)["estimate"]
        return e["ahead"], e["tutors_available"], e["low_minutes"], e["high_minutes"], e["text"]

    assert estimate(ann, a) == (0, 1, None, None, "Any moment now.")
    # Ben waits for half a round of a 2-slot tutor: 0.5 x (4..12) minutes, rounded outwards.
    assert estimate(ben, b) == (1, 1, 2, 7, "About 2 to 7 minutes.")
    assert estimate(cat, c) == (2, 1, 4, 13, "About 4 to 13 minutes.")

    # History older than two weeks, or fewer than three sessions, gives the default 6..15.
    with db(app) as session:
        old = dt.datetime.now(dt.UTC) - dt.timedelta(days=15)
        session.execute(
            update(HelpRequest).where(HelpRequest.status == "resolved").values(resolved_at=old)
        )
    _history(app, [1, 1])
    assert queue.DEFAULT_SERVICE_MINUTES == (6.0, 15.0)
    assert estimate(cat, c) == (2, 1, 6, 16, "About 6 to 16 minutes.")

    # With nobody available, the estimate says so instead of inventing a number.
    assert tara.post("/tutor/availability", {"availability": "away"}).status_code == 200
    ahead, available, low, high, text = estimate(cat, c)
    assert (ahead, available, low, high) == (2, 0, None, None)
    assert text.startswith("No tutor is online right now")


# -- what a tutor sees ---------------------------------------------------------------------


def test_requests_stuck_on_the_same_thing_are_grouped(app: Flask, platform: TestPlatform) -> None:
    lab1 = learners(app, platform, "ann", "ben", "cat", resource_link="lab-1")
    (dan,) = learners(app, platform, "dan", resource_link="lab-2")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    ids = [ask(p) for p in [*lab1, dan]]
    similar = {item["request_id"]: item["similar"] for item in tutor_queue(tara)}
    assert similar == {ids[0]: 2, ids[1]: 2, ids[2]: 2, ids[3]: 0}
    # Cat's last error differs from Ann's and Ben's: she is in a group of her own.
    with db(app) as session:
        for request_id, error in ((ids[0], "IndexError"), (ids[1], "IndexError")):
            row = session.get(HelpRequest, request_id)
            assert row is not None
            row.context = {**row.context, "last_error": error}
    similar = {item["request_id"]: item["similar"] for item in tutor_queue(tara)}
    assert similar == {ids[0]: 1, ids[1]: 1, ids[2]: 0, ids[3]: 0}
    page = tara.get("/tutor/").get_data(as_text=True)
    assert page.count("1 more stuck on the same thing") == 2


def test_matching_skill_requests_come_first_for_a_tutor_with_skills(
    app: Flask, platform: TestPlatform
) -> None:
    configure(app, platform, skills="Recursion, Loops")
    ann, ben, cat = learners(app, platform, "ann", "ben", "cat")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    tom = launch_as(app, platform, "tutor", "ta-tom")
    question = "Please help, my function gives the wrong result for the empty list."
    a = ann.post(f"/l/{ann.launch_id}/help", {"question": question, "skills": "recursion"})
    b = ben.post(f"/l/{ben.launch_id}/help", {"question": question, "skills": "loops"})
    c = ask(cat)
    ra, rb = a.get_json()["request_id"], b.get_json()["request_id"]
    skills = {"availability": "available", "skills": "loops, SQL"}
    assert tara.post("/tutor/availability", skills).status_code == 200
    seen = [(i["request_id"], i["matches_skills"]) for i in tutor_queue(tara)]
    assert seen == [(rb, True), (c, True), (ra, False)]
    # A tutor who listed no skills sees plain queue order, nothing marked as outside.
    seen = [(i["request_id"], i["matches_skills"]) for i in tutor_queue(tom)]
    assert seen == [(ra, True), (rb, True), (c, True)]


# -- audit log -----------------------------------------------------------------------------


def test_every_transition_is_in_the_audit_log(app: Flask, platform: TestPlatform) -> None:
    configure(app, platform, skills="loops", step_away_minutes="1")
    ann, ben = learners(app, platform, "ann", "ben")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    tom = launch_as(app, platform, "tutor", "ta-tom")
    a, b = ask(ann), ask(ben)
    with db(app) as session:
        person = {p.sub: p.id for p in session.scalars(select(Person))}
        tutor = {t.display_name: t.id for t in session.scalars(select(Tutor))}
    learner_a, learner_b = f"learner:{person['ann']}", f"learner:{person['ben']}"
    t1, t2 = f"tutor:{tutor['Ta-Tara']}", f"tutor:{tutor['Ta-Tom']}"

    steps = [
        (ann, f"/l/{ann.launch_id}/help/{a}/away", {}),
        (ann, f"/l/{ann.launch_id}/help/{a}/back", {}),
        (tara, f"/tutor/requests/{a}/claim", {}),
        (tara, f"/tutor/requests/{a}/release", {}),
        (tom, f"/tutor/requests/{a}/claim", {}),
        (tom, f"/tutor/requests/{a}/transfer", {"skills": "loops"}),
        (tara, f"/tutor/requests/{a}/claim", {}),
        (tara, f"/tutor/requests/{a}/meeting", {"meeting_url": "https://m.example.org/x"}),
        (tara, f"/tutor/requests/{a}/resolve", {"outcome": "no_show"}),
        (tom, f"/tutor/requests/{a}/claim", {}),
        (tom, f"/tutor/requests/{a}/resolve", {"outcome": "partly"}),
        (ann, f"/l/{ann.launch_id}/help/{a}/rate", {"rating": "4"}),
        (ben, f"/l/{ben.launch_id}/help/{b}/cancel", {}),
    ]
    for who, url, data in steps:
        response = who.post(url, data)
        assert response.status_code == 200, (url, response.get_data(as_text=True)[:300])
    c = ask(ben)
    assert ben.post(f"/l/{ben.launch_id}/help/{c}/away").status_code == 200
    with db(app) as session:
        assert ops.expire_away(session, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)) == [c]

    q, cl, res, can = "queued", "claimed", "resolved", "cancelled"
    assert events(app, a) == [
        ("request.created", learner_a, None, q),
        ("request.away", learner_a, q, q),
        ("request.back", learner_a, q, q),
        ("request.claimed", t1, q, cl),
        ("request.released", t1, cl, q),
        ("request.claimed", t2, q, cl),
        ("request.transferred", t2, cl, q),
        ("request.claimed", t1, q, cl),
        ("request.meeting", t1, cl, cl),
        ("request.no_show", t1, cl, q),
        ("request.claimed", t2, q, cl),
        ("request.resolved", t2, cl, res),
        ("request.rated", learner_a, None, None),
    ]
    assert events(app, b) == [
        ("request.created", learner_b, None, q),
        ("request.cancelled", learner_b, q, can),
    ]
    assert events(app, c) == [
        ("request.created", learner_b, None, q),
        ("request.away", learner_b, q, q),
        ("request.expired", "system", q, can),
    ]


def test_a_failed_action_leaves_no_event_row(
    app: Flask, platform: TestPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    (ann,) = learners(app, platform, "ann")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    tom = launch_as(app, platform, "tutor", "ta-tom")
    a = ask(ann)
    # Refused actions (409, 403, 400) write nothing.
    assert tara.post(f"/tutor/requests/{a}/release").status_code == 409
    assert tara.post(f"/tutor/requests/{a}/claim", {"version": "7"}).status_code == 409
    assert tara.post(f"/tutor/requests/{a}/claim").status_code == 200
    assert tom.post(f"/tutor/requests/{a}/resolve", {"outcome": "solved"}).status_code == 403
    assert tara.post(f"/tutor/requests/{a}/resolve", {"outcome": "meh"}).status_code == 400
    assert [e[0] for e in events(app)] == ["request.created", "request.claimed"]

    # A failure after the change and its event were written rolls both back together.
    from lti_tool.web import tutor as tutor_views

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the response could not be built")

    monkeypatch.setattr(tutor_views, "jsonify", broken)
    failed = tara.post(f"/tutor/requests/{a}/resolve", {"outcome": "solved"})
    assert failed.status_code == 500
    monkeypatch.undo()
    assert status(ann, a)["status"] == "claimed"
    assert [e[0] for e in events(app)] == ["request.created", "request.claimed"]


def test_a_step_away_that_lost_a_race_writes_no_event(app: Flask, platform: TestPlatform) -> None:
    """The learner's page read the request as queued; a tutor claimed it before the update."""
    (ann,) = learners(app, platform, "ann")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    a = ask(ann)
    database = app.extensions["lifeline"].db
    session = database.sessionmaker()
    try:
        stale = session.get(HelpRequest, a)  # loaded: status queued
        assert stale is not None and stale.status == "queued"
        assert tara.post(f"/tutor/requests/{a}/claim").status_code == 200  # commits
        with pytest.raises(ops.HelpError) as refused:
            ops.step_away(session, a, stale.learner_id)
        assert refused.value.status == 409
        session.rollback()
    finally:
        session.close()
    assert [e[0] for e in events(app)] == ["request.created", "request.claimed"]
    assert status(ann, a)["away_until"] is None
