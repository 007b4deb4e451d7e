"""People, courses and exercises as the LMS describes them, scoped to a platform registration.

A launch records who launched into which course and exercise. Every row carries its
``platform_id`` so nothing crosses from one registration (tenant) to another. Launches repeat
the same facts many times a day, so ``record_launch`` skips the write when this process wrote
the same facts recently.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass

from sqlalchemy import ForeignKey, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from .db import Base, UTCDateTime, utcnow


class Person(Base):
    __tablename__ = "people"
    __table_args__ = (UniqueConstraint("platform_id", "sub", name="uq_people_platform_sub"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))
    sub: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(500), default="")
    email: Mapped[str] = mapped_column(String(500), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Course(Base):
    __tablename__ = "courses"
    __table_args__ = (
        UniqueConstraint("platform_id", "context_id", name="uq_courses_platform_context"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    platform_id: Mapped[int] = mapped_column(ForeignKey("platforms.id", ondelete="CASCADE"))
    deployment_id: Mapped[str] = mapped_column(String(255))
    context_id: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(500), default="")
    label: Mapped[str] = mapped_column(String(500), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Exercise(Base):
    __tablename__ = "exercises"
    __table_args__ = (
        UniqueConstraint("course_id", "resource_link_id", name="uq_exercises_course_link"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(ForeignKey("courses.id", ondelete="CASCADE"))
    resource_link_id: Mapped[str] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(500), default="")
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


@dataclass(frozen=True)
class LaunchFacts:
    platform_id: int
    deployment_id: str
    sub: str
    name: str
    email: str
    context_id: str
    context_title: str
    context_label: str
    resource_link_id: str
    resource_link_title: str


@dataclass(frozen=True)
class LaunchRecord:
    person_id: int
    course_id: int | None
    exercise_id: int | None


class _Recent:
    """Facts written recently by this process, so a repeat launch costs no database write."""

    def __init__(self, ttl: float = 60.0, size: int = 50_000) -> None:
        self.ttl, self.size = ttl, size
        self._seen: dict[LaunchFacts, tuple[float, LaunchRecord]] = {}
        self._lock = threading.Lock()

    def get(self, facts: LaunchFacts) -> LaunchRecord | None:
        hit = self._seen.get(facts)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def put(self, facts: LaunchFacts, record: LaunchRecord) -> None:
        with self._lock:
            if len(self._seen) >= self.size:
                self._seen.clear()
            self._seen[facts] = (time.monotonic() + self.ttl, record)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


recent_launches = _Recent()


def _upsert_person(session: Session, facts: LaunchFacts) -> Person:
    person = session.scalars(
        select(Person).where(Person.platform_id == facts.platform_id, Person.sub == facts.sub)
    ).first()
    if person is None:
        person = Person(platform_id=facts.platform_id, sub=facts.sub)
        session.add(person)
    # A launch without a name (an LMS hiding names from tools) keeps the one the roster gave.
    person.name = facts.name or person.name or ""
    person.email = facts.email or person.email or ""
    person.updated_at = utcnow()
    return person


def _upsert_course(session: Session, facts: LaunchFacts) -> Course:
    course = session.scalars(
        select(Course).where(
            Course.platform_id == facts.platform_id, Course.context_id == facts.context_id
        )
    ).first()
    if course is None:
        course = Course(platform_id=facts.platform_id, context_id=facts.context_id)
        session.add(course)
    course.deployment_id = facts.deployment_id
    course.title = facts.context_title or course.title
    course.label = facts.context_label or course.label
    course.updated_at = utcnow()
    return course


def _upsert_exercise(session: Session, course: Course, facts: LaunchFacts) -> Exercise:
    exercise = session.scalars(
        select(Exercise).where(
            Exercise.course_id == course.id, Exercise.resource_link_id == facts.resource_link_id
        )
    ).first()
    if exercise is None:
        exercise = Exercise(course_id=course.id, resource_link_id=facts.resource_link_id)
        session.add(exercise)
    exercise.title = facts.resource_link_title or exercise.title
    exercise.updated_at = utcnow()
    return exercise


def record_launch(session: Session, facts: LaunchFacts) -> tuple[LaunchRecord, bool]:
    """Create or refresh the person, course and exercise a launch names.

    Returns the record and whether it was written; the caller puts a written record in
    ``recent_launches`` once the transaction has committed (never before: a rolled-back id
    must not be remembered).
    """
    cached = recent_launches.get(facts)
    if cached is not None:
        return cached, False
    for attempt in range(2):
        try:
            with session.begin_nested():
                person = _upsert_person(session, facts)
                course = _upsert_course(session, facts) if facts.context_id else None
                session.flush()
                exercise = (
                    _upsert_exercise(session, course, facts)
                    if course is not None and facts.resource_link_id
                    else None
                )
                session.flush()
            break
        except IntegrityError:
            # Two first launches raced to insert the same row; the second try finds it.
            if attempt:
                raise
    record = LaunchRecord(
        person_id=person.id,
        course_id=course.id if course is not None else None,
        exercise_id=exercise.id if exercise is not None else None,
    )
    return record, True
