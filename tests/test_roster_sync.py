"""Roster sync (Names and Role Provisioning) end to end: real launches, jobs enqueued after
commit and worked by a real RQ worker on the test Redis, and a fake LMS on 127.0.0.1 serving
the roster in small pages. Teaching assistants become tutors, tutors see the names the LMS
gives, learners who left cannot open requests, and a platform that hangs or misbehaves fails
the sync cleanly with a recorded error and no member wrongly marked as gone."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue
from rq.job import Job, JobStatus
from sqlalchemy import func, select, update

from lti_tool import jobs, tasks
from lti_tool.config import Settings
from lti_tool.courses import Course, Person
from lti_tool.db import Database
from lti_tool.help.models import HelpEvent, HelpRequest
from lti_tool.lms.models import CourseMember, CourseServices
from lti_tool.lms.sync import RosterSyncFailed
from lti_tool.tutors.models import PoolMember, Tutor, TutorLink
from lti_tool.tutors.operations import course_pools
from tests.helpers import Actor, launch_as
from tests.lms_services import (
    INSTRUCTOR,
    MENTOR,
    NRPS_MEDIA,
    TA,
    LmsServices,
    register_platform,
    run_worker,
    service_claims,
)
from tests.platform import JwksServer, TestPlatform, drop

QUESTION = "My recursive factorial never stops and Python says maximum recursion depth."
CTX = "course-1"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Production-like: jobs go to Redis (not inline) and a worker runs them; 2 members a page.
    return settings.with_overrides(jobs_inline=False, roster_page_size=2, http_timeout=1.0)


@pytest.fixture
def platform(app: Flask, jwks_server: JwksServer, lms: LmsServices) -> TestPlatform:
    return register_platform(app, jwks_server, lms)


def _db(app: Flask) -> Database:
    db: Database = app.extensions["lifeline"].db
    return db


def _queued(redis_client: redis.Redis) -> list[tuple[str, tuple[Any, ...]]]:
    queue = Queue(jobs.QUEUE_NAME, connection=redis_client)
    return [(job.func_name, tuple(job.args)) for job in queue.get_jobs()]


def _launch(app: Flask, platform: TestPlatform, lms: LmsServices, role: str, sub: str) -> Actor:
    """A launch as the LMS sends it when it hides names from tools (roster gives them)."""
    return launch_as(app, platform, role, sub, name=drop(), **service_claims(lms, CTX))


def _course_id(app: Flask) -> int:
    with _db(app).transaction() as session:
        return session.scalars(select(Course.id).where(Course.context_id == CTX)).one()


def _services(app: Flask) -> CourseServices:
    with _db(app).transaction() as session:
        row = session.get(CourseServices, _course_id(app))
        assert row is not None
        return row


def _statuses(app: Flask) -> dict[str, str]:
    with _db(app).transaction() as session:
        rows = session.execute(
            select(Person.sub, CourseMember.status).join(
                CourseMember, CourseMember.person_id == Person.id
            )
        ).all()
        return {sub: status for sub, status in rows}


def _tutors_of_course(app: Flask) -> set[str]:
    """Subs of the LMS people who are tutors in the course's pools."""
    with _db(app).transaction() as session:
        pool_ids = [p.id for p in course_pools(session, _course_id(app))]
        rows = session.scalars(
            select(Person.sub)
            .join(TutorLink, TutorLink.person_id == Person.id)
            .join(PoolMember, PoolMember.tutor_id == TutorLink.tutor_id)
            .where(PoolMember.pool_id.in_(pool_ids))
        )
        return set(rows)


def _requests_and_events(app: Flask) -> tuple[int, int]:
    with _db(app).transaction() as session:
        return (
            session.scalar(select(func.count()).select_from(HelpRequest)) or 0,
            session.scalar(select(func.count()).select_from(HelpEvent)) or 0,
        )


def _ask(actor: Actor) -> Any:
    return actor.post(f"/l/{actor.launch_id}/help", {"question": QUESTION})


def _seed(lms: LmsServices) -> None:
    lms.member(CTX, "ida", "Ida Instructor", roles=(INSTRUCTOR,))
    lms.member(CTX, "alice", "Alice Adams", email="alice@example.edu")
    lms.member(CTX, "bob", "Bob Builder")
    lms.member(CTX, "carol", "Carol Clark")
    lms.member(CTX, "ta-tom", "Tom Tutor", roles=(INSTRUCTOR, TA))


