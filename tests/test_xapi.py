"""xAPI 1.0.3 statements in: PUT / POST, Basic credentials per course, idempotent ids, the
shapes Open edX sends, batches that one odd statement cannot block, limits, mappings and
re-processing, and no 500 for any input. Real PostgreSQL and Redis."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import re
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, select

from lti_tool.activity import ingest
from lti_tool.activity.model import ActivityRecord, RawEvent
from lti_tool.activity.models import ActivityCredential
from tests.activity_helpers import (
    ADL,
    LMS,
    XAPI,
    Course_,
    basic,
    make_course,
    raw_events,
    records,
    statement,
)
from tests.helpers import launch_as
from tests.platform import TestPlatform

LINK1 = "https://lms.example.edu/activity/link-1"
LINK2 = "https://lms.example.edu/activity/link-2"


@pytest.fixture
def course(app: Flask, platform: TestPlatform) -> Course_:
    return make_course(app, platform)


def put(
    course: Course_, stmt: dict[str, Any], statement_id: str | None = None, **headers: str
) -> Any:
    sid = statement_id or stmt.get("id") or str(uuid.uuid4())
    return course.client.put(
        f"/xapi/statements?statementId={sid}", json=stmt, headers=course.xapi(**headers)
    )


def post(course: Course_, body: Any, detail: bool = False) -> Any:
    url = "/xapi/statements" + ("?detail=1" if detail else "")
    return course.client.post(url, json=body, headers=course.xapi())


# -- storing and normalising -------------------------------------------------------------------


def test_put_stores_the_statement_raw_and_a_normalised_submit(app: Flask, course: Course_) -> None:
    stmt = statement("alice", LINK1, "answered", success=False, scaled=0.25)
    response = put(course, stmt)
    assert response.status_code == 204, response.get_data(as_text=True)
    assert response.headers["X-Experience-API-Version"] == "1.0.3"
    assert response.get_data() == b""

    [record] = records(app)
    assert record.kind == "submit"
    assert record.correct is False
    assert record.score == 0.25
    assert record.learner_id == course.people["alice"]
    assert record.exercise_id == course.exercises["link-1"]
    assert record.course_id == course.course_id
    assert record.platform_id == course.platform_id
    assert record.occurred_at == dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC)
    assert record.source == "xapi"
    [raw] = raw_events(app)
    assert raw.id == record.raw_event_id
    assert raw.status == "accepted"
    assert raw.external_id == stmt["id"]
    assert json.loads(raw.body) == stmt


def test_post_of_one_statement_without_id_gets_a_new_uuid(app: Flask, course: Course_) -> None:
    stmt = statement("bob", LINK2, "passed", statement_id=None, timestamp=None)
    before = dt.datetime.now(dt.UTC)
    response = post(course, stmt)
    assert response.status_code == 200
    [new_id] = response.get_json()
    assert str(uuid.UUID(new_id)) == new_id
    [record] = records(app)
    assert (record.kind, record.correct) == ("submit", True)
    assert record.learner_id == course.people["bob"]
    assert record.exercise_id == course.exercises["link-2"]
    # No timestamp: it happened when it arrived.
    assert before <= record.occurred_at <= dt.datetime.now(dt.UTC)
    assert json.loads(raw_events(app)[0].body)["id"] == new_id


def test_verbs_and_results_map_to_activity_kinds(app: Flask, course: Course_) -> None:
    err = {"result": {"extensions": {"https://example.org/xapi/error-type": "NameError"}}}
    batch = [
        statement(verb="answered", success=True, timestamp="2026-03-01T10:00:00Z"),
        statement(verb="evaluated", scaled=0.5, timestamp="2026-03-01T10:01:00Z"),
        statement(verb="attempted", success=False, timestamp="2026-03-01T10:02:00Z"),
        statement(verb="failed", timestamp="2026-03-01T10:03:00Z"),
        statement(verb="passed", timestamp="2026-03-01T10:04:00Z"),
        statement(verb="completed", success=True, timestamp="2026-03-01T10:05:00Z"),
        statement(verb="asked", timestamp="2026-03-01T10:06:00Z"),
        statement(verb="http://example.org/verbs/ran", timestamp="2026-03-01T10:07:00Z"),
        statement(verb="http://example.org/verbs/ran", timestamp="2026-03-01T10:08:00Z", **err),
        statement(verb="http://example.org/verbs/stuck", timestamp="2026-03-01T10:09:00Z"),
        # Not attempts: kept raw as "ignored".
        statement(verb="attempted", timestamp="2026-03-01T10:10:00Z"),
        statement(verb="completed", timestamp="2026-03-01T10:11:00Z"),
        statement(verb="experienced", timestamp="2026-03-01T10:12:00Z"),
    ]
    batch[2]["result"]["score"] = {"raw": 3, "min": 0, "max": 4}
    response = post(course, batch, detail=True)
    assert response.status_code == 200
    body = response.get_json()
    assert body["ids"] == [s["id"] for s in batch]
    assert body["counts"] == {"accepted": 10, "ignored": 3}
    assert response.headers["X-Lifeline-Counts"] == "accepted=10, ignored=3"
    got = [(r.kind, r.correct, r.score, r.error) for r in records(app)]
    assert got == [
        ("submit", True, None, None),
        ("submit", None, 0.5, None),
        ("submit", False, 0.75, None),
        ("submit", False, None, None),
        ("submit", True, None, None),
        ("submit", True, None, None),
        ("hint", None, None, None),
        ("run", None, None, None),
        ("runtime_error", None, None, "NameError"),
        ("stuck", None, None, None),
    ]
    ignored = [r for r in raw_events(app) if r.status == "ignored"]
    assert [r.note for r in ignored] == [
        "attempted without a result (the graded statement counts)",
        "completed without success or score",
        "verb 'experienced' is not an exercise attempt Lifeline uses",
    ]


# -- invalid statements ----------------------------------------------------------------------------


def _without(path: str) -> Any:
    def change(stmt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = stmt
        for p in parents:
            target = target[p]
        del target[last]

    return change


def _set(path: str, value: Any) -> Any:
    def change(stmt: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = stmt
        for p in parents:
            target = target.setdefault(p, {})
        target[last] = value

    return change


INVALID = [
    (_without("actor"), "actor"),
    (_set("actor", "alice"), "actor"),
    (_set("actor.mbox", "mailto:alice@example.edu"), "actor"),  # two identifiers
    (_set("actor", {"mbox": "alice@example.edu"}), "actor.mbox"),
    (_set("actor", {"mbox_sha1sum": "xyz"}), "actor.mbox_sha1sum"),
    (_set("actor.account", {"homePage": LMS}), "actor.account.name"),
    (_set("actor.account", {"name": "alice", "homePage": "not an iri"}), "actor.account.homePage"),
    (_set("actor.objectType", "Person"), "actor.objectType"),
    (_without("verb"), "verb"),
    (_set("verb.id", "answered"), "verb.id"),
    (_set("verb.display", "answered"), "verb.display"),
    (_without("object.id"), "object.id"),
    (_set("object.id", "has spaces in it"), "object.id"),
    (_set("object.objectType", "Thing"), "object.objectType"),
    (_set("timestamp", "yesterday"), "timestamp"),
    (_set("timestamp", "2026-02-30T10:00:00Z"), "timestamp"),
    (_set("timestamp", "2999-01-01T00:00:00Z"), "timestamp"),
    (_set("result.score.scaled", 1.5), "result.score.scaled"),
    (_set("result.score.scaled", "1"), "result.score.scaled"),
    (_set("result.score", {"raw": 5, "min": 0, "max": 4}), "result.score.raw"),
    (_set("result.score", {"min": 4, "max": 4}), "result.score.min"),
    (_set("result.success", "yes"), "result.success"),
    (_set("result.duration", "90 seconds"), "result.duration"),
    (_set("context.registration", "nope"), "context.registration"),
    (_set("version", "2.0.0"), "version"),
    (_set("surprise", True), "surprise"),
]


@pytest.mark.parametrize(("change", "field"), INVALID)
def test_an_invalid_statement_is_a_400_naming_the_field(
    app: Flask, course: Course_, change: Any, field: str
) -> None:
    stmt = statement(success=True)
    change(stmt)
    response = put(course, stmt)
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["field"] == field
    assert body["detail"].startswith(field + ":")
    assert response.headers["X-Experience-API-Version"] == "1.0.3"
    # POSTing the same single statement is just as strict.
    again = post(course, stmt)
    assert again.status_code == 400
    assert again.get_json()["field"] == field
    assert raw_events(app) == []
    assert records(app) == []


def test_put_needs_a_statement_id_that_agrees(app: Flask, course: Course_) -> None:
    stmt = statement()
    missing = course.client.put("/xapi/statements", json=stmt, headers=course.xapi())
    assert missing.status_code == 400
    assert missing.get_json()["field"] == "statementId"
    bad = course.client.put("/xapi/statements?statementId=42", json=stmt, headers=course.xapi())
    assert bad.get_json()["field"] == "statementId"
    other = put(course, stmt, statement_id=str(uuid.uuid4()))
    assert other.status_code == 400
    assert other.get_json()["field"] == "id"
    array = course.client.put(
        f"/xapi/statements?statementId={stmt['id']}", json=[stmt], headers=course.xapi()
    )
    assert array.status_code == 400
    assert raw_events(app) == []


def test_one_odd_statement_does_not_block_the_rest_of_a_batch(app: Flask, course: Course_) -> None:
    good1, good2 = statement(success=True), statement("bob", LINK2, success=False)
    odd = statement(scaled=7)
    no_id = {"actor": "nobody"}
    batch = [good1, odd, good2, no_id, "not a statement"]
    response = post(course, batch, detail=True)
    assert response.status_code == 200
    body = response.get_json()
    assert body["ids"] == [good1["id"], odd["id"], good2["id"], None, None]
    statuses = [(r["status"], r.get("field")) for r in body["results"]]
    assert statuses == [
        ("accepted", None),
        ("invalid", "result.score.scaled"),
        ("accepted", None),
        ("invalid", "actor"),
        ("invalid", "statement"),
    ]
    assert "outside -1..1" in body["results"][1]["reason"]
    assert len(records(app)) == 2
    invalid = [r for r in raw_events(app) if r.status == "invalid"]
    assert len(invalid) == 3
    assert invalid[0].note == "result.score.scaled: 7 is outside -1..1"
    assert json.loads(invalid[0].body) == odd  # kept exactly as sent

    # The sender retries the whole batch: nothing is stored twice, the answer is the same.
    again = post(course, batch, detail=True)
    assert again.status_code == 200
    assert [(r["status"], r.get("field")) for r in again.get_json()["results"]] == [
        ("duplicate", None),
        ("invalid", "result.score.scaled"),
        ("duplicate", None),
        ("invalid", "actor"),
        ("invalid", "statement"),
    ]
    assert len(records(app)) == 2
    assert len(raw_events(app)) == 5


def test_an_entirely_invalid_body_is_a_400(course: Course_) -> None:
    for data in (b"", b"not json", b"42", b'"a string"', b"null", b"true"):
        response = course.client.post(
            "/xapi/statements", data=data, headers=course.xapi(), content_type="application/json"
        )
        assert response.status_code == 400, data
        assert response.get_json()["field"] == "body"


def test_the_version_header_is_required(app: Flask, course: Course_) -> None:
    stmt = statement()
    missing = course.client.post("/xapi/statements", json=stmt, headers=course.auth())
    assert missing.status_code == 400
    assert missing.get_json()["field"] == "X-Experience-API-Version"
    assert "X-Experience-API-Version" in missing.get_json()["detail"]
    for version in ("0.95", "2.0.0", "1.1", "one"):
        wrong = course.client.post(
            "/xapi/statements",
            json=stmt,
            headers={**course.auth(), "X-Experience-API-Version": version},
        )
        assert wrong.status_code == 400, version
        assert wrong.get_json()["field"] == "X-Experience-API-Version"
    assert records(app) == []
    for version in ("1.0", "1.0.0", "1.0.1", "1.0.3"):
        ok = course.client.put(
            f"/xapi/statements?statementId={uuid.uuid4()}",
            json=statement(statement_id=None),
            headers={**course.auth(), "X-Experience-API-Version": version},
        )
        assert ok.status_code == 204, version
    assert len(records(app)) == 4


# -- repeats -------------------------------------------------------------------------------------


def test_a_repeat_is_idempotent_and_a_different_statement_under_its_id_is_409(
    app: Flask, course: Course_
) -> None:
    stmt = statement(success=False)
    assert put(course, stmt).status_code == 204
    assert put(course, stmt).status_code == 204
    assert post(course, stmt).get_json() == [stmt["id"]]
    # Re-sent later with another timestamp or version: still the same statement (xAPI's
    # statement comparison leaves those out).
    later = {**stmt, "timestamp": "2026-03-02T08:00:00Z", "version": "1.0.0"}
    assert put(course, later).status_code == 204
    assert len(records(app)) == 1
    assert len(raw_events(app)) == 1

    changed = copy.deepcopy(stmt)
    changed["result"]["success"] = True
    conflict = put(course, changed)
    assert conflict.status_code == 409
    assert conflict.get_json()["field"] == "id"
    assert post(course, changed).status_code == 409
    [record] = records(app)
    assert record.correct is False  # the first statement stands
    assert len(raw_events(app)) == 1


def test_repeats_and_conflicts_inside_batches(app: Flask, course: Course_) -> None:
    first = statement(success=False)
    assert post(course, [first]).status_code == 200
    changed = copy.deepcopy(first)
    changed["result"]["success"] = True
    fresh = statement("bob", success=True)
    twin = copy.deepcopy(fresh)
    batch = [changed, fresh, twin]
    response = post(course, batch, detail=True)
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [r["status"] for r in results] == ["conflict", "accepted", "duplicate"]
    assert results[0]["field"] == "id"
    assert [r.correct for r in records(app)] == [False, True]
    kept = [r for r in raw_events(app) if r.status == "conflict"]
    assert len(kept) == 1  # kept aside, never replacing the first
    assert json.loads(kept[0].body)["result"]["success"] is True
    assert first["id"] in (kept[0].note or "")

    # The same conflicting statement again is still a conflict, and not kept twice.
    again = post(course, [changed], detail=True)
    assert again.get_json()["results"][0]["status"] == "conflict"
    assert len([r for r in raw_events(app) if r.status == "conflict"]) == 1


def test_out_of_order_statements_are_stored_by_when_they_happened(
    app: Flask, course: Course_
) -> None:
    times = ["2026-03-01T10:03:00Z", "2026-03-01T10:01:00+00:00", "2026-03-01T12:02:00+02:00"]
    for i, stamp in enumerate(times):
        assert put(course, statement(success=i == 0, timestamp=stamp)).status_code == 204
    got = records(app)
    assert [r.occurred_at.strftime("%H:%M") for r in got] == ["10:01", "10:02", "10:03"]
    assert [r.correct for r in got] == [False, False, True]
    # They arrived in another order.
    assert got[2].received_at < got[0].received_at < got[1].received_at


# -- actors and activities ----------------------------------------------------------------------


def test_actors_map_by_sub_email_or_uploaded_mapping(
    app: Flask, platform: TestPlatform, course: Course_
) -> None:
    by_email = statement(success=True)
    by_email["actor"] = {"mbox": "mailto:Bob@Example.EDU", "name": "Bob"}
    by_sha = statement(success=True)
    by_sha["actor"] = {"mbox_sha1sum": "a" * 40}
    response = post(course, [by_email, by_sha], detail=True)
    assert [r["status"] for r in response.get_json()["results"]] == ["accepted", "unmapped"]
    assert records(app)[0].learner_id == course.people["bob"]

    # An email two people share identifies nobody.
    launch_as(app, platform, "learner", "carol", email="bob@example.edu")
    shared = statement(success=True)
    shared["actor"] = {"mbox": "mailto:bob@example.edu"}
    assert post(course, [shared], detail=True).get_json()["results"][0]["status"] == "unmapped"

    # The instructor's mapping wins over the sub.
    ida = course.instructor
    upload = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/actors",
        data={"csv_text": f"actor,sub\n{'A' * 40},alice\nalice,bob\n", "csrf_token": ida.csrf()},
    )
    assert upload.status_code == 200
    assert "2 mappings saved" in upload.get_data(as_text=True)
    mapped = statement("alice", success=False, timestamp="2026-03-02T00:00:00Z")
    assert post(course, [mapped]).status_code == 200
    assert records(app)[-1].learner_id == course.people["bob"]
    # Re-processing applies the sha1 mapping; the shared email stays unmapped.
    done = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/reprocess", data={"csrf_token": ida.csrf()}
    )
    assert "2 unmapped events: 1 now recorded" in done.get_data(as_text=True)
    assert [r.learner_id for r in records(app)] == [
        course.people[p] for p in ("bob", "alice", "bob")
    ]


def test_activity_ids_map_by_resource_link_inside_the_iri(app: Flask, course: Course_) -> None:
    cases = [
        ("urn:exercise:link-2", "link-2"),
        ("https://lms.example.edu/mod/lti/view.php?id=link-1", "link-1"),
        ("https://lms.example.edu/x/link-2/hint/3", "link-2"),
        ("https://lms.example.edu/x/link-10", None),  # not link-1
        ("https://lms.example.edu/x/blink-1", None),
    ]
    batch = [statement(object_id=oid, success=True) for oid, _ in cases]
    results = post(course, batch, detail=True).get_json()["results"]
    assert [r["status"] for r in results] == [
        "accepted" if link else "unmapped" for _, link in cases
    ]
    by_exercise = {v: k for k, v in course.exercises.items()}
    assert [by_exercise[r.exercise_id] for r in records(app)] == ["link-2", "link-1", "link-2"]


def test_unknown_actors_and_activities_are_kept_and_reprocessed_after_a_mapping_upload(
    app: Flask, course: Course_
) -> None:
    block = "https://studio.example.edu/xblock/block-v1:Org+C1+2026+type@problem+block@abc123"
    unknown = [
        statement("anon-77", block, "evaluated", success=False, timestamp="2026-03-01T09:00:00Z"),
        statement("anon-77", block + "/hint/1", "asked", timestamp="2026-03-01T09:01:00Z"),
        statement("alice", block, "evaluated", success=True, timestamp="2026-03-01T09:02:00Z"),
        statement("nobody", LINK1, "answered", success=True, timestamp="2026-03-01T09:03:00Z"),
    ]
    results = post(course, unknown, detail=True).get_json()["results"]
    assert [r["status"] for r in results] == ["unmapped"] * 4
    assert "unknown actor account.name 'anon-77'" in results[0]["reason"]
    assert "unknown activity object.id" in results[0]["reason"]
    assert "unknown actor" not in results[2]["reason"]
    assert records(app) == []

    ida = course.instructor
    page = ida.client.get(f"/l/{ida.launch_id}/course/activity")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('data-testid="problem-row"') == 4
    assert "anon-77" in html

    for url, text in (
        ("actors", "anon-77,alice\n"),
        ("exercises", f"activity_id,resource_link_id\n{block},link-2\n"),
    ):
        upload = ida.client.post(
            f"/l/{ida.launch_id}/course/activity/{url}",
            data={"csv_text": text, "csrf_token": ida.csrf()},
        )
        assert upload.status_code == 200, upload.get_data(as_text=True)
    assert records(app) == []  # mappings apply once re-processed

    done = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/reprocess", data={"csrf_token": ida.csrf()}
    )
    assert done.status_code == 200
    assert "Re-processed 4 unmapped events" in done.get_data(as_text=True)
    assert "3 now recorded" in done.get_data(as_text=True)
    got = records(app)
    assert [(r.kind, r.correct) for r in got] == [
        ("submit", False),
        ("hint", None),
        ("submit", True),
    ]
    assert {r.exercise_id for r in got} == {course.exercises["link-2"]}
    assert {r.learner_id for r in got} == {course.people["alice"]}
    statuses = [r.status for r in raw_events(app)]
    assert statuses == ["accepted", "accepted", "accepted", "unmapped"]

    # Later statements map at once; a second re-process has nothing new to do.
    assert (
        put(course, statement("anon-77", block + "_2_1", "answered", success=True)).status_code
        == 204
    )
    assert len(records(app)) == 4
    again = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/reprocess", data={"csrf_token": ida.csrf()}
    )
    assert "Re-processed 1 unmapped event:" in again.get_data(as_text=True)
    assert len(records(app)) == 4


def test_mappings_can_be_removed_only_in_their_own_course(
    app: Flask, platform: TestPlatform, course: Course_
) -> None:
    ida = course.instructor
    for url, text in (("actors", "Someone@Example.edu,alice\n"), ("exercises", "urn:x:1,link-1\n")):
        ida.client.post(
            f"/l/{ida.launch_id}/course/activity/{url}",
            data={"csv_text": text, "csrf_token": ida.csrf()},
        )
    page = ida.client.get(f"/l/{ida.launch_id}/course/activity").get_data(as_text=True)
    assert "someone@example.edu" in page  # emails are kept in lower case
    ids = {
        kind: int(found)
        for kind, found in re.findall(r"/mappings/(actor|exercise)/(\d+)/delete", page)
    }
    assert set(ids) == {"actor", "exercise"}
    other = make_course(app, platform, "course-2", learners=(), links=("link-9",))
    ivo = other.instructor
    for kind, mapping_id in ids.items():
        denied = ivo.client.post(
            f"/l/{ivo.launch_id}/course/activity/mappings/{kind}/{mapping_id}/delete",
            data={"csrf_token": ivo.csrf()},
        )
        assert denied.status_code == 404
    odd = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/mappings/nope/{ids['actor']}/delete",
        data={"csrf_token": ida.csrf()},
    )
    assert odd.status_code == 404
    huge = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/mappings/actor/99999999999/delete",
        data={"csrf_token": ida.csrf()},
    )
    assert huge.status_code == 404
    # The mapped email works until the mapping is removed.
    stmt = statement(success=True)
    stmt["actor"] = {"mbox": "mailto:SOMEONE@example.edu"}
    assert post(course, [stmt], detail=True).get_json()["results"][0]["status"] == "accepted"
    for kind, mapping_id in ids.items():
        done = ida.client.post(
            f"/l/{ida.launch_id}/course/activity/mappings/{kind}/{mapping_id}/delete",
            data={"csrf_token": ida.csrf()},
        )
        assert done.status_code == 303
    page = ida.client.get(f"/l/{ida.launch_id}/course/activity").get_data(as_text=True)
    assert 'data-testid="actor-mapping"' not in page
    again = statement(success=True)
    again["actor"] = {"mbox": "mailto:someone@example.edu"}
    assert post(course, [again], detail=True).get_json()["results"][0]["status"] == "unmapped"


def test_bad_mapping_uploads_say_which_line(course: Course_) -> None:
    ida = course.instructor
    response = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/actors",
        data={"csv_text": "just-one-value\n\n" + "x" * 600 + ",alice\n", "csrf_token": ida.csrf()},
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "line 1: expected two values, actor,sub" in html
    assert "line 3: actor at most 500" in html


# -- Open edX ------------------------------------------------------------------------------------

EDX = "http://localhost:18000"
BLOCK = "block-v1:edX+DemoX+Demo_Course+type@problem+block@a0effb954cca4759994f1ac9e9434bf4"
ANON = "32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb"


def _edx(verb: str, object_id: str, object_type: str = "Activity", **extra: Any) -> dict[str, Any]:
    """Shaped like event-routing-backends' xAPI output (its test fixtures)."""
    stmt: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "actor": {"objectType": "Agent", "account": {"homePage": EDX, "name": ANON}},
        "verb": {"id": verb, "display": {"en": verb.rsplit("/", 1)[-1]}},
        "object": {
            "objectType": object_type,
            "id": object_id,
            "definition": {
                "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
                "name": {"en-US": "Multiple Choice Questions"},
                "interactionType": "other",
            },
        },
        "context": {
            "contextActivities": {
                "parent": [
                    {
                        "id": f"{EDX}/course/course-v1:edX+DemoX+Demo_Course",
                        "objectType": "Activity",
                        "definition": {
                            "name": {"en-US": "Demonstration Course"},
                            "type": "http://adlnet.gov/expapi/activities/course",
                        },
                    }
                ]
            },
            "extensions": {
                "https://w3id.org/xapi/openedx/extension/transformer-version": (
                    "event-routing-backends@1.1.1"
                ),
                "https://w3id.org/xapi/openedx/extensions/session-id": "97662bef7c463c",
            },
        },
        "timestamp": "2026-03-01T14:39:26.906232+00:00",
        "version": "1.0.3",
    }
    stmt.update(extra)
    return stmt


