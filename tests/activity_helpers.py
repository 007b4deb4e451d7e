"""Shared set-up for the activity ingestion tests: a course with learners and exercises that
launched through the real LTI path, Basic credentials, statement builders, row readers."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from lti_tool.activity import credentials
from lti_tool.activity.model import ActivityRecord, RawEvent
from lti_tool.courses import Course, Exercise, Person
from tests.helpers import Actor, launch_as
from tests.platform import TestPlatform

XAPI = {"X-Experience-API-Version": "1.0.3"}
ADL = "http://adlnet.gov/expapi/verbs/"
LMS = "https://lms.example.edu"


def basic(key: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{key}:{secret}".encode()).decode()
    return {"Authorization": "Basic " + token}


@dataclass
class Course_:
    app: Flask
    platform: TestPlatform
    context_id: str
    course_id: int
    platform_id: int
    key: str
    secret: str
    instructor: Actor
    learners: dict[str, Actor] = field(default_factory=dict)
    people: dict[str, int] = field(default_factory=dict)  # sub -> person id
    exercises: dict[str, int] = field(default_factory=dict)  # resource link id -> exercise id

    @property
    def client(self) -> FlaskClient:
        return self.app.test_client()

    def auth(self, **extra: str) -> dict[str, str]:
        return {**basic(self.key, self.secret), **extra}

    def xapi(self, **extra: str) -> dict[str, str]:
        return {**XAPI, **self.auth(**extra)}

    def new_credential(self, label: str = "another") -> tuple[str, str]:
        with self.app.extensions["lifeline"].db.transaction() as session:
            course = session.get(Course, self.course_id)
            assert course is not None
            created = credentials.create(session, course, label)
            return created.credential.key, created.secret


def make_course(
    app: Flask,
    platform: TestPlatform,
    context_id: str = "course-1",
    learners: tuple[str, ...] = ("alice", "bob"),
    links: tuple[str, ...] = ("link-1", "link-2"),
    instructor: str = "ida",
) -> Course_:
    ida = launch_as(
        app, platform, "instructor", instructor, context_id=context_id, resource_link=links[0]
    )
    actors = {}
    for sub in learners:
        for link in links:
            actors[sub] = launch_as(
                app,
                platform,
                "learner",
                sub,
                context_id=context_id,
                resource_link=link,
                email=f"{sub}@example.edu",
            )
    with app.extensions["lifeline"].db.transaction() as session:
        course = session.scalars(
            select(Course).where(
                Course.context_id == context_id, Course.platform_id == platform.platform_id
            )
        ).one()
        created = credentials.create(session, course, "test LRS")
        people = {
            p.sub: p.id
            for p in session.scalars(select(Person).where(Person.platform_id == course.platform_id))
        }
        exercises = {
            e.resource_link_id: e.id
            for e in session.scalars(select(Exercise).where(Exercise.course_id == course.id))
        }
        return Course_(
            app=app,
            platform=platform,
            context_id=context_id,
            course_id=course.id,
            platform_id=course.platform_id,
            key=created.credential.key,
            secret=created.secret,
            instructor=ida,
            learners=actors,
            people=people,
            exercises=exercises,
        )


def statement(
    actor: str = "alice",
    object_id: str = "https://lms.example.edu/activity/link-1",
    verb: str = "answered",
    success: bool | None = None,
    scaled: float | None = None,
    timestamp: str | None = "2026-03-01T10:00:00Z",
    statement_id: str | None = "new",
    **extra: Any,
) -> dict[str, Any]:
    stmt: dict[str, Any] = {
        "actor": {"objectType": "Agent", "account": {"homePage": LMS, "name": actor}},
        "verb": {"id": verb if ":" in verb else ADL + verb, "display": {"en-US": verb}},
        "object": {"objectType": "Activity", "id": object_id},
    }
    if statement_id == "new":
        stmt["id"] = str(uuid.uuid4())
    elif statement_id is not None:
        stmt["id"] = statement_id
    if timestamp is not None:
        stmt["timestamp"] = timestamp
    result: dict[str, Any] = {}
    if success is not None:
        result["success"] = success
    if scaled is not None:
        result["score"] = {"scaled": scaled}
    if result:
        stmt["result"] = result
    stmt.update(extra)
    return stmt


def records(app: Flask, course_id: int | None = None) -> list[ActivityRecord]:
    with app.extensions["lifeline"].db.transaction() as session:
        query = select(ActivityRecord).order_by(ActivityRecord.occurred_at, ActivityRecord.id)
        if course_id is not None:
            query = query.where(ActivityRecord.course_id == course_id)
        return list(session.scalars(query))


def raw_events(app: Flask, course_id: int | None = None) -> list[RawEvent]:
    with app.extensions["lifeline"].db.transaction() as session:
        query = select(RawEvent).order_by(RawEvent.id)
        if course_id is not None:
            query = query.where(RawEvent.course_id == course_id)
        return list(session.scalars(query))