def test_roster_sync_over_several_pages_with_a_member_added_and_one_removed(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    _seed(lms)  # five members: three pages of two
    bob = _launch(app, platform, lms, "learner", "bob")
    course_id = _course_id(app)
    # The course's first launch enqueued its first sync, once it had committed.
    assert _queued(redis_client) == [(jobs.SYNC_ROSTER, (course_id,))]
    carol = _launch(app, platform, lms, "learner", "carol")
    ida = _launch(app, platform, lms, "instructor", "ida")
    assert _queued(redis_client) == [(jobs.SYNC_ROSTER, (course_id,))]  # asked for once
    assert _ask(bob).status_code == 200  # before any sync: not on a roster yet, may ask
    with _db(app).transaction() as session:  # the launch carried no name
        assert session.scalars(select(Person.name).where(Person.sub == "bob")).one() == ""

    run_worker(worker)

    pages = lms.calls("/nrps")
    assert [(c.query.get("limit"), c.query.get("p")) for c in pages] == [
        (["2"], None),
        (["2"], ["1"]),
        (["2"], ["2"]),
    ]
    assert all(c.headers["Accept"] == NRPS_MEDIA for c in pages)
    assert all(c.headers["Authorization"].startswith("Bearer tok-") for c in pages)
    row = _services(app)
    assert row.roster_member_count == 5 and row.roster_error is None
    assert row.roster_synced_at is not None and row.roster_differences_url is not None
    assert _statuses(app) == dict.fromkeys(["ida", "alice", "bob", "carol", "ta-tom"], "active")
    with _db(app).transaction() as session:
        people = {p.sub: p for p in session.scalars(select(Person))}
        assert people["bob"].name == "Bob Builder"  # the roster filled what launches lacked
        assert people["alice"].email == "alice@example.edu"
    # The TA on the roster is a tutor of the course without ever having launched...
    assert _tutors_of_course(app) == {"ta-tom"}
    # ...and, once they open Lifeline, sees the learner by the name the LMS gave.
    tom = _launch(app, platform, lms, "tutor", "ta-tom")
    queue = tom.get("/tutor/queue.json", json=True).get_json()["queue"]
    assert [item["learner"] for item in queue] == ["Bob Builder"]
    with _db(app).transaction() as session:
        [tutor] = session.scalars(select(Tutor)).all()
        assert tutor.display_name == "Tom Tutor"

    # Between two syncs a TA joins and Carol leaves the course; the instructor syncs now.
    lms.member(CTX, "ta-tina", "Tina Teaching", roles=(TA,))
    lms.remove(CTX, "carol")
    response = ida.post(f"/l/{ida.launch_id}/course/roster/sync", json=False)
    assert response.status_code == 303 and "roster=requested" in response.headers["Location"]
    assert (jobs.SYNC_ROSTER, (course_id, True)) in _queued(redis_client)
    run_worker(worker)

    assert "since" not in lms.calls("/nrps")[-1].query  # "Sync now" reads the full roster
    statuses = _statuses(app)
    assert statuses["carol"] == "deleted" and statuses["ta-tina"] == "active"
    assert _tutors_of_course(app) == {"ta-tom", "ta-tina"}
    assert _services(app).roster_member_count == 5
    # The second job reused the first one's access token (shared through Redis).
    assert len(lms.token_requests) == 1

    before = _requests_and_events(app)
    refused = _ask(carol)
    assert refused.status_code == 403
    assert "no longer enrolled in this course according to Test LMS" in refused.get_json()["error"]
    form = carol.client.post(
        f"/l/{carol.launch_id}/help",
        data={"question": QUESTION, "csrf_token": carol.csrf()},
    )  # the HTML form says the same, escaped, on the form page
    assert form.status_code == 403 and "no longer enrolled" in form.get_data(as_text=True)
    assert _requests_and_events(app) == before  # nothing written
    alice = _launch(app, platform, lms, "learner", "alice")
    assert _ask(alice).status_code == 200
    dave = _launch(app, platform, lms, "learner", "dave")  # never on a roster: allowed
    assert _ask(dave).status_code == 200

    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert 'data-testid="roster-status"' in page and "5 active member(s)" in page
    assert 'data-testid="roster-sync-now"' in page and 'data-testid="roster-error"' not in page


def test_a_new_launch_readmits_a_learner_the_roster_said_had_left(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    worker: jobs.JobContext,
) -> None:
    _seed(lms)
    carol = _launch(app, platform, lms, "learner", "carol")
    run_worker(worker)
    lms.remove(CTX, "carol")
    with _db(app).transaction() as session:  # a complete sync later says she left
        session.execute(update(CourseMember).values(status="deleted"))
    assert _ask(carol).status_code == 403
    # She is enrolled again and the LMS launches her: the launch itself vouches for her.
    from lti_tool.courses import recent_launches

    recent_launches.clear()  # (a launch within the recent-launch window is not re-written)
    again = _launch(app, platform, lms, "learner", "carol")
    assert _statuses(app)["carol"] == "active"
    assert _ask(again).status_code == 200


def test_the_scheduled_sync_uses_the_differences_link(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    _seed(lms)
    _launch(app, platform, lms, "learner", "alice")
    run_worker(worker)
    assert _tutors_of_course(app) == {"ta-tom"}
    full_calls = len(lms.calls("/nrps"))

    lms.remove(CTX, "bob")  # differences report him Deleted
    lms.remove(CTX, "ta-tom")  # a TA who left stops being the course's tutor
    lms.member(CTX, "mentor-mo", "Mo Mentor", roles=(MENTOR,))
    lms.member(CTX, "alice", "Alice Archer")  # a new name
    with jobs.bound(worker):
        assert "rosters" not in tasks.sweep()  # synced moments ago: not due
    synced = _services(app).roster_synced_at
    assert synced is not None
    with _db(app).transaction() as session:  # a day and an hour later
        session.execute(
            update(CourseServices).values(
                roster_synced_at=synced - dt.timedelta(hours=25), roster_requested_at=None
            )
        )
    with jobs.bound(worker):
        assert tasks.sweep()["rosters"] == [_course_id(app)]
        assert "rosters" not in tasks.sweep()  # asked for already: not enqueued twice
    run_worker(worker)

    differences = lms.calls("/nrps")[full_calls:]
    assert differences and all("since" in c.query for c in differences)
    assert sum(len(c.query.get("p", [])) for c in differences) == 1  # 4 changes: two pages
    statuses = _statuses(app)
    assert statuses["bob"] == "deleted" and statuses["ta-tom"] == "deleted"
    assert statuses["carol"] == "active"  # absent from the differences, still enrolled
    assert statuses["mentor-mo"] == "active"
    assert _tutors_of_course(app) == {"mentor-mo"}
    with _db(app).transaction() as session:
        alice = session.scalars(select(Person).where(Person.sub == "alice")).one()
        assert alice.name == "Alice Archer"
    assert _services(app).roster_member_count == 4


def test_a_platform_that_hangs_times_out_and_marks_nobody_as_gone(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    _seed(lms)
    ida = _launch(app, platform, lms, "instructor", "ida")
    run_worker(worker)
    synced = _services(app).roster_synced_at
    lms.remove(CTX, "carol")
    lms.hang = {f"/nrps/{CTX}/memberships?limit=2&p=1": 60}  # the second page never comes

    ida.post(f"/l/{ida.launch_id}/course/roster/sync", json=False)
    [job] = Queue(jobs.QUEUE_NAME, connection=redis_client).get_jobs()
    started = time.monotonic()
    run_worker(worker)
    elapsed = time.monotonic() - started
    assert elapsed < 20, elapsed  # 1 s timeout, 3 attempts, short back-off

    # The job failed, and RQ will retry it later with back-off.
    failed = Job.fetch(job.id, connection=redis_client)
    assert failed.get_status() == JobStatus.SCHEDULED
    assert failed.retries_left == len(jobs.RETRY_INTERVALS) - 1
    row = _services(app)
    assert row.roster_error is not None
    assert "did not answer within 1 s (3 attempts)" in row.roster_error
    assert "limit=" not in row.roster_error  # no query strings in what admins read
    assert row.roster_synced_at == synced and row.roster_member_count == 5
    assert _statuses(app)["carol"] == "active"  # an incomplete roster removes nobody
    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert 'data-testid="roster-error"' in page and "did not answer within 1 s" in page

    # The platform recovers: the retry completes and only now Carol is gone.
    lms.hang = {}
    with jobs.bound(worker):
        report = tasks.sync_roster(_course_id(app), True)
    assert report["left"] == ["carol"] and report["members"] == 4
    assert _statuses(app)["carol"] == "deleted" and _services(app).roster_error is None


def test_a_refusal_is_not_retried_but_a_timeout_is(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    """RQ's back-off helps a platform that timed out, not one that said 403: the refused job
    fails at once (and shows in `lifeline jobs failed`) instead of running four more times."""
    _seed(lms)
    ida = _launch(app, platform, lms, "instructor", "ida")
    run_worker(worker)
    lms.fail_next["/nrps"] = [(403, {})]
    ida.post(f"/l/{ida.launch_id}/course/roster/sync", json=False)
    [job] = Queue(jobs.QUEUE_NAME, connection=redis_client).get_jobs()
    calls = len(lms.calls("/nrps"))
    run_worker(worker)
    assert len(lms.calls("/nrps")) == calls + 1  # asked once: a 403 is not retried
    refused = Job.fetch(job.id, connection=redis_client)
    assert refused.get_status() == JobStatus.FAILED and refused.retries_left == 0
    assert "refused to share this course's roster (403)" in (_services(app).roster_error or "")


def test_bad_answers_from_the_platform_are_recorded_clearly(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    worker: jobs.JobContext,
) -> None:
    _seed(lms)
    _launch(app, platform, lms, "learner", "alice")
    run_worker(worker)
    course_id = _course_id(app)

    def fails(expected: str) -> None:
        with jobs.bound(worker), pytest.raises(RosterSyncFailed) as caught:
            tasks.sync_roster(course_id, True)
        assert expected in str(caught.value)
        assert expected in (_services(app).roster_error or "")
        assert _statuses(app) == dict.fromkeys(["ida", "alice", "bob", "carol", "ta-tom"], "active")

    lms.fail_next["/nrps"] = [(403, {})]
    fails("refused to share this course's roster (403)")
    lms.fail_next["/nrps"] = [(404, {})]
    fails("answered 404 for the roster page")
    lms.next_override = "https://evil.example/steal"
    fails("is not on the LMS's own host")
    lms.next_override = "http://[::1/steal"  # not a URL at all
    fails("next page link on")
    lms.next_override = lms.nrps_url(CTX) + "?limit=2"  # a page linking back to itself
    fails("links back to a page it already sent")
    lms.next_override = None

    # Entries without a usable user id are skipped; odd fields are cleaned, never a crash.
    lms.members[CTX]["nul"] = {"user_id": "bad\x00id", "roles": []}
    lms.members[CTX]["num"] = {"user_id": 12345, "roles": []}
    lms.members[CTX]["odd"] = {
        "user_id": "odd",
        "roles": "Learner",
        "status": "Suspended?",
        "name": ["not", "text"],
        "email": "not-an-email",
    }
    with jobs.bound(worker):
        report = tasks.sync_roster(course_id, True)
    assert report["skipped"] == 2
    with _db(app).transaction() as session:
        odd = session.scalars(
            select(CourseMember)
            .join(Person, Person.id == CourseMember.person_id)
            .where(Person.sub == "odd")
        ).one()
        assert (odd.status, odd.roles, odd.name, odd.email) == ("active", [], "", "")


def test_sync_now_needs_an_instructor_a_roster_service_and_a_csrf_token(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
) -> None:
    plain = launch_as(app, platform, "instructor", "ivy", context_id="no-nrps")
    assert _queued(redis_client) == []  # no roster service: no sync
    refused = plain.post(f"/l/{plain.launch_id}/course/roster/sync", json=False)
    assert refused.status_code == 409
    assert "has not offered this course&#39;s roster" in refused.get_data(as_text=True)
    page = plain.get(f"/l/{plain.launch_id}/course/settings").get_data(as_text=True)
    assert 'data-testid="roster-unavailable"' in page and "roster-sync-now" not in page

    _seed(lms)
    ida = _launch(app, platform, lms, "instructor", "ida")
    before = _queued(redis_client)
    no_token = ida.client.post(f"/l/{ida.launch_id}/course/roster/sync")
    assert no_token.status_code == 400 and "CSRF" in no_token.get_data(as_text=True)
    learner = _launch(app, platform, lms, "learner", "alice")
    denied = learner.post(f"/l/{learner.launch_id}/course/roster/sync")
    assert denied.status_code == 403
    assert _queued(redis_client) == before


@pytest.mark.parametrize(
    "claim",
    [
        {"context_memberships_url": "javascript:alert(1)", "service_versions": ["2.0"]},
        {"context_memberships_url": "http://lms.example.edu/nrps", "service_versions": ["2.0"]},
        {"context_memberships_url": ["not", "a", "url"]},
        {"context_memberships_url": "https://lms.example.edu/nrps", "service_versions": ["1.0"]},
        {"context_memberships_url": "https://lms.example.edu/" + "x" * 3000},
        "not an object",
    ],
)
def test_an_unusable_service_claim_is_ignored_and_the_launch_works(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis, claim: Any
) -> None:
    ags = {"scope": "not a list", "lineitems": "ftp://lms.example.edu/items"}
    actor = launch_as(
        app,
        platform,
        "learner",
        "lee",
        **{
            "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice": claim,
            "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint": ags,
        },
    )
    assert _ask(actor).status_code == 200
    assert _queued(redis_client) == [(jobs.PAGE_REQUEST, (1, 1))]  # paging only, no sync
    with _db(app).transaction() as session:
        assert session.scalar(select(func.count()).select_from(CourseServices)) == 0
