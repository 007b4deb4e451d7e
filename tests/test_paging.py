"""Paging and learner alerts, against a real SMTP server and a real webhook receiver on
127.0.0.1: who each wave reaches, escalation while nobody claims, at most one page per
target however often a job runs or fails, and the sweep that redoes lost work."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from lti_tool import jobs, tasks
from lti_tool.config import Settings
from lti_tool.courses import Course, Exercise, Person
from lti_tool.db import Database, utcnow
from lti_tool.help import operations as ops
from lti_tool.help import paging
from lti_tool.help.models import (
    CoursePool,
    CourseSettings,
    HelpEvent,
    HelpRequest,
    HelpStatus,
    PageLog,
)
from lti_tool.notify import (
    Message,
    NotifyError,
    SmtpConfig,
    SmtpMailer,
    WebhookNotifier,
    parse_smtp_url,
    redact_url,
)
from lti_tool.tutors.models import Pool, Tutor
from lti_tool.tutors.operations import add_to_pool, ensure_course_pool, set_availability
from tests.platform import TestPlatform
from tests.smtp_server import SmtpState, WebhookState, smtp_server, webhook_server

QUESTION = "My loop over the CSV rows never ends & nothing <prints>, what am I doing wrong?"
BASE = "https://lifeline.test"


@pytest.fixture
def smtp() -> Iterator[tuple[int, SmtpState]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def hook() -> Iterator[tuple[str, WebhookState]]:
    with webhook_server() as server:
        yield server


@pytest.fixture
def settings(settings: Settings, smtp: tuple[int, SmtpState]) -> Settings:
    # The app under test sends its emails to the local SMTP server (inline jobs, as in tests).
    return settings.with_overrides(smtp_url=f"smtp://127.0.0.1:{smtp[0]}", http_timeout=3.0)


@dataclass
class World:
    db: Database
    context: jobs.JobContext
    course_id: int
    exercise_id: int
    pool_id: int
    other_pool_id: int
    platform_id: int
    tutors: dict[str, int]


def _tutor(
    session: Session,
    pool_id: int,
    name: str,
    availability: str,
    skills: list[str],
    seen: dt.datetime | None = None,
) -> int:
    tutor = Tutor(display_name=name.title(), email=f"{name}@tutors.example.edu", capacity=10)
    session.add(tutor)
    session.flush()
    add_to_pool(session, tutor.id, pool_id)
    set_availability(session, tutor, availability, skills)
    if seen is not None:
        tutor.last_seen_at = seen
    return tutor.id


@pytest.fixture
def world(app: Flask, platform: TestPlatform, hook: tuple[str, WebhookState]) -> World:
    db: Database = app.extensions["lifeline"].db
    long_ago = utcnow() - dt.timedelta(minutes=10)
    with db.transaction() as session:
        course = Course(
            platform_id=platform.platform_id,
            deployment_id="d",
            context_id="py101",
            title="Python 101",
        )
        session.add(course)
        session.flush()
        exercise = Exercise(course_id=course.id, resource_link_id="ex-3", title="CSV parsing")
        session.add(exercise)
        session.add(
            CourseSettings(
                course_id=course.id,
                skills=["Python", "SQL", "Rust"],
                sla_minutes=5,
                notify_webhook=hook[0],
                notify_emails=["prof@example.edu", "head@example.edu"],
            )
        )
        pool = ensure_course_pool(session, course)
        other = Pool(name="Evening tutors")
        session.add(other)
        session.flush()
        session.add(CoursePool(course_id=course.id, pool_id=other.id))
        tutors = {
            "ada": _tutor(session, pool.id, "ada", "available", ["python"]),
            "bob": _tutor(session, pool.id, "bob", "available", ["SQL"]),
            "cy": _tutor(session, pool.id, "cy", "available", ["Python"], seen=long_ago),
            "dee": _tutor(session, pool.id, "dee", "offline", ["Python"]),
            "eve": _tutor(session, other.id, "eve", "away", []),
        }
        session.flush()
        ids = (course.id, exercise.id, pool.id, other.id)
    return World(db, app.extensions["lifeline"].jobs, *ids, platform.platform_id, tutors=tutors)


def _learner(world: World, session: Session, sub: str) -> Person:
    person = Person(platform_id=world.platform_id, sub=sub, name=sub.title())
    session.add(person)
    session.flush()
    return person


def request_help(
    world: World,
    sub: str = "learner-1",
    skills: tuple[str, ...] = ("Python",),
    notify_email: str | None = None,
    jobs_follow: bool = True,
) -> int:
    """Open a request. ``jobs_follow=False`` commits it on a session without the app's hooks:
    the jobs it calls for are lost, as if Redis was down at commit time."""
    sessions = (
        world.db.sessionmaker if jobs_follow else sessionmaker(world.db.engine, autoflush=False)
    )
    with sessions() as session, session.begin():
        course = session.get(Course, world.course_id)
        assert course is not None
        request, created = ops.request_help(
            session,
            learner=_learner(world, session, sub),
            course=course,
            exercise_id=world.exercise_id,
            new=ops.NewRequest(QUESTION, skills=skills, notify_email=notify_email),
        )
        assert created
        return request.id


def backdate(world: World, request_id: int, minutes: float) -> None:
    """Move a request's clock back: it has waited ``minutes`` longer than it really has."""
    delta = dt.timedelta(minutes=minutes)
    with sessionmaker(world.db.engine)() as session, session.begin():
        request = session.get(HelpRequest, request_id)
        assert request is not None
        request.queued_at -= delta
        request.created_at -= delta
        for event in session.scalars(select(HelpEvent).where(HelpEvent.request_id == request_id)):
            event.at -= delta


