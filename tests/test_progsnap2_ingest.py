"""ProgSnap2 rows in: the JSON endpoint (Basic credentials of the course) and the
``lifeline activity import-progsnap2`` command, on real PostgreSQL and Redis."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from lti_tool.activity import ingest
from lti_tool.cli import main
from tests.activity_helpers import Course_, basic, make_course, raw_events, records
from tests.conftest import DATABASE_URL, REDIS_URL
from tests.platform import TestPlatform

URL = "/api/activity/progsnap2"


@pytest.fixture
def course(app: Flask, platform: TestPlatform) -> Course_:
    return make_course(app, platform)


def row(event_id: str, event_type: str = "Submit", **values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "EventID": event_id,
        "EventType": event_type,
        "SubjectID": "alice",
        "ProblemID": "link-1",
        "ServerTimestamp": "2026-03-01T10:00:00",
        "ServerTimezone": "0",
        "Order": 1,
    }
    base.update(values)
    return {k: v for k, v in base.items() if v is not None}


def send(course: Course_, body: Any) -> Any:
    return course.client.post(URL, json=body, headers=course.auth())


def test_rows_become_normalised_events(app: Flask, course: Course_) -> None:
    rows = [
        row("e1", "Run.Program", Order=1, ServerTimestamp="2026-03-01T10:00:00"),
        row("e2", "Compile", Order=2, ServerTimestamp="2026-03-01T10:00:01"),
        row(
            "e3",
            "Compile.Error",
            Order=3,
            ServerTimestamp="2026-03-01T10:00:01",
            CompileMessageType="SyntaxError",
            CompileMessageData="line 3: ';' expected",
        ),
        row(
            "e4",
            "Submit",
            Order=4,
            ServerTimestamp="2026-03-01T11:01:00",
            ServerTimezone="+0100",
            Correct="false",
            Score=0.5,
        ),
        row("e5", "Run.Program", Order=5, ServerTimestamp="2026-03-01T10:02:00Z", Score="1.0"),
        row("e6", "X-HintRequest", Order=6, ServerTimestamp="2026-03-01T05:03:00-05:00"),
        row(
            "e7",
            "X-Stuck",
            Order=7,
            ServerTimestamp="2026-03-01T10:04:00",
            SubjectID="bob",
            ProblemID="link-2",
        ),
        row("e8", "Session.Start", Order=8, ProblemID=None),
        row(
            "e9",
            "Run.Error",
            Order=9,
            ServerTimestamp="2026-03-01T10:05:00",
            CompileMessageType="ZeroDivisionError",
        ),
        row(
            "e10",
            "Submit",
            Order=10,
            ServerTimestamp="2026-03-01T10:06:00",
            Correct=True,
            **{"X-CodeLength": 120},
        ),
    ]
    response = send(course, rows)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["counts"] == {"accepted": 8, "ignored": 2}
    assert [r["id"] for r in body["results"]] == [f"e{i}" for i in range(1, 11)]
    got = [
        (r.kind, r.correct, r.score, r.error, r.code_length, r.occurred_at.strftime("%H:%M:%S"))
        for r in records(app)
    ]
    assert got == [
        ("run", None, None, None, None, "10:00:00"),
        ("compile_error", None, None, "SyntaxError", None, "10:00:01"),
        ("submit", False, 0.5, None, None, "10:01:00"),
        ("submit", True, 1.0, None, None, "10:02:00"),
        ("hint", None, None, None, None, "10:03:00"),
        ("stuck", None, None, None, None, "10:04:00"),
        ("runtime_error", None, None, "ZeroDivisionError", None, "10:05:00"),
        ("submit", True, None, None, 120, "10:06:00"),
    ]
    stuck = records(app)[5]
    assert stuck.learner_id == course.people["bob"]
    assert stuck.exercise_id == course.exercises["link-2"]
    assert {r.source for r in records(app)} == {"progsnap2"}
    kept = {r.external_id: json.loads(r.body) for r in raw_events(app)}
    assert kept["e4"]["Score"] == "0.5"  # the row as received, values as text
    assert kept["e8"]["EventType"] == "Session.Start"


def test_out_of_order_rows_sort_by_time_then_order(app: Flask, course: Course_) -> None:
    same = "2026-03-01T10:00:00"
    rows = [
        row("late", "Submit", ServerTimestamp="2026-03-01T10:05:00", Correct="true", Order=9),
        row("b", "Run.Program", ServerTimestamp=same, Order=2),
        row("a", "Compile.Error", ServerTimestamp=same, Order=1),
    ]
    assert send(course, rows).status_code == 200
    assert [r.kind for r in records(app)] == ["compile_error", "run", "submit"]
    early = row("early", "X-HintRequest", ServerTimestamp="2026-03-01T09:00:00")
    assert send(course, [early]).status_code == 200
    assert [r.kind for r in records(app)] == ["hint", "compile_error", "run", "submit"]


def test_a_single_row_is_strict_and_repeats_are_idempotent(app: Flask, course: Course_) -> None:
    first = row("e1", Correct="false")
    ok = send(course, first)
    assert ok.status_code == 200
    assert ok.get_json()["results"][0]["status"] == "accepted"
    again = send(course, first)
    assert again.get_json()["results"][0]["status"] == "duplicate"
    # The same event as CSV text: still the same row.
    as_text = {k: str(v) for k, v in first.items()}
    assert send(course, [as_text]).get_json()["results"][0]["status"] == "duplicate"
    conflict = send(course, {**first, "Correct": "true"})
    assert conflict.status_code == 409
    assert conflict.get_json()["field"] == "id"
    batch = send(course, [{**first, "Correct": "true"}, row("e2", Correct="true")])
    assert batch.status_code == 200
    assert [r["status"] for r in batch.get_json()["results"]] == ["conflict", "accepted"]
    assert [r.correct for r in records(app)] == [False, True]
    invalid = send(course, row("e3", Score="lots"))
    assert invalid.status_code == 400
    assert invalid.get_json()["field"] == "Score"


INVALID_ROWS = [
    (row(None, EventID=None), "EventID"),
    (row("x", EventType=None), "EventType"),
    (row("x", SubjectID=None), "SubjectID"),
    (row("x", ProblemID=None), "ProblemID"),
    (row("x", ServerTimestamp=None), "ServerTimestamp"),
    (row("x", ServerTimestamp="12/03/2026 10:00"), "ServerTimestamp"),
    (row("x", ServerTimestamp="2999-01-01T00:00:00"), "ServerTimestamp"),
    (row("x", ServerTimezone="Europe/Paris"), "ServerTimezone"),
    (row("x", ServerTimezone="+2500"), "ServerTimezone"),
    (row("x", Score=1.5), "Score"),
    (row("x", Score="NaN"), "Score"),
    (row("x", Correct="maybe"), "Correct"),
    (row("x", Order="first"), "Order"),
    (row("x", Order=-1), "Order"),
    (row("x", CodeStateID={"nested": True}), "CodeStateID"),
    (row("x" * 300), "EventID"),
    (row("x", **{"X-CodeLength": "long"}), "X-CodeLength"),
    ("not a row", "row"),
]


def test_invalid_rows_name_the_column_and_do_not_block_the_batch(
    app: Flask, course: Course_
) -> None:
    rows = [r for r, _ in INVALID_ROWS]
    response = send(course, [*rows, row("good", Correct="true")])
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert [(r["status"], r.get("field")) for r in results[:-1]] == [
        ("invalid", field) for _, field in INVALID_ROWS
    ]
    assert results[-1]["status"] == "accepted"
    assert len(records(app)) == 1
    assert len([r for r in raw_events(app) if r.status == "invalid"]) == len(INVALID_ROWS)
    for bad, field in INVALID_ROWS[:5]:
        single = send(course, bad)
        assert single.status_code == 400
        assert single.get_json()["field"] == field


def test_unknown_subjects_and_problems_wait_for_mappings_then_the_cli_reprocesses(
    app: Flask, course: Course_, cli_env: dict[str, str]
) -> None:
    rows = [
        row("u1", SubjectID="s-001", ProblemID="P12", Correct="false"),
        row("u2", SubjectID="alice", ProblemID="P12", Correct="true"),
    ]
    results = send(course, rows).get_json()["results"]
    assert [r["status"] for r in results] == ["unmapped", "unmapped"]
    assert "unknown actor SubjectID 's-001'" in results[0]["reason"]
    assert "unknown activity ProblemID 'P12'" in results[1]["reason"]
    ida = course.instructor
    for url, text in (
        ("actors", "s-001,bob\n"),
        ("exercises", "ProblemID,resource_link_id\nP12,link-2\n"),
    ):
        upload = ida.client.post(
            f"/l/{ida.launch_id}/course/activity/{url}",
            data={"csv_text": text, "csrf_token": ida.csrf()},
        )
        assert upload.status_code == 200
    result = CliRunner().invoke(
        main, ["activity", "reprocess", "--course-id", str(course.course_id)], env=cli_env
    )
    assert result.exit_code == 0, result.output
    assert "Re-processed 2 unmapped events: 2 recorded" in result.output
    got = records(app)
    assert [(r.learner_id, r.exercise_id, r.correct) for r in got] == [
        (course.people["bob"], course.exercises["link-2"], False),
        (course.people["alice"], course.exercises["link-2"], True),
    ]
    missing = CliRunner().invoke(main, ["activity", "reprocess", "--course-id", "999"], env=cli_env)
    assert missing.exit_code == 1
    assert "There is no course #999" in missing.output


# -- the CSV import --------------------------------------------------------------------------


@pytest.fixture
def cli_env(app: Flask, tmp_path: Path) -> dict[str, str]:
    return {
        "LIFELINE_DATABASE_URL": DATABASE_URL,
        "LIFELINE_REDIS_URL": REDIS_URL,
        "LIFELINE_SECRET_KEY": "cli-secret-" + "k" * 40,
        "LIFELINE_BASE_URL": "https://lifeline.test",
        "LIFELINE_INSTANCE_PATH": str(tmp_path),
    }


MAIN_TABLE = (
    "SubjectID,AssignmentID,ProblemID,Order,EventID,EventType,ServerTimestamp,ServerTimezone,"
    "CodeStateID,Score,Compile.Result,CompileMessageType,CompileMessageData\n"
    """alice,a1,link-1,1,r1,Run.Program,2026-02-12T21:00:36,0,c1,0.5,,,
