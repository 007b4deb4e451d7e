"""Course settings: working defaults with no row, the instructor form saving every field (and
the queue obeying it), every invalid field refused by name with nothing saved, and nobody but
the course's instructor changing them."""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from lti_tool.courses import Course, Exercise
from lti_tool.help import settings as course_settings
from lti_tool.help.models import CourseSettings, HelpRequest
from tests.helpers import Actor, launch_as
from tests.platform import TestPlatform

QUESTION = "My loop prints 1 to 9 but I need 1 to 10, and there is no error at all."
VALID = {
    "skills": "Recursion, loops\nSQL joins, recursion",
    "cooldown_minutes": "15",
    "daily_cap": "3",
    "sla_minutes": "7",
    "step_away_minutes": "4",
    "meeting_template": "https://meet.example.org/lifeline-{room}",
    "notify_webhook": "https://hooks.example.org/services/T1/B2/x",
    "notify_emails": "ida@example.org, ta@example.org\nida@example.org",
}


def _settings_row(app: Flask, context_id: str = "course-1") -> tuple[Any, ...] | None:
    with app.extensions["lifeline"].db.transaction() as session:
        course = session.scalars(select(Course).where(Course.context_id == context_id)).one()
        row = session.get(CourseSettings, course.id)
        if row is None:
            return None
        return (
            row.skills,
            row.exercise_priority,
            row.cooldown_minutes,
            row.daily_cap,
            row.sla_minutes,
            row.step_away_minutes,
            row.meeting_template,
            row.notify_webhook,
            row.notify_emails,
            row.updated_at,
        )


def _exercise_id(app: Flask, link: str) -> int:
    with app.extensions["lifeline"].db.transaction() as session:
        return int(
            session.scalars(select(Exercise.id).where(Exercise.resource_link_id == link)).one()
        )


def _save(ida: Actor, form: dict[str, str]) -> Any:
    return ida.post(f"/l/{ida.launch_id}/course/settings", form, json=False)


def _field(page: str, name: str) -> str:
    match = re.search(rf'name="{name}" [^>]*value="([^"]*)"', page)
    assert match, name
    return html.unescape(match.group(1))


def test_defaults_work_with_no_settings_row(app: Flask, platform: TestPlatform) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    alice = launch_as(app, platform, "learner", "alice")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    page = ida.get(f"/l/{ida.launch_id}/course/settings").get_data(as_text=True)
    assert _field(page, "cooldown_minutes") == "0" and _field(page, "daily_cap") == "0"
    assert _field(page, "sla_minutes") == "5" and _field(page, "step_away_minutes") == "10"
    assert _field(page, "meeting_template") == course_settings.DEFAULT_MEETING_TEMPLATE
    assert _field(page, "notify_webhook") == "" and _field(page, "skills") == ""

    # No cooldown, no cap: ask, cancel, ask again at once, several times.
    for _ in range(4):
        made = alice.post(f"/l/{alice.launch_id}/help", {"question": QUESTION})
        assert made.status_code == 200
        request_id = made.get_json()["request_id"]
        cancel = alice.post(f"/l/{alice.launch_id}/help/{request_id}/cancel")
        assert cancel.status_code == 200
    request_id = alice.post(f"/l/{alice.launch_id}/help", {"question": QUESTION}).get_json()[
        "request_id"
    ]
    away = alice.post(f"/l/{alice.launch_id}/help/{request_id}/away").get_json()["away_until"]
    minutes = (dt.datetime.fromisoformat(away) - dt.datetime.now(dt.UTC)).total_seconds() / 60
    assert 9.5 < minutes <= 10
    alice.post(f"/l/{alice.launch_id}/help/{request_id}/back")
    assert tara.post(f"/tutor/requests/{request_id}/claim").status_code == 200
    status = alice.get(f"/l/{alice.launch_id}/help/{request_id}/status.json").get_json()
    assert status["meeting_url"].startswith("https://meet.jit.si/lifeline-")
    assert len(status["meeting_url"]) > len("https://meet.jit.si/lifeline-") + 20
    assert _settings_row(app) is None  # none of it needed a row