def test_open_edx_statements_including_group_activities(app: Flask, course: Course_) -> None:
    evaluated = "https://w3id.org/xapi/acrossx/verbs/evaluated"
    ida = course.instructor
    for url, text in (
        ("actors", f"{ANON},bob\n"),
        ("exercises", f"{EDX}/xblock/{BLOCK},link-1\n{BLOCK},link-2\n"),
    ):
        assert (
            ida.client.post(
                f"/l/{ida.launch_id}/course/activity/{url}",
                data={"csv_text": text, "csrf_token": ida.csrf()},
            ).status_code
            == 200
        )
    group = _edx(
        evaluated,
        f"{EDX}/xblock/{BLOCK}",
        "GroupActivity",
        result={"score": {"min": 0, "max": 3, "raw": 2, "scaled": 0.6667}, "success": False},
    )
    questions = []
    for n, answer in ((2, "yellow"), (3, "a bookshelf")):
        q = _edx(
            evaluated, f"{EDX}/xblock/{BLOCK}_{n}_1", result={"response": answer, "success": False}
        )
        q["context"]["statement"] = {"id": group["id"], "objectType": "StatementRef"}
        q["context"]["contextActivities"]["parent"] = [copy.deepcopy(group["object"])]
        questions.append(q)
    browser = _edx("http://adlnet.gov/expapi/verbs/attempted", f"{EDX}/xblock/{BLOCK}")
    hint = _edx(ADL + "asked", f"{EDX}/xblock/{BLOCK}/hint/1")
    graded = _edx(
        "http://adlnet.gov/expapi/verbs/attempted",
        BLOCK,  # edx.grades.problem.submitted: the usage key itself, not a URL
        result={"score": {"max": 1, "min": 0, "raw": 1, "scaled": 1}, "success": True},
    )
    # TinCanPython: POST for a batch, PUT for a single statement.
    batch = post(course, [browser, group, *questions, hint], detail=True)
    assert batch.status_code == 200
    assert [r["status"] for r in batch.get_json()["results"]] == [
        "ignored",
        "accepted",
        "ignored",
        "ignored",
        "accepted",
    ]
    single = course.client.put(
        f"/xapi/statements?statementId={graded['id']}", json=graded, headers=course.xapi()
    )
    assert single.status_code == 204
    got = [(r.kind, r.correct, r.score) for r in records(app)]
    assert got == [("submit", False, 0.6667), ("hint", None, None), ("submit", True, 1.0)]
    exercises = [r.exercise_id for r in records(app)]
    assert exercises == [course.exercises["link-1"]] * 2 + [course.exercises["link-2"]]
    assert {r.learner_id for r in records(app)} == {course.people["bob"]}
    notes = {r.note for r in raw_events(app) if r.status == "ignored"}
    assert "one question of a multi-question problem (its GroupActivity counts)" in notes


