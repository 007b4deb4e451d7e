"""A complete, valid launch for each audience, and what it leaves behind."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from lti_tool.courses import Course, Exercise, Person
from lti_tool.lti.models import Platform
from tests.platform import CLAIM, LIS, ROLE_INSTRUCTOR, ROLE_TA, TestPlatform


def test_learner_launch_shows_course_and_exercise(
    client: FlaskClient, platform: TestPlatform, app: Flask
) -> None:
    response = platform.launch(client)
    assert response.status_code == 200, response.get_data(as_text=True)
    html = response.get_data(as_text=True)
    assert 'data-testid="learner-home"' in html
    assert "Intro to Programming" in html
    assert "Lab 3: Recursion" in html
    assert 'data-testid="get-tutor"' in html

    with app.extensions["lifeline"].db.transaction() as session:
        person = session.scalars(select(Person)).one()
        assert (person.sub, person.name, person.platform_id) == (
            "learner-42",
            "Lin Learner",
            platform.platform_id,
        )
        course = session.scalars(select(Course)).one()
        assert (course.context_id, course.title) == ("course-1", "Intro to Programming")
        exercise = session.scalars(select(Exercise)).one()
        assert (exercise.course_id, exercise.resource_link_id) == (course.id, "link-1")
        assert session.get(Platform, platform.platform_id).last_launch_at is not None


def test_instructor_and_tutor_land_on_their_pages(
    client: FlaskClient, platform: TestPlatform
) -> None:
    instructor = platform.launch(client, **{CLAIM + "roles": [ROLE_INSTRUCTOR]})
    assert 'data-testid="instructor-home"' in instructor.get_data(as_text=True)
    tutor = platform.launch(client, **{CLAIM + "roles": [ROLE_INSTRUCTOR, ROLE_TA]})
    assert 'data-testid="tutor-home"' in tutor.get_data(as_text=True)
    mentor = platform.launch(client, **{CLAIM + "roles": [LIS + "membership#Mentor"]})
    assert 'data-testid="tutor-home"' in mentor.get_data(as_text=True)