def page_log(world: World, request_id: int) -> list[tuple[int, str, str, str]]:
    with world.db.transaction() as session:
        rows = session.scalars(
            select(PageLog).where(PageLog.request_id == request_id).order_by(PageLog.id)
        )
        return [(r.wave, r.channel, r.target, r.status) for r in rows]


def recipients(state: SmtpState) -> Counter[str]:
    return Counter(address for email in state.emails for address in email.rcpt_to)


def claim(world: World, request_id: int, tutor: str) -> None:
    with world.db.transaction() as session:
        found = session.get(Tutor, world.tutors[tutor])
        assert found is not None
        ops.claim(session, request_id, found, {world.pool_id, world.other_pool_id})


def run(world: World, func: str, *args: object) -> object:
    """Run a job the way the worker does: by dotted path, with ids, in a job context."""
    with jobs.bound(world.context):
        return getattr(tasks, func.rsplit(".", 1)[1])(*args)


# -- waves -----------------------------------------------------------------------------------


def test_wave_one_pages_matching_available_tutors_and_the_course_webhook_after_commit(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world)  # the app's after-commit hook runs page_request inline
    # Ada (python, case aside) matches; Bob is available but knows SQL; Cy's dashboard went
    # quiet (away); Dee signed off; Eve is in the course's other pool.
    assert recipients(smtp[1]) == Counter({"ada@tutors.example.edu": 1})
    email = smtp[1].emails[0]
    assert email.mail_from == "lifeline@lifeline.test"
    assert "Python 101 · CSV parsing" in email.subject
    assert "My loop over the CSV rows never ends & nothing <prints>" in email.body
    assert f"{BASE}/tutor/" in email.body
    assert [p["path"] for p in hook[1].posts] == ["/services/T000/B000/secret-token"]
    text = hook[1].posts[0]["json"]["text"]
    assert set(hook[1].posts[0]["json"]) == {"text"}  # Slack and Teams both take {"text"}
    assert "Python 101 · CSV parsing" in text and "Waiting 0 min" in text
    assert "never ends &amp; nothing &lt;prints&gt;" in text  # Slack's three escapes
    assert f"{BASE}/tutor/" in text
    assert page_log(world, request_id) == [
        (1, "email", "ada@tutors.example.edu", "sent"),
        (1, "webhook", redact_url(hook[0]), "sent"),
        (1, "wave", "done", "sent"),
    ]
    assert "secret-token" not in redact_url(hook[0])


def test_when_no_available_tutor_has_the_skill_every_available_tutor_is_paged(
    world: World, smtp: tuple[int, SmtpState]
) -> None:
    request_help(world, skills=("Rust",))
    assert recipients(smtp[1]) == Counter(
        {"ada@tutors.example.edu": 1, "bob@tutors.example.edu": 1}
    )