def test_the_instructor_form_saves_every_field_and_the_queue_obeys(
    app: Flask, platform: TestPlatform
) -> None:
    ida = launch_as(app, platform, "instructor", "ida", resource_link="lab-1")
    alice = launch_as(app, platform, "learner", "alice", resource_link="lab-1")
    bob = launch_as(app, platform, "learner", "bob", resource_link="lab-2")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    lab1, lab2 = _exercise_id(app, "lab-1"), _exercise_id(app, "lab-2")
    form = {**VALID, f"priority_{lab1}": "2", f"priority_{lab2}": "0"}
    saved = _save(ida, form)
    assert saved.status_code == 303 and saved.headers["Location"].endswith("saved=1")

    page = ida.get(saved.headers["Location"]).get_data(as_text=True)
    assert 'data-testid="settings-saved"' in page
    assert _field(page, "skills") == "Recursion, loops, SQL joins"
    assert _field(page, f"priority_{lab1}") == "2" and _field(page, f"priority_{lab2}") == "0"
    assert _field(page, "meeting_template") == VALID["meeting_template"]
    row = _settings_row(app)
    assert row is not None
    assert row[:9] == (
        ["Recursion", "loops", "SQL joins"],
        {str(lab1): 2},
        15,
        3,
        7,
        4,
        "https://meet.example.org/lifeline-{room}",
        "https://hooks.example.org/services/T1/B2/x",
        ["ida@example.org", "ta@example.org"],
    )

    # Learners pick from the skills; lab-1 is priority 2; the step-away time is 4 minutes.
    form_page = alice.get(f"/l/{alice.launch_id}/help/new").get_data(as_text=True)
    assert 'value="SQL joins"' in form_page
    first = alice.post(f"/l/{alice.launch_id}/help", {"question": QUESTION, "skills": "sql JOINS"})
    second = bob.post(f"/l/{bob.launch_id}/help", {"question": QUESTION})
    with app.extensions["lifeline"].db.transaction() as session:
        rows = {r.id: r for r in session.scalars(select(HelpRequest))}
    a, b = rows[first.get_json()["request_id"]], rows[second.get_json()["request_id"]]
    assert (a.priority, a.skills, b.priority) == (2, ["SQL joins"], 0)
    away = bob.post(f"/l/{bob.launch_id}/help/{b.id}/away").get_json()["away_until"]
    minutes = (dt.datetime.fromisoformat(away) - dt.datetime.now(dt.UTC)).total_seconds() / 60
    assert 3.5 < minutes <= 4
    # The meeting template makes the room.
    assert tara.post(f"/tutor/requests/{a.id}/claim").status_code == 200
    url = alice.get(f"/l/{alice.launch_id}/help/{a.id}/status.json").get_json()["meeting_url"]
    assert re.fullmatch(r"https://meet\.example\.org/lifeline-[A-Za-z0-9]{24}", url), url

    # Clearing the optional fields goes back to the defaults.
    cleared = {**form, "skills": "", "meeting_template": "", "notify_webhook": ""}
    assert _save(ida, {**cleared, "notify_emails": ""}).status_code == 303
    cfg_row = _settings_row(app)
    assert cfg_row is not None and cfg_row[0] == [] and cfg_row[6:9] == (None, None, [])


