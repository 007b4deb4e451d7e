"""Custom parameters: only strings, bounded, no NUL, and a substitution variable the LMS sent
back unresolved ("$Canvas.course.id") is absent; what Lifeline asks for is kept on the course."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from lti_tool.launches import load
from lti_tool.lms import endpoints
from lti_tool.lms.models import CourseServices
from lti_tool.lti import custom
from lti_tool.lti.tool_config import CANVAS_CUSTOM_PARAMETERS, CUSTOM_PARAMETERS
from tests.helpers import Actor, launch_as
from tests.platform import CLAIM, TestPlatform

CUSTOM = CLAIM + "custom"


def test_safe_custom_keeps_only_usable_strings() -> None:
    raw: dict[Any, Any] = {
        "canvas_course_id": "$Canvas.course.id",  # sent back literally: unresolved
        "canvas_user_id": " $Canvas.user.id ",
        "context_id_history": "$Context.id.history",
        "person_timezone": "Europe/Berlin",
        "price": "$5 off",  # a dollar sign, but not a variable name
        "sentence": "costs $Canvas.course.id dollars",  # a variable inside text is just text
        "number": 4711,
        "flag": True,
        "nested": {"a": "b"},
        "list": ["x"],
        "nul": "a\x00b",
        "long": "x" * (custom.MAX_VALUE + 1),
        "x" * (custom.MAX_NAME + 1): "long name",
        7: "not a string name",
        "": "empty name",
    }
    assert custom.safe_custom(raw) == {
        "person_timezone": "Europe/Berlin",
        "price": "$5 off",
        "sentence": "costs $Canvas.course.id dollars",
    }
    assert custom.safe_custom("not an object") == {}
    assert custom.safe_custom(["a"]) == {}
    assert custom.is_unresolved("$Canvas.course.id")
    assert custom.is_unresolved("$ResourceLink.id")
    assert not custom.is_unresolved("$5")
    assert not custom.is_unresolved("4711")
    assert custom.value(raw, "canvas_course_id") is None
    assert custom.value(raw, "person_timezone") == "Europe/Berlin"
    assert custom.value({"blank": "   "}, "blank") is None
    assert custom.value({}, "missing") is None
    assert custom.canvas_id({"canvas_course_id": "4711"}, "canvas_course_id") == "4711"
    assert custom.canvas_id({"canvas_course_id": "47 11"}, "canvas_course_id") is None
    assert custom.canvas_id({"canvas_course_id": "$Canvas.course.id"}, "canvas_course_id") is None
    assert custom.context_history({"context_id_history": "old-2, old-1,,"}) == ("old-2", "old-1")


def test_the_parameters_lifeline_asks_for_are_substitution_variables() -> None:
    """What the tool registers is exactly what an LMS that cannot resolve it sends back."""
    for name, variable in CANVAS_CUSTOM_PARAMETERS.items():
        assert custom.is_unresolved(variable), name
        assert custom.safe_custom({name: variable}) == {}
    assert set(CUSTOM_PARAMETERS) <= set(CANVAS_CUSTOM_PARAMETERS)


def _active(app: Flask, actor: Actor) -> Any:
    found = load(app.extensions["lifeline"].redis, actor.launch_id)
    assert found is not None
    return found.launch


def _services_rows(app: Flask) -> list[CourseServices]:
    with app.extensions["lifeline"].db.transaction() as session:
        return list(session.scalars(select(CourseServices)))


def test_a_launch_with_unresolved_variables_treats_them_as_absent(
    app: Flask, platform: TestPlatform
) -> None:
    literal = dict(CANVAS_CUSTOM_PARAMETERS)  # every value is "$Something.literal"
    actor = launch_as(app, platform, "learner", "lee", **{CUSTOM: literal})
    launch = _active(app, actor)
    assert launch.custom == {}
    for name in CANVAS_CUSTOM_PARAMETERS:
        assert launch.custom_value(name) is None
    assert _services_rows(app) == []  # nothing worth storing on the course


def test_resolved_values_are_kept_and_stored_on_the_course(
    app: Flask, platform: TestPlatform
) -> None:
    values = {
        "canvas_course_id": "4711",
        "canvas_user_id": "90210",
        "context_id_history": "course-0,course-00",
        "person_timezone": "America/Chicago",
        "score": 12,  # not a string: dropped, not coerced
    }
    actor = launch_as(app, platform, "instructor", "ida", **{CUSTOM: values})
    launch = _active(app, actor)
    assert launch.custom_value("canvas_course_id") == "4711"
    assert launch.custom_value("person_timezone") == "America/Chicago"
    assert launch.custom_value("score") is None and "score" not in launch.custom
    [row] = _services_rows(app)
    assert row.canvas_course_id == "4711"
    assert row.context_history == ["course-0", "course-00"]
    assert row.nrps_url is None and row.ags_lineitems_url is None

    # A later launch of the same course from an LMS that stopped resolving the variable
    # keeps what was learnt; a malformed Canvas id is never stored.
    endpoints.recent.clear()
    launch_as(
        app, platform, "learner", "lee", **{CUSTOM: {"canvas_course_id": "$Canvas.course.id"}}
    )
    launch_as(app, platform, "learner", "max", **{CUSTOM: {"canvas_course_id": "12; DROP"}})
    [row] = _services_rows(app)
    assert row.canvas_course_id == "4711"


@pytest.mark.parametrize("claim", ["a string", ["a", "list"], 42, None])
def test_a_custom_claim_that_is_not_an_object_is_ignored(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis, claim: Any
) -> None:
    actor = launch_as(app, platform, "learner", "lee", **{CUSTOM: claim})
    assert _active(app, actor).custom == {}
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(func.count()).select_from(CourseServices)) == 0
