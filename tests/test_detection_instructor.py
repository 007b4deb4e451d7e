"""The instructor's side of stuck detection: the trigger settings form (working defaults, valid
rules saved, invalid ones refused by name with nothing saved, exercise overrides), the backtest
on a constructed history (exact counts, no look-ahead), where learners get stuck (numbers, SVG
charts, CSV), and access (the course's instructors only)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from lti_tool.activity.model import ActivityRecord
from lti_tool.courses import Course
from lti_tool.detection import backtest, live
from lti_tool.detection.models import DetectionRules, Offer
from lti_tool.detection.rules import DEFAULT_RULES, RuleBook
from lti_tool.help.models import HelpRequest
from lti_tool.tutors import operations as tutors
from lti_tool.web import detection as web
from tests.activity_helpers import Course_, make_course
from tests.helpers import Actor, launch_as

T0 = dt.datetime(2026, 1, 5, 10, 0, tzinfo=dt.UTC)
CANDIDATE = {
    "policy": {"cooldown_minutes": 30, "daily_limit": 0},
    "rules": [{"name": "three", "when": {"trigger": "consecutive_failures", "threshold": 3}}],
}


@pytest.fixture
def course(app: Flask, platform: Any) -> Course_:
    return make_course(app, platform)


def url(who: Actor, tail: str = "/") -> str:
    return f"/l/{who.launch_id}/course/detection{tail}"


def post_form(who: Actor, data: dict[str, Any], tail: str = "/") -> Any:
    return who.client.post(url(who, tail), data={**data, "csrf_token": who.csrf()})


def stored(app: Flask, course_id: int) -> dict[str, Any] | None:
    with app.extensions["lifeline"].db.transaction() as session:
        row = session.get(DetectionRules, course_id)
        return None if row is None else dict(row.rules)


def text(response: Any) -> str:
    return str(response.get_data(as_text=True))


def course_form(**extra: str) -> dict[str, str]:
    """A course-scope form: one rule of two triggers (OR), one of them peer-relative."""
    return {
        "scope": "",
        "cooldown_minutes": "15",
        "daily_limit": "4",
        "full_capacity_min_severity": "0.7",
        "escalate": "on",
        "rule_count": "2",
        "r0_name": "failing-or-hinting",
        "r0_severity": "0.55",
        "r0_escalate": "on",
        "r0_escalate_after": "3",
        "r0_combine": "any",
        "r0_cond_count": "2",
        "r0_c0_kind": "consecutive_failures",
        "r0_c0_consecutive_failures_threshold_mode": "abs",
        "r0_c0_consecutive_failures_threshold": "4",
        "r0_c1_kind": "hints",
        "r0_c1_hints_at_least_mode": "peer",
        "r0_c1_hints_at_least_pct": "80",
        "r0_c1_hints_at_least_fallback": "2",
        "r0_c1_hints_at_least_min_peers": "3",
        "r0_c1_hints_at_least_floor": "",
        "r1_name": "",
        "r1_cond_count": "2",
        **extra,
    }


# -- settings -------------------------------------------------------------------------------


def test_defaults_are_shown_with_no_settings(app: Flask, course: Course_) -> None:
    ida = course.instructor
    home = text(ida.get(f"/app/{ida.launch_id}"))
    assert 'data-testid="open-detection"' in home
    page = ida.get(url(ida))
    assert page.status_code == 200
    body = text(page)
    for rule in DEFAULT_RULES["rules"]:
        assert f'value="{rule["name"]}"' in body
    assert 'name="cooldown_minutes" type="number" min="0" step="any" value="30"' in body
    assert 'name="daily_limit" type="number" min="0" value="5"' in body
    assert '<option value="silent_after_failure" selected>' in body
    assert (
        'name="r2_c0_consecutive_failures_threshold_pct" type="number" step="any" value="90"'
        in (body)
    )
    for link in ("link-1", "link-2"):
        assert f'data-testid="scope-exercise-{course.exercises[link]}"' in body
    assert stored(app, course.course_id) is None


def test_the_default_form_saved_untouched_keeps_the_default_rules(
    app: Flask, course: Course_
) -> None:
    values = web.form_defaults({"escalate": False, **DEFAULT_RULES}, None)
    response = post_form(course.instructor, {**values, "action": "save"})
    assert response.status_code == 303, text(response)[:2000]
    raw = stored(app, course.course_id)
    assert raw is not None and raw["escalate"] is False
    book, default = web.book_of(raw), RuleBook.parse(DEFAULT_RULES)
    assert [r.as_json() for r in book.rules] == [r.as_json() for r in default.rules]
    assert book.policy == default.policy


def test_saving_valid_rules_from_the_form(app: Flask, course: Course_) -> None:
    response = post_form(course.instructor, {**course_form(), "action": "save"})
    assert response.status_code == 303, text(response)[:2000]
    assert "saved=1" in response.headers["Location"]
    assert stored(app, course.course_id) == {
        "escalate": True,
        "policy": {"cooldown_minutes": 15, "daily_limit": 4, "full_capacity_min_severity": 0.7},
        "rules": [
            {
                "name": "failing-or-hinting",
                "severity": 0.55,
                "escalate": True,
                "escalate_after_failures": 3,
                "when": {
                    "any": [
                        {"trigger": "consecutive_failures", "threshold": 4},
                        {
                            "trigger": "hints",
                            "at_least": {"peer_percentile": 80, "fallback": 2, "min_peers": 3},
                        },
                    ]
                },
            }
        ],
    }
    with app.extensions["lifeline"].db.transaction() as session:
        book, escalate = live.load_rules(session, course.course_id)
    assert escalate and [r.name for r in book.rules] == ["failing-or-hinting"]
    assert book.policy.daily_limit == 4
    # The page now shows what was saved.
    body = text(course.instructor.get(url(course.instructor)))
    assert 'value="failing-or-hinting"' in body and 'data-testid="detection-saved"' not in body


def test_exercise_override_lists_exercises_and_saves_under_the_exercise(
    app: Flask, course: Course_
) -> None:
    ida, ex2 = course.instructor, course.exercises["link-2"]
    assert ida.get(url(ida) + f"?exercise={ex2}").status_code == 200
    form = {
        "scope": str(ex2),
        "rule_count": "1",
        "r0_name": "quick-guessing",
        "r0_severity": "0.5",
        "r0_escalate_after": "2",
        "r0_cond_count": "1",
        "r0_c0_kind": "rapid_guessing",
        "r0_c0_rapid_guessing_count": "4",
        "action": "save",
    }
    response = post_form(ida, form)
    assert response.status_code == 303 and f"exercise={ex2}" in response.headers["Location"]
    raw = stored(app, course.course_id)
    assert raw is not None
    assert raw["rules"] == DEFAULT_RULES["rules"]  # the course rules stay the defaults
    assert raw["exercises"] == {
        str(ex2): {
            "inherit": False,
            "rules": [
                {
                    "name": "quick-guessing",
                    "severity": 0.5,
                    "escalate": False,
                    "escalate_after_failures": 2,
                    "when": {"trigger": "rapid_guessing", "count": 4},
                }
            ],
        }
    }
    book = web.book_of(raw)
    assert [r.name for r in book.for_exercise(str(ex2))] == ["quick-guessing"]
    assert len(book.for_exercise(str(course.exercises["link-1"]))) == 3
    page = text(ida.get(url(ida)))
    assert "(own rules)" in page
    # An exercise of no course of ours is refused by name.
    bad = post_form(ida, {**form, "scope": "999999"})
    assert bad.status_code == 400 and "exercise" in text(bad)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"r0_c0_consecutive_failures_threshold": "0"}, "", "'threshold'"),
        ({"r0_severity": "lots"}, "r0_severity", "severity must be a number"),
        ({"r0_severity": "1.5"}, "", "'severity'"),
        ({"daily_limit": "-1"}, "", "'daily_limit'"),
        ({"cooldown_minutes": ""}, "cooldown_minutes", "cooldown (minutes) is required"),
        ({"r0_c1_hints_at_least_pct": "x"}, "r0_c1_hints_at_least_pct", "peer_percentile"),
        ({"r0_c1_hints_at_least_pct": "150"}, "", "'at_least.peer_percentile'"),
        ({"r0_name": ""}, "r0_name", "give the rule a name"),
        ({"r0_c0_kind": "telepathy"}, "r0_c0_kind", "unknown trigger kind"),
        ({"r0_combine": "xor"}, "r0_combine", "all (AND) or any (OR)"),
    ],
)
def test_invalid_rules_are_refused_by_name_and_nothing_is_saved(
    app: Flask, course: Course_, change: dict[str, str], field: str, words: str
) -> None:
    response = post_form(course.instructor, {**course_form(**change), "action": "save"})
    assert response.status_code == 400
    body = text(response)
    error = re.search(r'data-testid="detection-error" data-field="([^"]*)">([^<]*)<', body)
    assert error, body[:3000]
    assert error.group(1) == field
    assert words.replace("'", "&#39;") in error.group(2), error.group(2)
    assert stored(app, course.course_id) is None
    # the instructor's input is kept on the page
    assert 'value="0.7"' in body and ("r0_name" in change or 'value="failing-or-hinting"' in body)


def test_rapid_guessing_below_its_minimum_names_trigger_and_parameter(
    app: Flask, course: Course_
) -> None:
    ida = course.instructor
    assert post_form(ida, {**course_form(), "action": "save"}).status_code == 303
    before = stored(app, course.course_id)
    bad = course_form(r0_c0_kind="rapid_guessing", r0_c0_rapid_guessing_count="1")
    response = post_form(ida, {**bad, "action": "save"})
    assert response.status_code == 400
    assert "trigger &#39;rapid_guessing&#39;: parameter &#39;count&#39; must be &gt;= 2" in text(
        response
    )
    assert stored(app, course.course_id) == before


def test_advanced_json_saves_and_refuses_by_name(app: Flask, course: Course_) -> None:
    ida = course.instructor
    bad_json = post_form(ida, {"rules_json": "{nope", "action": "save"}, "/json")
    assert bad_json.status_code == 400 and 'data-field="rules_json"' in text(bad_json)
    foreign = {**CANDIDATE, "exercises": {"424242": {"rules": []}}}
    response = post_form(ida, {"rules_json": json.dumps(foreign), "action": "save"}, "/json")
    assert response.status_code == 400 and 'data-field="exercises"' in text(response)
    unknown = {**CANDIDATE, "rules": [{"name": "x", "when": {"trigger": "nope"}}]}
    response = post_form(ida, {"rules_json": json.dumps(unknown), "action": "save"}, "/json")
    assert response.status_code == 400 and "unknown trigger kind" in text(response)
    assert stored(app, course.course_id) is None
    ok = {**CANDIDATE, "escalate": True}
    response = post_form(ida, {"rules_json": json.dumps(ok), "action": "save"}, "/json")
    assert response.status_code == 303
    assert stored(app, course.course_id) == ok


def test_forms_need_the_csrf_token(app: Flask, course: Course_) -> None:
    ida = course.instructor
    response = ida.client.post(url(ida), data={**course_form(), "action": "save"})
    assert response.status_code == 400
    assert stored(app, course.course_id) is None


# -- backtest ---------------------------------------------------------------------------------


def add_records(
    app: Flask, course: Course_, rows: list[tuple[str, str, dt.datetime, bool]]
) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        for sub, link, at, correct in rows:
            session.add(
                ActivityRecord(
                    platform_id=course.platform_id,
                    course_id=course.course_id,
                    exercise_id=course.exercises[link],
                    learner_id=course.people[sub],
                    source="sdk",
                    kind="submit",
                    correct=correct,
                    error=None if correct else "AssertionError",
                    occurred_at=at,
                )
            )


def add_request(
    app: Flask,
    course: Course_,
    sub: str,
    link: str | None,
    created: dt.datetime,
    *,
    claimed: dt.datetime | None = None,
    outcome: str | None = None,
    status: str = "resolved",
) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        row = session.get(Course, course.course_id)
        assert row is not None
        pool = tutors.ensure_course_pool(session, row)
        session.add(
            HelpRequest(
                platform_id=course.platform_id,
                course_id=course.course_id,
                exercise_id=course.exercises[link] if link else None,
                learner_id=course.people[sub],
                pool_id=pool.id,
                status=status,
                question="Help me with this loop please, it never ends.",
                created_at=created,
                queued_at=created,
                claimed_at=claimed,
                outcome=outcome,
            )
        )


def history(app: Flask, course: Course_) -> None:
    minute = dt.timedelta(minutes=1)
    day2 = T0 + dt.timedelta(days=1)
    add_records(
        app,
        course,
        [
            # alice, link-1: three failures (flag), then solves alone
            ("alice", "link-1", T0, False),
            ("alice", "link-1", T0 + minute, False),
            ("alice", "link-1", T0 + 2 * minute, False),
            ("alice", "link-1", T0 + 5 * minute, True),
            # bob, link-1: two failures, then solves: never flagged
            ("bob", "link-1", T0 + 3 * minute, False),
            ("bob", "link-1", T0 + 4 * minute, False),
            ("bob", "link-1", T0 + 6 * minute, True),
            # alice, link-2 (day 2): three failures (flag), asks for help, then solves
            ("alice", "link-2", day2, False),
            ("alice", "link-2", day2 + minute, False),
            ("alice", "link-2", day2 + 2 * minute, False),
            ("alice", "link-2", day2 + 20 * minute, True),
            # bob, link-2 (day 2): four failures (one flag: cooldown), never solves
            ("bob", "link-2", day2 + 3 * minute, False),
            ("bob", "link-2", day2 + 4 * minute, False),
            ("bob", "link-2", day2 + 5 * minute, False),
            ("bob", "link-2", day2 + 6 * minute, False),
        ],
    )
    add_request(app, course, "alice", "link-2", day2 + 10 * minute, outcome="solved")


def test_backtest_counts_on_a_constructed_history(app: Flask, course: Course_) -> None:
    history(app, course)
    with app.extensions["lifeline"].db.transaction() as session:
        result = backtest.run(session, course.course_id, RuleBook.parse(CANDIDATE))
    assert result.events == 15
    assert (result.learners_flagged, result.attempts_flagged) == (2, 3)
    assert (result.offers, result.escalations) == (3, 0)
    assert result.solved_alone == 1  # alice on link-1; on link-2 she asked for help first
    assert result.by_rule == {"three": 3}
    assert result.timeline == [("2026-01-05", 1), ("2026-01-06", 2)]


def test_backtest_has_no_look_ahead(app: Flask, course: Course_) -> None:
    """A peer-relative threshold only knows the peers who solved the exercise *before*: Bob's
    failures before Alice solved it are judged by the fallback, those after by her streak."""
    minute = dt.timedelta(minutes=1)
    rules = RuleBook.parse(
        {
            "policy": {"daily_limit": 0, "cooldown_minutes": 0},
            "rules": [
                {
                    "name": "peer",
                    "when": {
                        "trigger": "consecutive_failures",
                        "threshold": {"peer_percentile": 50, "fallback": 99, "min_peers": 1},
                    },
                }
            ],
        }
    )

    def run() -> backtest.Backtest:
        with app.extensions["lifeline"].db.transaction() as session:
            return backtest.run(session, course.course_id, rules)

    add_records(
        app,
        course,
        [
            ("bob", "link-1", T0, False),
            ("bob", "link-1", T0 + minute, False),
            ("alice", "link-1", T0 + 2 * minute, False),
            ("alice", "link-1", T0 + 3 * minute, True),  # her streak: 1
        ],
    )
    assert run().offers == 0  # Bob's 2 came before anyone had solved it: fallback 99
    add_records(app, course, [("bob", "link-1", T0 + 10 * minute, False)])
    result = run()
    assert (result.offers, result.attempts_flagged, result.learners_flagged) == (1, 1, 1)


def test_backtest_button_shows_candidate_and_saved_side_by_side(
    app: Flask, course: Course_
) -> None:
    history(app, course)
    ida = course.instructor
    form = course_form(
        rule_count="1",
        r0_name="three",
        r0_combine="all",
        r0_c0_consecutive_failures_threshold="3",
        r0_c1_kind="",
        daily_limit="0",
        cooldown_minutes="30",
    )
    response = post_form(ida, {**form, "action": "backtest"})
    assert response.status_code == 200, text(response)[:2000]
    body = text(response)
    candidate = body.split('data-testid="backtest-candidate"')[1].split(
        'data-testid="backtest-saved"'
    )[0]
    assert 'data-testid="bt-learners">2<' in candidate
    assert 'data-testid="bt-attempts">3<' in candidate
    assert 'data-testid="bt-solved-alone">1 (33 %)<' in candidate
    assert 'data-testid="backtest-timeline"' in candidate
    saved = body.split('data-testid="backtest-saved"')[1]
    assert 'data-testid="bt-events">15<' in saved
    with app.extensions["lifeline"].db.transaction() as session:
        defaults = backtest.run(session, course.course_id, RuleBook.parse(DEFAULT_RULES))
    assert f'data-testid="bt-attempts">{defaults.attempts_flagged}<' in saved
    assert stored(app, course.course_id) is None  # a backtest saves nothing


# -- where learners get stuck -------------------------------------------------------------------


def add_offer(app: Flask, course: Course_, sub: str, link: str, status: str) -> None:
    with app.extensions["lifeline"].db.transaction() as session:
        session.add(
            Offer(
                course_id=course.course_id,
                learner_id=course.people[sub],
                exercise_id=course.exercises[link],
                rule="three",
                status=status,
                created_at=T0,
                responded_at=T0 + dt.timedelta(minutes=1),
            )
        )


def analytics_data(app: Flask, course: Course_) -> None:
    add_offer(app, course, "alice", "link-1", "accepted")
    add_offer(app, course, "bob", "link-1", "declined")
    add_offer(app, course, "bob", "link-1", "expired")
    add_offer(app, course, "alice", "link-2", "offered")
    m = dt.timedelta(minutes=1)
    add_request(app, course, "alice", "link-1", T0, claimed=T0 + 4 * m, outcome="solved")
    add_request(app, course, "bob", "link-1", T0, claimed=T0 + 10 * m, outcome="no_show")
    add_request(app, course, "bob", "link-1", T0, claimed=T0 + 20 * m, outcome="partly")
    add_request(app, course, "alice", "link-2", T0, claimed=T0 + 3 * m, outcome="not_solved")
    add_request(app, course, "bob", "link-2", T0, status="queued")


def test_where_learners_get_stuck_page_and_csv(app: Flask, course: Course_, platform: Any) -> None:
    analytics_data(app, course)
    other = make_course(app, platform, "course-2", learners=("carol",), instructor="ivan")
    with app.extensions["lifeline"].db.transaction() as session:
        session.add(
            Offer(
                course_id=other.course_id,
                learner_id=other.people["carol"],
                exercise_id=other.exercises["link-1"],
                rule="three",
                status="accepted",
            )
        )
    ida = course.instructor
    page = ida.get(url(ida, "/stuck"))
    assert page.status_code == 200
    body = text(page)
    assert body.count('data-testid="stuck-chart"') == 5
    assert "<title>Exercise link-1: 3</title>" in body  # flags on link-1, as a tooltip
    assert "<title>Exercise link-1: 10 min</title>" in body  # median wait
    assert "<title>solved: 1</title>" in body and "<title>no-show: 1</title>" in body
    assert 'data-testid="chart-value">3<' in body
    rows = re.findall(r'<tr data-testid="stuck-row"[^>]*>(.*?)</tr>', body, re.S)
    cells = [re.findall(r"<td>([^<]*)</td>", r) for r in rows]
    assert cells == [
        ["Exercise link-1", "3", "1", "3", "10", "1", "1", "0", "1"],
        ["Exercise link-2", "1", "0", "2", "3", "0", "0", "1", "0"],
    ]

    response = ida.get(url(ida, "/stuck.csv"))
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert list(csv.reader(io.StringIO(text(response)))) == [
        [
            "exercise_id",
            "exercise",
            "flags",
            "offers_accepted",
            "help_requests",
            "median_wait_minutes",
            "outcome_solved",
            "outcome_partly",
            "outcome_not_solved",
            "outcome_no_show",
        ],
        [
            str(course.exercises["link-1"]),
            "Exercise link-1",
            "3",
            "1",
            "3",
            "10",
            "1",
            "1",
            "0",
            "1",
        ],
        [
            str(course.exercises["link-2"]),
            "Exercise link-2",
            "1",
            "0",
            "2",
            "3",
            "0",
            "0",
            "1",
            "0",
        ],
    ]
    # Course-2's instructor sees course-2 only.
    ivan = other.instructor
    theirs = list(csv.reader(io.StringIO(text(ivan.get(url(ivan, "/stuck.csv"))))))
    assert [r[:5] for r in theirs[1:]] == [
        [str(other.exercises["link-1"]), "Exercise link-1", "1", "1", "0"],
        [str(other.exercises["link-2"]), "Exercise link-2", "0", "0", "0"],
    ]


def test_empty_course_shows_empty_charts(course: Course_) -> None:
    ida = course.instructor
    body = text(ida.get(url(ida, "/stuck")))
    assert body.count('data-testid="stuck-chart"') == 5
    assert "<title>Exercise link-1: 0</title>" in body
    assert len(list(csv.reader(io.StringIO(text(ida.get(url(ida, "/stuck.csv"))))))) == 3


# -- access ---------------------------------------------------------------------------------------


def test_only_the_course_instructor_gets_in(app: Flask, platform: Any, course: Course_) -> None:
    ida = course.instructor
    alice = course.learners["alice"]
    tara = launch_as(app, platform, "tutor", "ta-tara", context_id=course.context_id)
    for who in (alice, tara):
        for tail in ("/", "/stuck", "/stuck.csv"):
            assert who.get(url(who, tail)).status_code == 403
            assert who.get(url(ida, tail)).status_code == 403  # not through Ida's launch either
        response = post_form(who, {**course_form(), "action": "save"})
        assert response.status_code == 403
        assert post_form(who, {"rules_json": json.dumps(CANDIDATE)}, "/json").status_code == 403
    assert stored(app, course.course_id) is None
    # Another course's instructor saves their own course's rules, never this one's.
    other = make_course(app, platform, "course-2", learners=("carol",), instructor="ivan")
    response = post_form(other.instructor, {**course_form(), "action": "save"})
    assert response.status_code == 303
    assert stored(app, course.course_id) is None and stored(app, other.course_id) is not None
    # Nor can they aim an override at this course's exercise.
    response = post_form(
        other.instructor,
        {**course_form(), "scope": str(course.exercises["link-1"]), "action": "save"},
    )
    assert response.status_code == 400
    # The same context id on another platform is another course.
    with app.extensions["lifeline"].db.transaction() as session:
        ids = session.scalars(select(Course.id).where(Course.context_id == "course-1")).all()
    assert ids == [course.course_id]