def test_unclaimed_request_escalates_to_all_course_tutors_then_instructors(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world)
    assert run(world, jobs.CHECK_SLA, request_id, 2) == {
        "request_id": request_id,
        "wave": 2,
        "skipped": "not due yet",
    }
    assert len(smtp[1].emails) == 1

    backdate(world, request_id, 5.5)
    run(world, jobs.CHECK_SLA, request_id, 2)
    # Every tutor of both course pools who is available or away; not Dee, who signed off.
    wave_two = recipients(smtp[1]) - Counter({"ada@tutors.example.edu": 1})
    assert wave_two == Counter(
        {
            "ada@tutors.example.edu": 1,
            "bob@tutors.example.edu": 1,
            "cy@tutors.example.edu": 1,
            "eve@tutors.example.edu": 1,
        }
    )
    assert "Still waiting after 5 min" in smtp[1].emails[-1].subject
    assert len(hook[1].posts) == 1  # the webhook hears of waves 1 and 3 only

    run(world, jobs.CHECK_SLA, request_id, 3)  # not due: 5.5 < 2 * 5 minutes
    assert len(smtp[1].emails) == 5
    backdate(world, request_id, 5)
    run(world, jobs.CHECK_SLA, request_id, 3)
    last = smtp[1].emails[5:]
    assert sorted(a for e in last for a in e.rcpt_to) == ["head@example.edu", "prof@example.edu"]
    assert "No tutor yet after 10 min" in last[0].subject
    assert len(hook[1].posts) == 2
    assert "No tutor yet after 10 min" in hook[1].posts[1]["json"]["text"]


def test_nothing_is_paged_once_the_request_is_claimed(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world)
    claim(world, request_id, "bob")
    backdate(world, request_id, 30)
    before = (len(smtp[1].emails), len(hook[1].posts))
    for wave in (2, 3):
        result = run(world, jobs.CHECK_SLA, request_id, wave)
        assert result == {"request_id": request_id, "wave": wave, "skipped": "not queued"}
    assert run(world, jobs.PAGE_REQUEST, request_id, 2) == {
        "request_id": request_id,
        "wave": 2,
        "skipped": "not queued",
    }
    assert (len(smtp[1].emails), len(hook[1].posts)) == before


def test_a_release_restarts_the_sla_clock(world: World, smtp: tuple[int, SmtpState]) -> None:
    request_id = request_help(world)
    backdate(world, request_id, 4)
    claim(world, request_id, "bob")
    with world.db.transaction() as session:
        bob = session.get(Tutor, world.tutors["bob"])
        assert bob is not None
        ops.release(session, request_id, bob, {world.pool_id})
    with sessionmaker(world.db.engine)() as session, session.begin():
        # Asked 6 minutes ago (more than the SLA), but back in the queue only just now.
        request = session.get(HelpRequest, request_id)
        assert request is not None
        request.queued_at -= dt.timedelta(minutes=2)
    result = run(world, jobs.CHECK_SLA, request_id, 2)
    assert result == {"request_id": request_id, "wave": 2, "skipped": "not due yet"}
    assert len(smtp[1].emails) == 1


def test_a_job_run_twice_pages_each_target_once(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world, jobs_follow=False)
    assert smtp[1].emails == [] and hook[1].posts == []
    first = run(world, jobs.PAGE_REQUEST, request_id, 1)
    second = run(world, jobs.PAGE_REQUEST, request_id, 1)
    assert first == {
        "request_id": request_id,
        "wave": 1,
        "sent": ["email:ada@tutors.example.edu", f"webhook:{redact_url(hook[0])}"],
        "failed": [],
        "skipped": None,
    }
    assert second == {
        "request_id": request_id,
        "wave": 1,
        "sent": [],
        "failed": [],
        "skipped": None,
    }
    assert recipients(smtp[1]) == Counter({"ada@tutors.example.edu": 1})
    assert len(hook[1].posts) == 1


def test_a_failed_webhook_fails_the_job_and_a_retry_sends_only_what_failed(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world, jobs_follow=False)
    hook[1].statuses = [500]
    with pytest.raises(paging.PagingFailed, match="HTTP 500") as failed:
        run(world, jobs.PAGE_REQUEST, request_id, 1)
    assert "secret-token" not in str(failed.value)
    with world.db.transaction() as session:
        row = session.scalars(select(PageLog).where(PageLog.channel == "webhook")).one()
        assert (row.status, row.error) == (
            "failed",
            f"webhook {redact_url(hook[0])}: HTTP 500 internal_error",
        )
    # RQ retries the job: the email that went out is not sent again; the webhook is.
    retried = run(world, jobs.PAGE_REQUEST, request_id, 1)
    assert retried == {
        "request_id": request_id,
        "wave": 1,
        "sent": [f"webhook:{redact_url(hook[0])}"],
        "failed": [],
        "skipped": None,
    }
    run(world, jobs.PAGE_REQUEST, request_id, 1)
    assert len(hook[1].posts) == 2  # the failed attempt and the one success
    assert recipients(smtp[1]) == Counter({"ada@tutors.example.edu": 1})
    assert [r[3] for r in page_log(world, request_id)] == ["sent", "sent", "sent"]


