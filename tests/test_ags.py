"""Participation grades (Assignment and Grade Services) end to end: the instructor's opt-in,
sessions resolved through the tutor's real endpoints, the job enqueued after commit and run by
a real RQ worker, and a fake LMS gradebook on 127.0.0.1 recording what was posted. Off by
default; at most one score per completed session however often the job runs; failures are
recorded and retried."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
import redis
from flask import Flask
from rq import Queue
from sqlalchemy import func, select, update

from lti_tool import jobs, tasks
from lti_tool.config import Settings
from lti_tool.db import Database, utcnow
from lti_tool.help.models import CourseSettings, HelpRequest
from lti_tool.lms.grades import GradeReportFailed
from lti_tool.lms.models import CourseServices, GradeReport
from lti_tool.lti.tool_config import SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE
from tests.helpers import Actor, launch_as
from tests.lms_services import (
    LINEITEM_MEDIA,
    SCORE_MEDIA,
    LmsServices,
    register_platform,
    run_worker,
    service_claims,
)
from tests.platform import JwksServer, TestPlatform

CTX = "course-1"
QUESTION = "Why does my binary search loop forever when the target is missing?"
SETTINGS_FORM = {
    "skills": "",
    "cooldown_minutes": "0",
    "daily_cap": "0",
    "sla_minutes": "5",
    "step_away_minutes": "10",
}
ISO_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.with_overrides(jobs_inline=False, http_timeout=2.0)


@pytest.fixture
def platform(app: Flask, jwks_server: JwksServer, lms: LmsServices) -> TestPlatform:
    return register_platform(app, jwks_server, lms)


def _db(app: Flask) -> Database:
    db: Database = app.extensions["lifeline"].db
    return db


def _launch(
    app: Flask, platform: TestPlatform, lms: LmsServices, role: str, sub: str, **options: Any
) -> Actor:
    return launch_as(
        app, platform, role, sub, **service_claims(lms, CTX, nrps=False, ags=True, **options)
    )


def _opt_in(ida: Actor, on: bool = True) -> None:
    form = dict(SETTINGS_FORM, **({"report_participation": "on"} if on else {}))
    response = ida.post(f"/l/{ida.launch_id}/course/settings", form, json=False)
    assert response.status_code == 303, response.get_data(as_text=True)[:300]


def _session(learner: Actor, tutor: Actor, outcome: str = "solved") -> int:
    """The learner asks, the tutor claims and resolves with ``outcome``."""
    asked = learner.post(f"/l/{learner.launch_id}/help", {"question": QUESTION})
    assert asked.status_code == 200, asked.get_data(as_text=True)
    request_id = int(asked.get_json()["request_id"])
    assert tutor.post(f"/tutor/requests/{request_id}/claim").status_code == 200
    resolved = tutor.post(f"/tutor/requests/{request_id}/resolve", {"outcome": outcome})
    assert resolved.status_code == 200, resolved.get_data(as_text=True)
    return request_id


def _reports(app: Flask) -> list[tuple[int, str, float | None]]:
    with _db(app).transaction() as session:
        rows = session.scalars(select(GradeReport).order_by(GradeReport.id))
        return [(r.request_id, r.status, r.score_given) for r in rows]


def _queued(redis_client: redis.Redis) -> list[tuple[str, tuple[Any, ...]]]:
    queue = Queue(jobs.QUEUE_NAME, connection=redis_client)
    return [(job.func_name, tuple(job.args)) for job in queue.get_jobs()]


def test_reporting_is_off_by_default_and_nothing_is_posted(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida")
    learner = _launch(app, platform, lms, "learner", "lee")
    tutor = _launch(app, platform, lms, "tutor", "ta-tia")
    request_id = _session(learner, tutor)
    assert (jobs.REPORT_PARTICIPATION, (request_id,)) in _queued(redis_client)
    run_worker(worker)
    with jobs.bound(worker):
        assert tasks.report_participation(request_id) == {
            "request_id": request_id,
            "skipped": "grade reporting is off for this course",
        }
    assert lms.calls("/ags") == [] and lms.calls("/token") == [] and lms.scores == []
    assert _reports(app) == []
    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    box = re.search(r'<input type="checkbox" name="report_participation"[^>]*>', page)
    assert box is not None and "checked" not in box.group(0)


def test_a_score_is_posted_once_per_completed_session_even_if_the_job_runs_twice(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida")
    _opt_in(ida)
    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert re.search(r'name="report_participation" checked', page)
    learner = _launch(app, platform, lms, "learner", "lee")
    tutor = _launch(app, platform, lms, "tutor", "ta-tia")

    first = _session(learner, tutor)
    assert _queued(redis_client).count((jobs.REPORT_PARTICIPATION, (first,))) == 1
    worker.enqueue(jobs.REPORT_PARTICIPATION, first)  # delivered twice (RQ: at least once)
    run_worker(worker)
    with jobs.bound(worker):  # and once more, by hand
        assert tasks.report_participation(first)["skipped"] == "already reported"

    [create] = lms.calls(f"/ags/{CTX}/lineitems", "POST", exact=True)
    assert create.headers["Content-Type"] == LINEITEM_MEDIA
    [item] = lms.lineitems[CTX]
    assert (item["label"], item["scoreMaximum"], item["tag"], item["resourceId"]) == (
        "Tutoring participation",
        1.0,
        "lifeline-participation",
        "lifeline-participation",
    )
    assert [c.query.get("tag") for c in lms.calls(f"/ags/{CTX}/lineitems", "GET", exact=True)] == [
        ["lifeline-participation"]
    ]  # looked for an existing column first
    [(lineitem, score)] = lms.scores
    assert lineitem == item["id"]
    [post] = lms.calls(f"/ags/{CTX}/lineitems/1/scores")
    assert post.headers["Content-Type"] == SCORE_MEDIA
    assert score["userId"] == "lee"
    assert (score["scoreGiven"], score["scoreMaximum"]) == (1.0, 1.0)
    assert (score["activityProgress"], score["gradingProgress"]) == ("Completed", "FullyGraded")
    assert ISO_MS.fullmatch(score["timestamp"]), score["timestamp"]
    assert score["comment"] == "1 completed tutoring session in Lifeline"
    assert _reports(app) == [(first, "sent", 1.0)]
    assert len(lms.token_requests) == 1
    assert lms.token_requests[0]["scopes"] == {SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE}

    # A second session: a second score on the same column, with the new count.
    second = _session(learner, tutor, outcome="partly")
    run_worker(worker)
    assert (
        len(lms.lineitems[CTX]) == 1
        and len(lms.calls(f"/ags/{CTX}/lineitems", "POST", exact=True)) == 1
    )
    assert [s["comment"] for _, s in lms.scores] == [
        "1 completed tutoring session in Lifeline",
        "2 completed tutoring sessions in Lifeline",
    ]
    # A no-show is not a completed session: no job, no score.
    no_show = _session(learner, tutor, outcome="no_show")
    assert (jobs.REPORT_PARTICIPATION, (no_show,)) not in _queued(redis_client)
    run_worker(worker)
    assert len(lms.scores) == 2
    assert _reports(app) == [(first, "sent", 1.0), (second, "sent", 1.0)]


def test_an_existing_column_is_found_by_its_tag(
    app: Flask, platform: TestPlatform, lms: LmsServices, worker: jobs.JobContext
) -> None:
    lms.lineitems[CTX] = [
        {"id": f"{lms.lineitems_url(CTX)}/1", "label": "Quiz 1", "tag": "quiz"},
        {
            "id": f"{lms.lineitems_url(CTX)}/2",
            "label": "Tutoring participation",
            "tag": "lifeline-participation",
            "resourceId": "lifeline-participation",
            "scoreMaximum": 1,
        },
    ]
    ida = _launch(app, platform, lms, "instructor", "ida")
    _opt_in(ida)
    request_id = _session(
        _launch(app, platform, lms, "learner", "lee"), _launch(app, platform, lms, "tutor", "ta")
    )
    run_worker(worker)
    assert lms.calls(f"/ags/{CTX}/lineitems", "POST", exact=True) == []
    assert [lineitem for lineitem, _ in lms.scores] == [f"{lms.lineitems_url(CTX)}/2"]
    with _db(app).transaction() as session:
        row = session.scalars(select(CourseServices)).one()
        assert row.ags_lineitem_url == f"{lms.lineitems_url(CTX)}/2"
    assert _reports(app) == [(request_id, "sent", 1.0)]


def test_a_failed_score_is_recorded_and_retried_and_a_deleted_column_made_again(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida")
    _opt_in(ida)
    learner = _launch(app, platform, lms, "learner", "lee")
    tutor = _launch(app, platform, lms, "tutor", "ta")
    lms.fail_next[f"/ags/{CTX}/lineitems/1/scores"] = [(503, {})] * 3
    request_id = _session(learner, tutor)
    with jobs.bound(worker), pytest.raises(GradeReportFailed) as caught:
        tasks.report_participation(request_id)
    assert "answered 503 (3 attempts)" in str(caught.value)
    with _db(app).transaction() as session:
        report = session.scalars(select(GradeReport)).one()
        assert report.status == "failed" and "503" in (report.error or "")
    assert lms.scores == []

    with jobs.bound(worker):  # the retry sends it
        assert tasks.report_participation(request_id)["reported"] is True
    assert len(lms.scores) == 1 and _reports(app) == [(request_id, "sent", 1.0)]

    # The instructor deleted the column in the gradebook: the next score makes it again.
    lms.lineitems[CTX].clear()
    Queue(jobs.QUEUE_NAME, connection=redis_client).empty()
    second = _session(learner, tutor)
    run_worker(worker)
    assert [item["id"] for item in lms.lineitems[CTX]] == [f"{lms.lineitems_url(CTX)}/1"]
    assert _reports(app)[-1] == (second, "sent", 1.0)
    assert [s["comment"] for _, s in lms.scores][-1] == "2 completed tutoring sessions in Lifeline"


def test_without_the_scopes_or_the_endpoint_nothing_is_posted_and_the_page_says_why(
    app: Flask, platform: TestPlatform, lms: LmsServices, worker: jobs.JobContext
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida", scopes=(SCOPE_AGS_SCORE,))
    _opt_in(ida)
    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert "did not grant Lifeline the line item and score scopes" in page
    request_id = _session(
        _launch(app, platform, lms, "learner", "lee", scopes=(SCOPE_AGS_SCORE,)),
        _launch(app, platform, lms, "tutor", "ta", scopes=(SCOPE_AGS_SCORE,)),
    )
    with jobs.bound(worker):
        result = tasks.report_participation(request_id)
    assert result["skipped"] == "the LMS did not grant the line item and score scopes"
    assert lms.calls("/ags") == [] and _reports(app) == []

    plain = launch_as(app, platform, "instructor", "ivy", context_id="no-ags")
    _opt_in(plain)
    page = plain.get(f"/l/{plain.launch_id}/course/settings").get_data(as_text=True)
    assert "has not offered its gradebook" in page


def test_the_gradebook_checkbox_refuses_odd_values_and_writes_nothing(
    app: Flask, platform: TestPlatform, lms: LmsServices
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida")
    form = dict(SETTINGS_FORM, skills="Python", report_participation="yes please")
    response = ida.post(f"/l/{ida.launch_id}/course/settings", form, json=False)
    assert response.status_code == 400
    assert "is a checkbox" in response.get_data(as_text=True)
    with _db(app).transaction() as session:
        row = session.scalars(select(CourseServices)).one()
        assert row.report_participation is False
        assert session.scalar(select(func.count()).select_from(CourseSettings)) == 0
    _opt_in(ida)
    _opt_in(ida, on=False)  # and off again
    with _db(app).transaction() as session:
        assert session.scalars(select(CourseServices)).one().report_participation is False


def test_the_sweep_retries_a_report_whose_worker_died_mid_send(
    app: Flask,
    platform: TestPlatform,
    lms: LmsServices,
    redis_client: redis.Redis,
    worker: jobs.JobContext,
) -> None:
    ida = _launch(app, platform, lms, "instructor", "ida")
    _opt_in(ida)
    request_id = _session(
        _launch(app, platform, lms, "learner", "lee"), _launch(app, platform, lms, "tutor", "ta")
    )
    Queue(jobs.QUEUE_NAME, connection=redis_client).empty()  # its job was lost with the worker
    with _db(app).transaction() as session:  # ...which had claimed the report, then died
        request = session.get(HelpRequest, request_id)
        assert request is not None
        session.add(
            GradeReport(
                request_id=request_id,
                course_id=request.course_id,
                person_id=request.learner_id,
                status="sending",
                at=utcnow() - dt.timedelta(minutes=2),
            )
        )
    with jobs.bound(worker):
        assert tasks.report_participation(request_id)["skipped"] == "already reported"
        assert "grades" not in tasks.sweep()  # it may still be sending: wait
    with _db(app).transaction() as session:
        session.execute(update(GradeReport).values(at=utcnow() - dt.timedelta(minutes=11)))
    with jobs.bound(worker):
        assert tasks.sweep()["grades"] == [request_id]
    run_worker(worker)
    assert len(lms.scores) == 1 and _reports(app) == [(request_id, "sent", 1.0)]
    with jobs.bound(worker):
        assert "grades" not in tasks.sweep()