# -- credentials, scoping, limits -----------------------------------------------------------------


def test_wrong_missing_or_revoked_credentials_are_401(app: Flask, course: Course_) -> None:
    stmt = statement(success=True)
    url = f"/xapi/statements?statementId={stmt['id']}"
    attempts = [
        XAPI,
        {**XAPI, **basic(course.key, "wrong-secret")},
        {**XAPI, **basic("ll_unknownkey123", course.secret)},
        {**XAPI, **basic(course.key + "\x00", course.secret)},
        {**XAPI, "Authorization": "Basic !!!not-base64"},
        {**XAPI, "Authorization": "Bearer " + course.secret},
    ]
    for headers in attempts:
        response = course.client.put(url, json=stmt, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Basic realm="Lifeline activity"'
        assert response.get_json()["error"] == "unauthorized"

    ida = course.instructor
    with app.extensions["lifeline"].db.transaction() as session:
        cred = session.scalars(
            select(ActivityCredential).where(ActivityCredential.key == course.key)
        ).one()
        assert course.secret not in (cred.secret_hash, cred.key)  # only a hash is kept
        cred_id = cred.id
    assert put(course, stmt).status_code == 204
    revoked = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/credentials/{cred_id}/revoke",
        data={"csrf_token": ida.csrf()},
    )
    assert revoked.status_code == 303
    assert put(course, statement()).status_code == 401
    assert len(records(app)) == 1