def test_a_page_cut_off_mid_send_is_never_sent_again(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world, jobs_follow=False)
    target = paging.Target("email", "ada@tutors.example.edu", "ada@tutors.example.edu")
    with world.db.transaction() as session:
        # A run claimed this page, then its worker died: it may or may not have gone out.
        assert paging.claim_page(session, request_id, 1, target)
        assert not paging.claim_page(session, request_id, 1, target)
    run(world, jobs.PAGE_REQUEST, request_id, 1)
    assert smtp[1].emails == []
    assert len(hook[1].posts) == 1
    assert (1, "email", "ada@tutors.example.edu", "sending") in page_log(world, request_id)


def test_an_unreachable_smtp_server_fails_the_page_without_leaking_the_password(
    world: World, hook: tuple[str, WebhookState]
) -> None:
    request_id = request_help(world, jobs_follow=False)
    closed = parse_smtp_url("smtp://pager:hunter2-secret@127.0.0.1:1")
    notifiers = paging.Notifiers(
        webhook=WebhookNotifier(3.0), email=SmtpMailer(closed, "Lifeline <l@x.test>", 3.0)
    )
    with world.db.transaction() as session:
        with pytest.raises(paging.PagingFailed) as failed:
            paging.page_wave(session, request_id, 1, notifiers, BASE)
        row = session.scalars(select(PageLog).where(PageLog.channel == "email")).one()
    assert row.status == "failed" and row.error is not None
    assert "smtp 127.0.0.1:1: ConnectionRefusedError" in row.error
    assert "hunter2" not in row.error and "hunter2" not in str(failed.value)
    assert "hunter2" not in repr(closed)
    assert len(hook[1].posts) == 1  # the other target of the wave still went out


# -- learner alerts ------------------------------------------------------------------------


def test_learners_hear_once_when_two_are_ahead_and_once_when_it_is_their_turn(
    world: World, smtp: tuple[int, SmtpState]
) -> None:
    first = request_help(world, "l-1", skills=("SQL",))
    second = request_help(world, "l-2", skills=("SQL",))
    third = request_help(world, "l-3", skills=("SQL",), notify_email="l3@learners.example.edu")
    fourth = request_help(world, "l-4", skills=("SQL",), notify_email="L4@Learners.example.edu")
    smtp[1].emails.clear()  # the tutor pages

    def learner_mail() -> list[tuple[str, str]]:
        return [(e.rcpt_to[0], e.subject) for e in smtp[1].emails]

    # Joining with two ahead is no news; moving up is: the alerts follow each commit.
    assert learner_mail() == []
    claim(world, first, "ada")
    assert learner_mail() == [
        ("l3@learners.example.edu", "[Lifeline] Almost your turn with a tutor"),
        ("L4@Learners.example.edu", "[Lifeline] Almost your turn with a tutor"),
    ]
    assert "1 learner is ahead of you for a tutor in Python 101 · CSV parsing." in (
        smtp[1].emails[0].body
    )
    assert "2 learners are ahead of you" in smtp[1].emails[1].body
    claim(world, second, "ada")
    claim(world, fourth, "bob")  # a tutor picks the fourth first
    assert learner_mail()[2:] == [
        ("L4@Learners.example.edu", "[Lifeline] A tutor is ready for you")
    ]
    assert "Bob has picked up your question" in smtp[1].emails[2].body
    claim(world, third, "cy")
    assert learner_mail()[3:] == [
        ("l3@learners.example.edu", "[Lifeline] A tutor is ready for you")
    ]
    # Run again (RQ delivers at least once): nobody hears twice.
    run(world, jobs.ALERT_LEARNERS, world.pool_id)
    assert len(smtp[1].emails) == 4
    with world.db.transaction() as session:
        waves = session.scalars(
            select(PageLog.wave).where(PageLog.request_id.in_([third, fourth]), PageLog.wave < 0)
        ).all()
    assert sorted(waves) == [-2, -2, -1, -1]


# -- sweep ---------------------------------------------------------------------------------