BASE = {k: v for k, v in VALID.items()}
INVALID = [
    ({"cooldown_minutes": "soon"}, "Cooldown must be a whole number"),
    ({"cooldown_minutes": "-1"}, "Cooldown must be between 0 and 1440"),
    ({"cooldown_minutes": "1441"}, "Cooldown must be between 0 and 1440"),
    ({"cooldown_minutes": ""}, "Cooldown must be a whole number"),
    ({"daily_cap": "lots"}, "Daily cap must be a whole number"),
    ({"daily_cap": "101"}, "Daily cap must be between 0 and 100"),
    ({"daily_cap": "2.5"}, "Daily cap must be a whole number"),
    ({"sla_minutes": "0"}, "SLA must be between 1 and 1440"),
    ({"sla_minutes": "9" * 5000}, "SLA must be a whole number"),
    ({"step_away_minutes": "0"}, "Step-away time must be between 1 and 120"),
    ({"step_away_minutes": "121"}, "Step-away time must be between 1 and 120"),
    ({"priority": "4"}, "exercise priority must be between 0 and 3"),
    ({"priority": "high"}, "exercise priority must be a whole number"),
    ({"skills": "loops, <script>"}, "Skill '<script>' is not valid"),
    ({"skills": "x" * 41}, "is not valid"),
    ({"skills": ",".join(f"skill {n}" for n in range(51))}, "At most 50 skills"),
    ({"meeting_template": "https://meet.example.org/fixed-room"}, "must contain {room}"),
    ({"meeting_template": "http://meet.example.org/{room}"}, "meeting link template must be"),
    ({"meeting_template": "javascript:alert('{room}')"}, "meeting link template must be"),
    ({"meeting_template": "https:///{room}"}, "meeting link template must be an https"),
    ({"meeting_template": "https://[{room}"}, "meeting link template must be an https"),
    ({"meeting_template": "https://m.example.org/{room}" + "x" * 480}, "template is too long"),
    ({"notify_webhook": "http://hooks.example.org/x"}, "webhook must be an https"),
    ({"notify_webhook": "ftp://hooks.example.org/x"}, "webhook must be an https"),
    ({"notify_webhook": "https://"}, "webhook must be an https"),
    ({"notify_webhook": "https://[::1"}, "webhook must be an https"),
    ({"notify_webhook": "hooks.example.org/x"}, "webhook must be an https"),
    ({"notify_webhook": "https://hooks.example.org/" + "x" * 1000}, "webhook address is too long"),
    ({"notify_emails": "ida@example.org, not-an-email"}, "Instructor emails: 'not-an-email'"),
    ({"notify_emails": "a@b"}, "Instructor emails: 'a@b' is not"),
    ({"notify_emails": " ".join(f"t{n}@example.org" for n in range(21))}, "at most 20"),
]


def _form_with(app: Flask, change: dict[str, str]) -> dict[str, str]:
    form = dict(BASE)
    lab = _exercise_id(app, "link-1")
    for key, value in change.items():
        form[f"priority_{lab}" if key == "priority" else key] = value
    return form


@pytest.mark.parametrize("existing", [False, True], ids=["no row yet", "saved before"])
def test_every_invalid_field_is_refused_by_name_and_nothing_is_saved(
    existing: bool, app: Flask, platform: TestPlatform
) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    if existing:
        assert _save(ida, {**BASE, "skills": "loops", "cooldown_minutes": "5"}).status_code == 303
    before = _settings_row(app)
    problems = []
    for change, says in INVALID:
        response = _save(ida, _form_with(app, change))
        text = html.unescape(response.get_data(as_text=True))
        if response.status_code != 400 or says not in text:
            found = re.search(
                r'data-testid="settings-error">([^<]*)<', response.get_data(as_text=True)
            )
            problems.append(f"{change}: {response.status_code} {found and found.group(1)!r}")
            continue
        # The page keeps what was typed so it can be corrected, and says what was wrong.
        assert 'data-testid="settings-error"' in text
        if _settings_row(app) != before:
            problems.append(f"{change}: saved something")
    assert not problems, "\n".join(problems)
    assert _settings_row(app) == before


def test_only_the_course_instructor_can_change_settings(app: Flask, platform: TestPlatform) -> None:
    ida = launch_as(app, platform, "instructor", "ida")
    ivan = launch_as(app, platform, "instructor", "ivan", context_id="course-2")
    alice = launch_as(app, platform, "learner", "alice")
    tara = launch_as(app, platform, "tutor", "ta-tara")
    assert _save(ida, {**BASE, "cooldown_minutes": "5"}).status_code == 303
    before = _settings_row(app)
    hostile = {**BASE, "cooldown_minutes": "0", "daily_cap": "100"}
    for who in (alice, tara):
        response = who.post(f"/l/{who.launch_id}/course/settings", hostile)
        assert response.status_code == 403 and "for instructors" in response.get_json()["detail"]
        # Not through the instructor's launch id either: it belongs to Ida's browser.
        response = who.post(f"/l/{ida.launch_id}/course/settings", hostile)
        assert response.status_code == 403
    # Tutors have no settings endpoint of their own: their session gives them none.
    assert tara.post("/tutor/settings", hostile).status_code in (404, 405)
    # The instructor of course-2 changes course-2, never course-1.
    assert _save(ivan, hostile).status_code == 303
    assert _settings_row(app) == before
    other = _settings_row(app, "course-2")
    assert other is not None and other[2:4] == (0, 100)