alice,a1,link-1,2,r2,Compile,2026-02-12T21:01:00,0,c2,,Error,,
alice,a1,link-1,3,r3,Compile.Error,2026-02-12T21:01:00,0,c2,,,SyntaxError,"line 3, ';' expected"
alice,a1,link-1,4,r4,Run.Program,2026-02-12T21:02:00,0,c3,1.0,,,
bob,a1,link-2,5,r5,Run.Program,2026-02-12T21:03:00,0,c4,,,,
nobody,a1,link-2,6,r6,Run.Program,2026-02-12T21:04:00,0,c4,,,,
alice,a1,link-1,7,r7,Submit,someday,0,c3,,,,
"""
)
CODE_STATES = """\
CodeStateID,Code
c1,"print(1)"
c2,"print(1"
c3,"def f():
    return 42"
c4,x
"""


def test_cli_imports_a_main_table_with_code_states(
    app: Flask, course: Course_, cli_env: dict[str, str], tmp_path: Path
) -> None:
    main_table = tmp_path / "MainTable.csv"
    main_table.write_text(MAIN_TABLE, encoding="utf-8")
    code_states = tmp_path / "CodeState.csv"
    code_states.write_text(CODE_STATES, encoding="utf-8")
    args = ["activity", "import-progsnap2", str(main_table), "--course-id", str(course.course_id)]

    first = CliRunner().invoke(main, args, env=cli_env)
    assert first.exit_code == 0, first.output
    assert "Read 7 rows into course" in first.output
    assert "4 accepted, 1 ignored, 1 invalid, 1 unmapped" in first.output
    assert "line 8: ServerTimestamp: 'someday' is not an ISO 8601 date and time" in first.output
    got = [(r.kind, r.correct, r.score, r.error, r.code_length) for r in records(app)]
    assert got == [
        ("submit", False, 0.5, None, None),
        ("compile_error", None, None, "SyntaxError", None),
        ("submit", True, 1.0, None, None),
        ("run", None, None, None, None),
    ]

    # Importing again, now with the code states: every row is already there.
    second = CliRunner().invoke(main, [*args, "--code-states", str(code_states)], env=cli_env)
    assert second.exit_code == 0, second.output
    assert "6 duplicate, 1 invalid" in second.output
    assert len(records(app)) == 4

    # A fresh import with code states records their lengths, in chunks, across transactions.
    other = make_course(app, course.platform, "course-2", learners=("alice",), links=("link-1",))
    third = CliRunner().invoke(
        main,
        [
            "activity",
            "import-progsnap2",
            str(main_table),
            "--course-id",
            str(other.course_id),
            "--code-states",
            str(code_states),
        ],
        env=cli_env,
    )
    assert third.exit_code == 0, third.output
    lengths = [r.code_length for r in records(app, other.course_id)]
    assert lengths == [len("print(1)"), len("print(1"), len("def f():\n    return 42")]


def test_cli_import_refuses_files_it_cannot_read(
    course: Course_, cli_env: dict[str, str], tmp_path: Path
) -> None:
    def run(text: bytes | str, *extra: str, course_id: int | None = None) -> Any:
        path = tmp_path / "MainTable.csv"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text, encoding="utf-8")
        cid = str(course_id if course_id is not None else course.course_id)
        return CliRunner().invoke(
            main,
            ["activity", "import-progsnap2", str(path), "--course-id", cid, *extra],
            env=cli_env,
        )

    no_columns = run("Subject,Problem\nalice,link-1\n")
    assert no_columns.exit_code == 1
    assert "has no EventID, EventType, SubjectID column" in no_columns.output
    empty = run("")
    assert empty.exit_code == 1
    assert "is empty" in empty.output
    latin1 = run("EventID,EventType,SubjectID\ne1,Submit,Jos\xe9\n".encode("latin-1"))
    assert latin1.exit_code == 1
    assert "not UTF-8" in latin1.output
    unknown_course = run(MAIN_TABLE, course_id=4242)
    assert unknown_course.exit_code == 1
    assert "There is no course #4242" in unknown_course.output
    missing_file = CliRunner().invoke(
        main,
        ["activity", "import-progsnap2", str(tmp_path / "nope.csv"), "--course-id", "1"],
        env=cli_env,
    )
    assert missing_file.exit_code == 2
    bad_states = tmp_path / "states.csv"
    bad_states.write_text("id,source\n1,x\n", encoding="utf-8")
    states = run(MAIN_TABLE, "--code-states", str(bad_states))
    assert states.exit_code == 1
    assert "has no CodeStateID, Code column" in states.output


# -- credentials and limits ---------------------------------------------------------------------


def test_credentials_scope_and_limits(
    app: Flask, platform: TestPlatform, course: Course_, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert course.client.post(URL, json=[row("e1")]).status_code == 401
    wrong = course.client.post(URL, json=[row("e1")], headers=basic(course.key, "nope"))
    assert wrong.status_code == 401
    assert wrong.get_json()["error"] == "unauthorized"

    other = make_course(app, platform, "course-2", learners=("dora",), links=("link-9",))
    # Course 2's credential: alice is a person of the platform, but link-1 is not course 2's.
    response = other.client.post(URL, json=[row("e1", Correct="true")], headers=other.auth())
    assert response.get_json()["results"][0]["status"] == "unmapped"
    assert records(app) == []
    assert raw_events(app, course.course_id) == []
    # The same EventID is free in course 1.
    assert send(course, [row("e1", Correct="true")]).get_json()["counts"] == {"accepted": 1}

    too_many = send(course, [row(f"r{i}") for i in range(501)])
    assert too_many.status_code == 413
    assert "at most 500" in too_many.get_json()["detail"]
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(max_body=1000))
    too_big = send(course, [row(f"r{i}") for i in range(20)])
    assert too_big.status_code == 413
    assert too_big.get_json()["error"] == "too_large"
    monkeypatch.setattr(ingest, "LIMITS", ingest.Limits(per_credential_per_minute=2))
    key, secret = course.new_credential()
    fresh = basic(key, secret)
    assert course.client.post(URL, json=[row("r1")], headers=fresh).status_code == 200
    assert course.client.post(URL, json=[row("r2")], headers=fresh).status_code == 200
    limited = course.client.post(URL, json=[row("r3")], headers=fresh)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1
    assert len(records(app)) == 3


HOSTILE: list[bytes] = [
    b"",
    b"nope",
    b"null",
    b"12",
    b'"row"',
    b"[[]]",
    b"[" * 50_000,
    b'[{"EventID": "' + b"9" * 5000 + b'"}]',
    b'[{"EventID": 1e999, "EventType": "Submit"}]',
    b'[{"EventID": "a", "Score": NaN}]',
    b'[{"EventID": "a\\u0000", "EventType": "Submit", "SubjectID": "x"}]',
    b'[{"\\u0000": "x"}]',
    b'[{"\\ud800": "x", "EventID": "e"}]',
    b'[{"EventID": "e", "EventType": "Submit", "SubjectID": "\\ud800", "ProblemID": "p", '
    b'"ServerTimestamp": "2026-01-01T00:00:00"}]',
    b'[{"EventID": "e", "EventType": "Submit", "SubjectID": "s", "ProblemID": "p", '
    b'"ServerTimestamp": "0001-01-01T00:00:00", "ServerTimezone": "+14:00"}]',
    b'[{"EventID": "e", "EventType": "Submit", "SubjectID": "s", "ProblemID": "p", '
    b'"ServerTimestamp": "2026-01-01T00:00:00", "Order": 1e300}]',
    b'[{"EventID": "e", "EventType": "Submit", "SubjectID": "s", "ProblemID": "'
    + b"p" * 600
    + b'", "ServerTimestamp": "2026-01-01T00:00:00"}]',
    json.dumps([{f"c{i}": i for i in range(300)}]).encode(),
    '[{"EventID": "é"}]'.encode("utf-16"),
    b"\xff\xfe\x00",
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_never_a_500(course: Course_, body: bytes) -> None:
    response = course.client.post(
        URL, data=body, headers=course.auth(), content_type="application/json"
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"


def test_timezones_and_client_timestamps(app: Flask, course: Course_) -> None:
    rows = [
        row("t1", "Run.Program", ServerTimestamp="2026-03-01T12:00:00", ServerTimezone="+02:00"),
        row(
            "t2",
            "Run.Program",
            ServerTimestamp=None,
            ClientTimestamp="2026-03-01T10:30:00",
            ClientTimezone="0",
        ),
        row("t3", "Run.Program", ServerTimestamp="2026-03-01 05:45:00", ServerTimezone="-0530"),
    ]
    assert send(course, rows).get_json()["counts"] == {"accepted": 3}
    times = [r.occurred_at for r in records(app)]
    assert times == [
        dt.datetime(2026, 3, 1, 10, 0, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 1, 11, 15, tzinfo=dt.UTC),
    ]
