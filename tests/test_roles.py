"""Role URIs (long and short forms) to Lifeline's three audiences, and where each lands."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from lti_tool.lti.roles import Audience, audience_for
from tests.platform import CLAIM, LIS, TestPlatform

MEMBERSHIP = LIS + "membership#"
INSTITUTION = LIS + "institution/person#"
SYSTEM = LIS + "system/person#"
TA_SUB_ROLE = LIS + "membership/Instructor#TeachingAssistant"

LEARNER, INSTRUCTOR, TUTOR = Audience.LEARNER, Audience.INSTRUCTOR, Audience.TUTOR

CASES: list[tuple[str, list[str], Audience]] = [
    ("learner-long", [MEMBERSHIP + "Learner"], LEARNER),
    ("learner-short", ["Learner"], LEARNER),
    ("instructor-long", [MEMBERSHIP + "Instructor"], INSTRUCTOR),
    ("instructor-short", ["Instructor"], INSTRUCTOR),
    ("content-developer-long", [MEMBERSHIP + "ContentDeveloper"], INSTRUCTOR),
    ("content-developer-short", ["ContentDeveloper"], INSTRUCTOR),
    ("ta-with-principal", [MEMBERSHIP + "Instructor", TA_SUB_ROLE], TUTOR),
    ("ta-sub-role-alone", [TA_SUB_ROLE], TUTOR),
    ("ta-short", ["TeachingAssistant"], TUTOR),
    ("ta-short-sub-role", ["Instructor", "Instructor#TeachingAssistant"], TUTOR),
    ("mentor-long", [MEMBERSHIP + "Mentor"], TUTOR),
    ("mentor-short", ["Mentor"], TUTOR),
    ("context-admin-long", [MEMBERSHIP + "Administrator"], INSTRUCTOR),
    ("context-admin-short", ["Administrator"], INSTRUCTOR),
    ("institution-admin", [INSTITUTION + "Administrator"], INSTRUCTOR),
    ("system-sysadmin", [SYSTEM + "SysAdmin"], INSTRUCTOR),
    ("system-admin", [SYSTEM + "Administrator"], INSTRUCTOR),
    ("institution-instructor-alone", [INSTITUTION + "Instructor"], LEARNER),
    ("institution-instructor-course-learner", [INSTITUTION + "Instructor", "Learner"], LEARNER),
    ("institution-student", [INSTITUTION + "Student", MEMBERSHIP + "Learner"], LEARNER),
    ("system-user", [SYSTEM + "User"], LEARNER),
    ("unknown-uri", ["http://example.com/roles#Wizard"], LEARNER),
    ("unknown-short", ["Wizard"], LEARNER),
    ("empty", [], LEARNER),
    ("learner-and-instructor", [MEMBERSHIP + "Learner", MEMBERSHIP + "Instructor"], INSTRUCTOR),
    (
        "canvas-teacher",
        [INSTITUTION + "Instructor", MEMBERSHIP + "Instructor", SYSTEM + "User"],
        INSTRUCTOR,
    ),
]

IDS = [case[0] for case in CASES]


@pytest.mark.parametrize(("roles", "expected"), [c[1:] for c in CASES], ids=IDS)
def test_audience_for(roles: list[str], expected: Audience) -> None:
    assert audience_for(roles) is expected
    assert audience_for(reversed(roles)) is expected  # order never matters
    assert audience_for(iter(roles)) is expected  # any iterable


def test_other_lis_vocabularies_say_nothing_about_the_course() -> None:
    assert audience_for([LIS + "person#Instructor"]) is LEARNER
    assert audience_for([LIS + "membership/Learner#Learner"]) is LEARNER


@pytest.mark.parametrize(("roles", "expected"), [c[1:] for c in CASES], ids=IDS)
def test_launch_lands_on_the_page_of_its_audience(
    client: FlaskClient, platform: TestPlatform, roles: list[str], expected: Audience
) -> None:
    response = platform.launch(client, **{CLAIM + "roles": roles})
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert f'data-testid="{expected.value}-home"' in html
    for other in Audience:
        if other is not expected:
            assert f'data-testid="{other.value}-home"' not in html
