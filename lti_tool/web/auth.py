"""Who is asking: the launch-based identities (learner, instructor) and the tutor session.

Learners and instructors act through a launch this browser made (``/l/<launch_id>/...``):
the launch names the person, the course and the exercise, scoped to one platform
registration, so nothing crosses tenants. Tutors act through ``session['tutor_id']``, set by
a TeachingAssistant/Mentor launch or by Lifeline's own login for invited experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import abort, session
from sqlalchemy.orm import Session

from ..courses import Course, Person
from ..launches import ActiveLaunch
from ..lti.roles import Audience
from ..tutors.models import Tutor
from ..tutors.operations import tutor_pool_ids
from .lti import launch_for_browser

TUTOR_SESSION_KEY = "tutor_id"


@dataclass(frozen=True)
class LaunchContext:
    active: ActiveLaunch
    person: Person
    course: Course

    @property
    def launch_id(self) -> str:
        return self.active.launch.launch_id

    @property
    def exercise_id(self) -> int | None:
        return self.active.record.exercise_id


def launch_context(db: Session, launch_id: str, audience: Audience | None = None) -> LaunchContext:
    """The launch ``launch_id`` of this browser, with its person and course; 403 otherwise."""
    active = launch_for_browser(launch_id)
    if audience is not None and active.launch.audience is not audience:
        abort(403, description=f"This page is for {audience.value}s of the course.")
    if active.record.course_id is None:
        abort(400, description="This launch did not name a course, so it has no help queue.")
    person = db.get(Person, active.record.person_id)
    course = db.get(Course, active.record.course_id)
    if person is None or course is None or course.platform_id != active.launch.registration_id:
        abort(401, description="This launch has expired. Open Lifeline from your course again.")
    return LaunchContext(active, person, course)


@dataclass(frozen=True)
class TutorContext:
    tutor: Tutor
    pool_ids: set[int]


def current_tutor(db: Session) -> TutorContext:
    tutor_id = session.get(TUTOR_SESSION_KEY)
    tutor = db.get(Tutor, tutor_id) if isinstance(tutor_id, int) else None
    if tutor is None:
        abort(
            401,
            description="Log in as a tutor first: open Lifeline from your course, or use the "
            "tutor login page.",
        )
    return TutorContext(tutor, tutor_pool_ids(db, tutor.id))


def sign_in_tutor(tutor_id: int) -> None:
    session[TUTOR_SESSION_KEY] = tutor_id


def sign_out_tutor() -> None:
    session.pop(TUTOR_SESSION_KEY, None)