def test_sweep_expires_learners_who_stepped_away_and_did_not_return(world: World) -> None:
    away = request_help(world, "l-away", jobs_follow=False)
    staying = request_help(world, "l-stay", jobs_follow=False)
    with world.db.transaction() as session:
        learner_id = session.scalar(select(HelpRequest.learner_id).where(HelpRequest.id == away))
        assert learner_id is not None
        ops.step_away(session, away, learner_id)
    with world.db.engine.begin() as conn:
        conn.execute(
            update(HelpRequest)
            .where(HelpRequest.id == away)
            .values(away_until=utcnow() - dt.timedelta(seconds=1))
        )
    result = run(world, jobs.SWEEP)
    assert isinstance(result, dict) and result["expired"] == [away]
    with world.db.transaction() as session:
        gone = session.get(HelpRequest, away)
        kept = session.get(HelpRequest, staying)
        assert gone is not None and kept is not None
        assert (gone.status, gone.outcome) == (HelpStatus.CANCELLED.value, "no_show")
        assert kept.status == HelpStatus.QUEUED.value
        assert (
            session.scalars(
                select(HelpEvent.kind).where(HelpEvent.request_id == away).order_by(HelpEvent.id)
            ).all()[-1]
            == "request.expired"
        )


def test_sweep_redoes_a_wave_one_page_that_was_lost(
    world: World, smtp: tuple[int, SmtpState], hook: tuple[str, WebhookState]
) -> None:
    lost = request_help(world, "l-lost", jobs_follow=False)
    fresh = request_help(world, "l-fresh", jobs_follow=False)
    backdate(world, lost, 1)
    result = run(world, jobs.SWEEP)
    # Only the request older than the grace: the fresh one's own job may still be coming.
    assert isinstance(result, dict) and result["repaged"] == [[lost, 1]]
    assert recipients(smtp[1]) == Counter({"ada@tutors.example.edu": 1})
    assert len(hook[1].posts) == 1
    assert (1, "wave", "done", "sent") in page_log(world, lost)
    assert page_log(world, fresh) == []
    again = run(world, jobs.SWEEP)
    assert isinstance(again, dict) and again["repaged"] == []
    assert len(smtp[1].emails) == 1


def test_sweep_redoes_a_lost_sla_escalation(world: World, smtp: tuple[int, SmtpState]) -> None:
    request_id = request_help(world)  # wave 1 ran; its SLA check was never scheduled (inline)
    backdate(world, request_id, 5.7)
    result = run(world, jobs.SWEEP)
    assert isinstance(result, dict) and result["repaged"] == [[request_id, 2]]
    assert recipients(smtp[1])["eve@tutors.example.edu"] == 1
    assert run(world, jobs.SWEEP) == {"expired": [], "repaged": []}


# -- notifiers -------------------------------------------------------------------------------


def test_smtp_login_goes_to_the_server_and_the_from_address_is_configurable() -> None:
    with smtp_server(credentials=("pager", "p@ss word")) as (port, state):
        config = parse_smtp_url(f"smtp://pager:p%40ss%20word@127.0.0.1:{port}")
        mailer = SmtpMailer(config, "Course Help <help@uni.example.edu>", 3.0)
        mailer.send("ta@uni.example.edu", Message("Line one\nline two", "Hello"))
    assert state.logins == [("pager", "p@ss word")]
    [email] = state.emails
    assert (email.mail_from, email.rcpt_to) == ("help@uni.example.edu", ["ta@uni.example.edu"])
    assert email.subject == "Line one line two"  # no header injection through a subject
    assert email.body.strip() == "Hello"


def test_smtp_refuses_to_send_a_password_in_clear_to_a_remote_server(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with smtp_server(credentials=("pager", "secret")) as (port, state):
        config = parse_smtp_url(f"smtp://pager:secret@127.0.0.1:{port}")
        # The local server offers no STARTTLS; pretend it is across the network.
        monkeypatch.setattr(SmtpConfig, "loopback", property(lambda self: False))
        with pytest.raises(NotifyError, match="refusing to send the password in clear"):
            SmtpMailer(config, "l@x.test", 3.0).send("ta@x.test", Message("s", "t"))
    assert state.logins == [] and state.emails == []


def test_webhook_timeouts_and_errors_name_the_host_not_the_secret_path() -> None:
    with webhook_server() as (url, state):
        state.hold_first, state.hold_seconds = True, 5
        with pytest.raises(NotifyError) as caught:
            WebhookNotifier(0.5).send(url, Message("s", "t"))
    message = str(caught.value)
    assert message.startswith(f"webhook {redact_url(url)}: ReadTimeout")
    assert "secret-token" not in message and "/services/" not in message