def test_instructor_creates_a_credential_and_sees_its_secret_once(
    app: Flask, course: Course_
) -> None:
    ida = course.instructor
    created = ida.client.post(
        f"/l/{ida.launch_id}/course/activity/credentials",
        data={"label": "Open edX prod", "csrf_token": ida.csrf()},
    )
    assert created.status_code == 200
    html = created.get_data(as_text=True)
    key = html.split('data-testid="new-key">', 1)[1].split("<", 1)[0]
    secret = html.split('data-testid="new-secret">', 1)[1].split("<", 1)[0]
    assert key.startswith("ll_") and len(secret) >= 40
    assert f"{app.extensions['lifeline'].settings.base_url}/xapi/" in html
    listing = ida.client.get(f"/l/{ida.launch_id}/course/activity").get_data(as_text=True)
    assert key in listing and secret not in listing
    response = course.client.post(
        "/xapi/statements", json=[statement(success=True)], headers={**XAPI, **basic(key, secret)}
    )
    assert response.status_code == 200
    assert len(records(app)) == 1

    # Learners and other browsers cannot reach the page; forms need the CSRF token.
    alice = course.learners["alice"]
    assert alice.client.get(f"/l/{alice.launch_id}/course/activity").status_code == 403
    assert course.client.get(f"/l/{ida.launch_id}/course/activity").status_code == 403
    no_csrf = ida.client.post(f"/l/{ida.launch_id}/course/activity/credentials", data={})
    assert no_csrf.status_code == 400


