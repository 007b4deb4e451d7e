"""Claims are one conditional UPDATE: however many tutors race, exactly one holds a request."""

from __future__ import annotations

import threading
from collections import Counter

from flask import Flask
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from lti_tool.courses import Course, Person
from lti_tool.help import operations as ops
from lti_tool.help.models import HelpEvent, HelpRequest, HelpStatus
from lti_tool.tutors.models import Tutor
from lti_tool.tutors.operations import add_to_pool, ensure_course_pool
from tests.platform import TestPlatform

QUESTION = "My recursion never stops and Python says maximum recursion depth exceeded."


def _setup(app: Flask, platform: TestPlatform, tutors: int) -> tuple[int, list[int], int]:
    db = app.extensions["lifeline"].db
    with db.transaction() as session:
        course = Course(platform_id=platform.platform_id, deployment_id="d", context_id="c1")
        learner = Person(platform_id=platform.platform_id, sub="learner-1", name="L")
        session.add_all([course, learner])
        session.flush()
        pool = ensure_course_pool(session, course)
        tutor_ids = []
        for n in range(tutors):
            tutor = Tutor(display_name=f"Tutor {n}", capacity=1)
            session.add(tutor)
            session.flush()
            add_to_pool(session, tutor.id, pool.id)
            tutor_ids.append(tutor.id)
        request, _ = ops.request_help(
            session,
            learner=learner,
            course=course,
            exercise_id=None,
            new=ops.NewRequest(QUESTION),
        )
        return request.id, tutor_ids, pool.id


def test_fifty_concurrent_claims_have_exactly_one_winner(
    app: Flask, platform: TestPlatform
) -> None:
    request_id, tutor_ids, pool_id = _setup(app, platform, 50)
    db = app.extensions["lifeline"].db
    # Every contender holds its own connection at the barrier: a pool big enough for all.
    engine = create_engine(db.engine.url, pool_size=len(tutor_ids) + 2, max_overflow=0)
    sessions = sessionmaker(engine, expire_on_commit=False)
    barrier = threading.Barrier(len(tutor_ids))
    results: list[str] = []
    lock = threading.Lock()

    def attempt(tutor_id: int) -> None:
        session = sessions()
        try:
            tutor = session.get(Tutor, tutor_id)
            assert tutor is not None
            barrier.wait(timeout=90)
            ops.claim(session, request_id, tutor, {pool_id})
            session.commit()
            outcome = f"won:{tutor_id}"
        except ops.HelpError as exc:
            session.rollback()
            outcome = f"lost:{exc.status}"
        finally:
            session.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(t,)) for t in tutor_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    engine.dispose()

    counts = Counter(r.split(":")[0] for r in results)
    assert counts == {"won": 1, "lost": 49}
    assert {r for r in results if r.startswith("lost")} == {"lost:409"}
    winner = int(next(r for r in results if r.startswith("won")).split(":")[1])
    with db.transaction() as session:
        row = session.get(HelpRequest, request_id)
        assert row is not None
        assert (row.status, row.tutor_id) == (HelpStatus.CLAIMED.value, winner)
        claims = session.scalars(select(HelpEvent).where(HelpEvent.kind == "request.claimed"))
        assert len(list(claims)) == 1


def test_event_ids_follow_commit_order(app: Flask, platform: TestPlatform) -> None:
    """Events recorded by concurrent transactions become visible in id order (no gaps that
    a stream resuming from Last-Event-ID could fall into)."""
    request_id, tutor_ids, pool_id = _setup(app, platform, 2)
    db = app.extensions["lifeline"].db
    first, second = db.sessionmaker(), db.sessionmaker()
    try:
        tutor = first.get(Tutor, tutor_ids[0])
        assert tutor is not None
        ops.claim(first, request_id, tutor, {pool_id})  # holds the event lock, not committed
        done = threading.Event()

        def later() -> None:
            from lti_tool.help import events

            row = second.get(HelpRequest, request_id)
            events.record(second, "test.marker", "system", request=row)
            second.commit()
            done.set()

        thread = threading.Thread(target=later)
        thread.start()
        assert not done.wait(0.5), "the second event must wait for the first to commit"
        first.commit()
        thread.join(timeout=10)
        assert done.is_set()
    finally:
        first.close()
        second.close()
    with db.transaction() as session:
        kinds = [e.kind for e in session.scalars(select(HelpEvent).order_by(HelpEvent.id))]
    assert kinds == ["request.created", "request.claimed", "test.marker"]


def test_one_tutor_claiming_two_requests_at_once_stays_within_capacity(
    app: Flask, platform: TestPlatform
) -> None:
    """Capacity 1: two simultaneous claims of two different requests by the same tutor
    leave exactly one held (the tutor's row is locked during the check)."""
    db = app.extensions["lifeline"].db
    first_id, tutor_ids, pool_id = _setup(app, platform, 1)
    with db.transaction() as session:
        course = session.scalars(select(Course)).one()
        other = Person(platform_id=platform.platform_id, sub="learner-2", name="M")
        session.add(other)
        session.flush()
        second, _ = ops.request_help(
            session, learner=other, course=course, exercise_id=None, new=ops.NewRequest(QUESTION)
        )
        second_id = second.id
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(request_id: int) -> None:
        session = db.sessionmaker()
        try:
            tutor = session.get(Tutor, tutor_ids[0])
            assert tutor is not None
            barrier.wait(timeout=30)
            ops.claim(session, request_id, tutor, {pool_id})
            session.commit()
            outcomes.append("won")
        except ops.HelpError as exc:
            session.rollback()
            outcomes.append(f"lost:{exc.status}")
        finally:
            session.close()

    threads = [threading.Thread(target=attempt, args=(r,)) for r in (first_id, second_id)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["lost:409", "won"]
    with db.transaction() as session:
        held = session.scalars(
            select(HelpRequest).where(HelpRequest.status == HelpStatus.CLAIMED.value)
        ).all()
        assert len(held) == 1