def test_another_course_credentials_cannot_write_here(
    app: Flask, platform: TestPlatform, course: Course_
) -> None:
    other = make_course(app, platform, "course-2", learners=("dora",), links=("link-9",))
    # Course 2's instructor maps course 1's activity ids: still no way into course 1.
    ivo = other.instructor
    ivo.client.post(
        f"/l/{ivo.launch_id}/course/activity/exercises",
        data={"csv_text": f"{LINK1},link-1\n", "csrf_token": ivo.csrf()},
    )
    stmt = statement("alice", LINK1, success=True)
    response = other.client.post("/xapi/statements?detail=1", json=[stmt], headers=other.xapi())
    assert response.status_code == 200
    assert response.get_json()["results"][0]["status"] == "unmapped"
    assert records(app, course.course_id) == []
    assert raw_events(app, course.course_id) == []
    [raw] = raw_events(app, other.course_id)
    assert raw.status == "unmapped"

    # A statement id course 2 used is free in course 1 (ids are per course).
    assert put(course, stmt).status_code == 204
    assert len(records(app, course.course_id)) == 1
    # And course 2's instructor cannot revoke course 1's credential.
    with app.extensions["lifeline"].db.transaction() as session:
        cred_id = session.scalars(
            select(ActivityCredential.id).where(ActivityCredential.key == course.key)
        ).one()
    denied = ivo.client.post(
        f"/l/{ivo.launch_id}/course/activity/credentials/{cred_id}/revoke",
        data={"csrf_token": ivo.csrf()},
    )
    assert denied.status_code == 404
    assert put(course, statement()).status_code == 204


def test_oversized_batches_and_bodies_are_413(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_many = [statement(success=True) for _ in range(501)]
    response = post(course, too_many)
    assert response.status_code == 413
    assert "at most 500" in response.get_json()["detail"]
    huge = statement(success=True, result={"response": "x" * (1024 * 1024)})
    response = post(course, [huge])
    assert response.status_code == 413
    assert "1024 KiB" in response.get_json()["detail"]
    assert raw_events(app) == []
    # Chunked (no Content-Length) bodies are cut off too.
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(max_body=2000))
    streamed = course.client.post(
        "/xapi/statements",
        input_stream=io.BytesIO(json.dumps([statement()] * 20).encode()),
        headers={**course.xapi(), "Transfer-Encoding": "chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert streamed.status_code == 413
    assert streamed.get_json()["error"] == "too_large"
    assert raw_events(app) == []


def test_rate_limit_per_credential_is_429_with_retry_after(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(per_credential_per_minute=3))
    for _ in range(3):
        assert post(course, [statement(success=True)]).status_code == 200
    limited = post(course, [statement(success=True)])
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.get_json()["error"] == "rate_limited"
    assert len(records(app)) == 3
    # Another credential has its own budget.
    key, secret = course.new_credential()
    other = course.client.post(
        "/xapi/statements", json=[statement()], headers={**XAPI, **basic(key, secret)}
    )
    assert other.status_code == 200


def test_a_batch_under_the_limit_is_accepted_beyond_the_apps_form_limit(
    app: Flask, course: Course_
) -> None:
    # The app caps ordinary requests at 256 KiB; the ingestion endpoints allow 1 MiB.
    batch = [statement(success=True, result={"response": "y" * 3000}) for _ in range(200)]
    body = json.dumps(batch).encode()
    assert 512 * 1024 < len(body) < 1024 * 1024
    response = course.client.post(
        "/xapi/statements", data=body, headers=course.xapi(), content_type="application/json"
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:200]
    assert len(raw_events(app)) == 200


def test_after_store_gets_each_batch_in_the_request_transaction(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bool, list[tuple[int, str, dt.datetime]]]] = []

    def spy(session: Any, stored: Any) -> None:
        # Called before the commit: the rows are flushed in this session, not yet visible
        # to anyone else.
        with app.extensions["lifeline"].db.transaction() as other:
            visible = other.scalar(select(RawEvent.id).limit(1)) is not None
        calls.append((visible, [(r.id, r.kind, r.occurred_at) for r in stored]))

    monkeypatch.setattr(ingest, "after_store", spy)
    batch = [
        statement(success=True, timestamp="2026-03-01T10:05:00Z"),
        statement(verb="experienced"),
        statement(verb="asked", timestamp="2026-03-01T10:01:00Z"),
        statement("nobody", success=True),
    ]
    assert post(course, batch).status_code == 200
    assert post(course, batch).status_code == 200  # all repeats: no records, no call
    [(visible, stored)] = calls
    assert visible is False
    assert [kind for _, kind, _ in stored] == ["hint", "submit"]  # in occurrence order
    assert [rid for rid, _, _ in stored] == [r.id for r in records(app)]


def test_the_embedded_sqlite_database_ingests_too(tmp_path: Any) -> None:
    """``lifeline demo`` runs on SQLite: the same code path, another dialect."""
    from lti_tool import create_app
    from lti_tool.activity import credentials, pipeline
    from lti_tool.config import Settings
    from lti_tool.courses import Course, LaunchFacts, record_launch
    from lti_tool.db import Database
    from lti_tool.detection.models import DetectionExerciseState, DetectionPeerStats
    from lti_tool.lti.registry import add_platform
    from lti_tool.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    database = Database(url)
    upgrade(database.engine)
    settings = Settings(
        database_url=url,
        redis_url="memory://",
        secret_key="sqlite-secret-" + "s" * 32,
        base_url="http://127.0.0.1:5000",
        jobs_inline=True,
        instance_path=str(tmp_path),
    )
    app = create_app(settings)
    try:
        with database.transaction() as session:
            lms = add_platform(
                session,
                name="demo",
                issuer="https://demo.example",
                client_id="c",
                auth_login_url="https://demo.example/auth",
                auth_token_url="https://demo.example/token",
                keyset_url="https://demo.example/jwks",
                deployment_ids=["d"],
            )
            facts = LaunchFacts(lms.id, "d", "alice", "Alice", "", "c1", "C1", "C1", "ex1", "Ex")
            launched, _ = record_launch(session, facts)
            course = session.get(Course, launched.course_id)
            assert course is not None
            created = credentials.create(session, course, "demo")
        headers = {**XAPI, **basic(created.credential.key, created.secret)}
        client = app.test_client()
        first = statement("alice", "https://demo.example/ex1", success=False)
        changed = {**first, "result": {"success": True}}
        hint = statement(
            "alice", "https://demo.example/ex1", "asked", timestamp="2026-03-01T10:01:00Z"
        )
        batch = [first, hint, {"x": 1}]
        # The demo's pipeline: accepted into the in-process Redis stand-in, stored by a
        # consumer (``lifeline demo`` runs one on a thread; here it is drained by hand).
        response = client.post("/xapi/statements?detail=1", json=batch, headers=headers)
        assert response.get_json()["counts"] == {"queued": 2, "invalid": 1}
        again = client.post("/xapi/statements?detail=1", json=[*batch, changed], headers=headers)
        assert again.get_json()["counts"] == {"duplicate": 2, "invalid": 1, "conflict": 1}
        services = app.extensions["lifeline"]
        assert pipeline.Consumer(services.db, services.redis).drain() == 2
        with database.transaction() as session:
            statuses = sorted(session.scalars(select(RawEvent.status)).all())
            assert statuses == ["accepted", "accepted", "conflict", "invalid"]
            kinds = session.scalars(
                select(ActivityRecord.kind).order_by(ActivityRecord.occurred_at)
            ).all()
            assert kinds == ["submit", "hint"]
            # ... and evaluated: detection ran on SQLite too (a failure there is only logged).
            [state] = session.scalars(select(DetectionExerciseState)).all()
            assert state.state["failures"] == 1 and state.state["hints"] == 1
            peers = {r.exercise_key: r.stats for r in session.scalars(select(DetectionPeerStats))}
            assert peers[""]["submits"] == 1 and peers[""]["hinted"] == 1
    finally:
        app.extensions["lifeline"].db.dispose()
        database.dispose()


def test_about_and_unsupported_request_forms(course: Course_) -> None:
    about = course.client.get("/xapi/about")
    assert about.status_code == 200
    assert "1.0.3" in about.get_json()["version"]
    alternate = course.client.post(
        "/xapi/statements?method=PUT", json=statement(), headers=course.xapi()
    )
    assert alternate.status_code == 400
    assert alternate.get_json()["field"] == "method"
    multipart = course.client.post(
        "/xapi/statements",
        data=b"--x\r\n\r\n--x--",
        headers={**course.xapi(), "Content-Type": "multipart/mixed; boundary=x"},
    )
    assert multipart.status_code == 415


def test_a_500_statement_batch_is_a_handful_of_queries(
    app: Flask, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ingestion's own queries: the detection engine behind ``after_store`` counts its own.
    monkeypatch.setattr(ingest, "after_store", lambda session, stored: None)
    engine = app.extensions["lifeline"].db.engine
    batch = [
        statement(
            ("alice", "bob")[i % 2],
            (LINK1, LINK2, f"https://lms.example.edu/unknown/{i % 7}")[i % 3],
            ("answered", "attempted")[i % 2],
            success=i % 4 == 0,
            timestamp=f"2026-03-01T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
        )
        for i in range(500)
    ]
    queries: list[str] = []

    def count(*args: Any) -> None:
        queries.append(args[2])

    event.listen(engine, "before_cursor_execute", count)
    try:
        started = time.perf_counter()
        response = post(course, batch)
        elapsed = time.perf_counter() - started
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert response.status_code == 200
    assert response.headers["X-Lifeline-Counts"] == "accepted=334, unmapped=166"
    # Credential, repeats, actors (mappings, subs), activities (mappings, exercises), raw,
    # records, commit-time update of last use: never one query per statement.
    assert len(queries) <= 15, queries
    assert elapsed < 10
    with app.extensions["lifeline"].db.transaction() as session:
        assert session.scalar(select(RawEvent.id).order_by(RawEvent.id.desc())) == 500


# -- hostile input ------------------------------------------------------------------------------


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


HOSTILE: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("spaces", b"   "),
    ("not json", b"{not json"),
    ("truncated", b'[{"actor": '),
    ("deep array", _deep(100_000)),
    ("deep object", b'{"a":' * 50_000 + b"1" + b"}" * 50_000),
    ("huge int", b'[{"result": {"score": {"scaled": ' + b"9" * 5000 + b"}}}]"),
    ("nan", b'[{"result": {"score": {"scaled": NaN}}}]'),
    ("infinity", b'{"result": {"score": {"raw": Infinity, "min": 0}}}'),
    ("big float", b'{"result": {"score": {"raw": 1e400}}}'),
    ("invalid utf-8", b'[{"actor": "\xff\xfe"}]'),
    ("utf-16", '[{"actor": {"mbox": "mailto:a@b.c"}}]'.encode("utf-16")),
    ("nul in name", b'[{"actor": {"account": {"homePage": "http://x", "name": "a\\u0000b"}}}]'),
    ("surrogate", b'[{"actor": {"account": {"homePage": "http://x", "name": "\\ud800"}}}]'),
    ("surrogate key", b'[{"\\ud800": 1, "actor": {}}]'),
    ("nul key", b'[{"\\u0000": 1}]'),
    ("nul verb", b'[{"verb": {"id": "http://x/\\u0000"}}]'),
    ("lists everywhere", b'[{"actor": [], "verb": [], "object": [], "result": [], "context": []}]'),
    ("numbers everywhere", b'[{"id": 1, "actor": 2, "verb": 3, "object": 4, "timestamp": 5}]'),
    ("null id", b'[{"id": null}]'),
    ("dict id", b'[{"id": {"a": 1}}]'),
    ("overflow timestamp", b'[{"timestamp": "0001-01-01T00:00:00+14:00"}]'),
    ("max timestamp", b'[{"timestamp": "9999-12-31T23:59:59-14:00"}]'),
    ("long timestamp", b'[{"timestamp": "2026-01-01T00:00:00' + b"0" * 1000 + b'"}]'),
    ("long iri", b'[{"object": {"id": "http://x/' + b"a" * 100_000 + b'"}}]'),
    (
        "group of groups",
        b'[{"actor": {"objectType": "Group", "member": [{"objectType": "Group", "member": []}]}}]',
    ),
    ("context list", b'[{"context": {"contextActivities": {"parent": [1, "x", null]}}}]'),
    ("extensions list", b'[{"result": {"extensions": [1]}}]'),
    ("error ext object", b'[{"result": {"extensions": {"http://x/error": {"type": ["x"]}}}}]'),
    ("batch of junk", b'[1, null, true, [], {}, "x", 2.5]'),
]


def _hostile_valid_base() -> dict[str, Any]:
    return statement(success=True)


@pytest.mark.parametrize(("name", "body"), HOSTILE, ids=[n for n, _ in HOSTILE])
def test_hostile_input_is_never_a_500(course: Course_, name: str, body: bytes) -> None:
    for method, url in (
        ("POST", "/xapi/statements"),
        ("POST", "/xapi/statements?detail=1"),
        ("PUT", f"/xapi/statements?statementId={uuid.uuid4()}"),
    ):
        response = course.client.open(
            url, method=method, data=body, headers=course.xapi(), content_type="application/json"
        )
        assert response.status_code < 500, (method, response.get_data(as_text=True)[:300])
        assert response.mimetype == "application/json"


def test_hostile_values_inside_a_valid_statement_are_never_a_500(course: Course_) -> None:
    weird: list[Any] = [
        None,
        0,
        -1,
        2**70,
        1e308,
        True,
        "",
        "\x00",
        "\ud800",
        "x" * 5000,
        [],
        {},
        [None],
        {"": ""},
    ]
    paths = [
        "id",
        "actor.account.name",
        "actor.account.homePage",
        "actor.mbox",
        "actor.name",
        "verb.id",
        "verb.display",
        "object.id",
        "object.objectType",
        "object.definition",
        "result.success",
        "result.score.scaled",
        "result.score.raw",
        "result.response",
        "result.extensions",
        "context.registration",
        "context.contextActivities",
        "timestamp",
        "version",
        "attachments",
    ]
    batch = []
    for path in paths:
        for value in weird:
            stmt = _hostile_valid_base()
            _set(path, value)(stmt)
            batch.append(stmt)
    for start in range(0, len(batch), 200):
        response = course.client.post(
            "/xapi/statements?detail=1", json=batch[start : start + 200], headers=course.xapi()
        )
        assert response.status_code == 200, response.get_data(as_text=True)[:300]
    for stmt in batch[::7]:
        response = course.client.put(
            f"/xapi/statements?statementId={uuid.uuid4()}",
            json={k: v for k, v in stmt.items() if k != "id"},
            headers=course.xapi(),
        )
        assert response.status_code < 500, response.get_data(as_text=True)[:300]


def test_api_requests_neither_read_nor_set_the_session_cookie(app: Flask, course: Course_) -> None:
    client = app.test_client()
    with client.session_transaction() as session:  # a browser's cookie, signed by us
        session["launches"] = ["some-launch"]
        session.permanent = True  # refreshed on every page response
    assert client.get_cookie("lifeline_session") is not None
    ok = client.post("/xapi/statements", json=statement(success=True), headers=course.xapi())
    refused = client.post(
        "/xapi/statements", json=statement(), headers={**XAPI, **basic("nope", "nope")}
    )
    rows = client.post("/api/activity/progsnap2", json=[], headers=course.auth())
    assert (ok.status_code, refused.status_code, rows.status_code) == (200, 401, 200)
    for response in (ok, refused, rows):
        assert "Set-Cookie" not in response.headers
        assert "Cookie" not in response.headers.get("Vary", "")
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert "frame-ancestors *" in response.headers["Content-Security-Policy"]
        assert response.headers["Cache-Control"] == "no-store"
    assert refused.get_json()["detail"] == "Unknown or revoked credentials."
    page = client.get("/")  # pages still refresh the permanent session cookie
    assert "lifeline_session=" in page.headers.get("Set-Cookie", "")
