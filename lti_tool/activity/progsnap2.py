"""ProgSnap2 main-table rows (a CSV file or JSON objects) into the course's activity.

A row is kept as received (values as text, empty ones left out) plus ``X-CodeLength`` when
the code state was supplied, so a re-import with ``--code-states`` is still the same event.
``EventID`` is the row's identity: the same row again is a duplicate, a different row under a
stored EventID a conflict. ``SubjectID`` is the person's LTI ``sub`` on the course's platform
(or an uploaded actor mapping), ``ProblemID`` the exercise's resource link id (or an uploaded
exercise mapping).

Event types: ``Submit`` → submit (``Correct``, else ``Score`` = 1 means correct);
``Run.Program`` → run, or submit when the run was graded (it carries Score or Correct, as in
CodeWorkout); ``Compile.Error`` → compile error, with ``CompileMessageType`` (the ``Compile``
row itself is not counted again); ``Run.Error`` / ``Runtime.Error`` → runtime error;
``X-HintRequest`` → hint; any type naming "stuck" (``X-Stuck``, ``X-SelfReport.Stuck``) →
stuck. Other types (``Session.Start``, ``File.Edit``, ``Compile``…) are stored
``ignored``. Timestamps are ``ServerTimestamp`` (else ``ClientTimestamp``) in the row's
timezone column (``ServerTimezone``: ``0``, ``+0100``, ``-05:00``), UTC without one.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..courses import Course
from ..db import Database, utcnow
from .ingest import (
    ActivityRef,
    ActorRef,
    Item,
    Normalised,
    Scope,
    canonical,
    check_not_future,
    clean_text,
    finite_number,
    invalid_item,
    parse_timestamp,
    short,
    store,
)
from .model import ActivityKind

SOURCE = "progsnap2"
CODE_LENGTH = "X-CodeLength"
MAX_ID = 200
MAX_VALUE = 20_000
MAX_COLUMNS = 200
REQUIRED_COLUMNS = ("EventID", "EventType", "SubjectID")

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
_TZ = re.compile(r"^([+-])(\d{1,2}):?(\d{2})?$")
_RUNTIME_TYPES = {"run.error", "runtime.error", "run.exception", "x-runtimeerror"}
_HINT_TYPES = {"x-hintrequest", "hint.request", "x-hint", "x-hint.request"}


class _Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def _row_values(row: Mapping[Any, Any]) -> dict[str, str]:
    """The row's non-empty values as text (CSV and JSON alike)."""
    if len(row) > MAX_COLUMNS:
        raise _Invalid("row", f"has more than {MAX_COLUMNS} columns")
    values: dict[str, str] = {}
    for key, value in row.items():
        if key is None:  # csv.DictReader's bucket for fields beyond the header
            raise _Invalid("row", "has more fields than the header has columns")
        name = clean_text(key, 100)
        if name is None or not name.strip():
            raise _Invalid("row", "a column name is empty, too long or not text")
        name = name.strip()
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            number = finite_number(value)
            if number is None:
                raise _Invalid(name, "must be a finite number")
            text = str(value)
        elif isinstance(value, str):
            cleaned = clean_text(value, MAX_VALUE)
            if cleaned is None:
                raise _Invalid(
                    name, f"must be at most {MAX_VALUE} characters of text (no NUL character)"
                )
            text = cleaned.strip()
        else:
            raise _Invalid(name, "must be text, a number or true/false")
        if text:
            values[name] = text
    return values


def _required(values: Mapping[str, str], name: str, max_length: int = MAX_ID) -> str:
    value = values.get(name)
    if value is None:
        raise _Invalid(name, "is required")
    if len(value) > max_length:
        raise _Invalid(name, f"must be at most {max_length} characters")
    return value


def _score(values: Mapping[str, str]) -> float | None:
    raw = values.get("Score")
    if raw is None:
        return None
    try:
        score = float(raw)
    except ValueError:
        raise _Invalid("Score", f"{short(raw, 20)!r} is not a number") from None
    if not 0 <= score <= 1:
        raise _Invalid("Score", f"{score:g} is outside 0..1")
    return score


def _correct(values: Mapping[str, str]) -> bool | None:
    raw = values.get("Correct")
    if raw is None:
        return None
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _Invalid("Correct", f"{short(raw, 20)!r} is not true or false")


def _int(values: Mapping[str, str], name: str) -> int | None:
    raw = values.get(name)
    if raw is None:
        return None
    try:
        number = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
    except ValueError:
        raise _Invalid(name, f"{short(raw, 20)!r} is not a whole number") from None
    if number != int(number) or not 0 <= number < 2**53:
        raise _Invalid(name, "must be a whole number, zero or more")
    return int(number)


def _timezone(values: Mapping[str, str], name: str) -> dt.tzinfo:
    raw = values.get(name)
    if raw is None or raw.upper() in {"0", "UTC", "Z", "GMT"}:
        return dt.UTC
    match = _TZ.match(raw)
    if match is None:
        raise _Invalid(name, f"{short(raw, 20)!r} is not an offset such as 0, +0100 or -05:00")
    sign, hours, minutes = match.group(1), int(match.group(2)), int(match.group(3) or 0)
    if hours > 14 or minutes > 59:
        raise _Invalid(name, f"{raw!r} is not a UTC offset")
    offset = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-offset if sign == "-" else offset)


def _occurred_at(values: Mapping[str, str], received_at: dt.datetime) -> dt.datetime:
    for stamp, zone in (
        ("ServerTimestamp", "ServerTimezone"),
        ("ClientTimestamp", "ClientTimezone"),
    ):
        raw = values.get(stamp)
        if raw is None:
            continue
        parsed = parse_timestamp(raw, _timezone(values, zone))
        if parsed is None:
            raise _Invalid(stamp, f"{short(raw, 40)!r} is not an ISO 8601 date and time")
        future = check_not_future(parsed, received_at)
        if future:
            raise _Invalid(stamp, future)
        return parsed
    raise _Invalid("ServerTimestamp", "is required (or ClientTimestamp)")


def _kind(values: Mapping[str, str]) -> tuple[ActivityKind | None, str | None]:
    event_type = values["EventType"]
    lowered = event_type.lower()
    if lowered == "submit":
        return ActivityKind.SUBMIT, None
    if lowered == "run.program":
        graded = "Score" in values or "Correct" in values
        return (ActivityKind.SUBMIT if graded else ActivityKind.RUN), None
    if lowered == "compile.error":
        return ActivityKind.COMPILE_ERROR, None
    if lowered == "compile":
        # Its errors come as Compile.Error rows (one per message): counting the compile too
        # would count every failed compile twice.
        return None, "a Compile (its Compile.Error rows carry any errors)"
    if lowered in _RUNTIME_TYPES:
        return ActivityKind.RUNTIME_ERROR, None
    if lowered in _HINT_TYPES:
        return ActivityKind.HINT, None
    if "stuck" in lowered:
        return ActivityKind.STUCK, None
    return None, f"EventType {short(event_type, 40)!r} is not an exercise event Lifeline uses"


def _error(values: Mapping[str, str], kind: ActivityKind) -> str | None:
    if kind not in (ActivityKind.COMPILE_ERROR, ActivityKind.RUNTIME_ERROR):
        return None
    for name in ("CompileMessageType", "X-ErrorType", "ExceptionType", "CompileMessageData"):
        if values.get(name):
            return values[name][:200]
    return "CompileError" if kind is ActivityKind.COMPILE_ERROR else "RuntimeError"


def comparable(values: Mapping[str, Any]) -> str:
    return canonical({k: v for k, v in values.items() if k != CODE_LENGTH})


def compare_stored(body: str) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return body
    return comparable(value) if isinstance(value, dict) else body


def parse_row(
    row: Any,
    index: int,
    received_at: dt.datetime,
    code_lengths: Mapping[str, int] | None = None,
) -> Item:
    """One main-table row as an ``Item``; an invalid row names the column and why."""
    if not isinstance(row, dict):
        return invalid_item(index, row, "row", "must be a JSON object of column → value")
    try:
        values = _row_values(row)
    except _Invalid as exc:
        return invalid_item(index, {str(k): v for k, v in row.items()}, exc.field, exc.reason)
    event_id = values.get("EventID")
    try:
        event_id = _required(values, "EventID")
        event_type = _required(values, "EventType")
        subject = _required(values, "SubjectID", 255)
        order = _int(values, "Order") or 0
        occurred_at = _occurred_at(values, received_at)
        kind, why_not = _kind(values)
        problem = _required(values, "ProblemID", 500) if kind is not None else None
        score = _score(values)
        correct = _correct(values)
        code_length = _int(values, CODE_LENGTH)
    except _Invalid as exc:
        return invalid_item(index, values, exc.field, exc.reason, event_id)
    if code_length is None and code_lengths and values.get("CodeStateID") in code_lengths:
        code_length = code_lengths[values["CodeStateID"]]
        values[CODE_LENGTH] = str(code_length)
    item = Item(
        index=index,
        external_id=event_id,
        body=canonical(values),
        compare=comparable(values),
        reply_id=event_id,
        actor=ActorRef(describe=f"SubjectID {short(subject)!r}", keys=(subject,), subs=(subject,)),
    )
    if kind is None or problem is None:
        item.note = why_not or f"EventType {event_type!r} is not used"
        return item
    item.activity = ActivityRef(describe=f"ProblemID {short(problem)!r}", activity_id=problem)
    if correct is None and kind is ActivityKind.SUBMIT and score is not None:
        correct = score >= 1.0
    item.event = Normalised(
        kind=kind,
        occurred_at=occurred_at,
        correct=correct if kind is ActivityKind.SUBMIT else None,
        score=score if kind is ActivityKind.SUBMIT else None,
        error=_error(values, kind),
        code_length=code_length,
        order=order,
    )
    return item


def reparse(body: str, received_at: dt.datetime) -> Item | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return parse_row(value, 0, received_at)


# -- the CSV import (``lifeline activity import-progsnap2``) -------------------------------------


class FileProblem(Exception):
    """The CSV file cannot be read as a ProgSnap2 table; the message says where and why."""


@dataclass
class ImportSummary:
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the first invalid rows, with the reason


def _reader(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(min(sys.maxsize, 64 * 1024 * 1024))  # code states can be long
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames
            if not header:
                raise FileProblem(f"{path.name} is empty: it needs a header line.")
            missing = [c for c in required if c not in header]
            if missing:
                raise FileProblem(
                    f"{path.name} has no {', '.join(missing)} column "
                    f"(found: {short(', '.join(header), 300)})."
                )
            yield from reader
    except UnicodeDecodeError as exc:
        raise FileProblem(f"{path.name} is not UTF-8 text ({exc.reason}).") from None
    except csv.Error as exc:
        raise FileProblem(f"{path.name} is not a readable CSV file: {exc}.") from None


def read_code_states(path: Path) -> dict[str, int]:
    """CodeStateID → length of the code, from a ProgSnap2 CodeState table."""
    lengths: dict[str, int] = {}
    for line, row in enumerate(_reader(path, ("CodeStateID", "Code")), start=2):
        key, code = row.get("CodeStateID"), row.get("Code")
        if not isinstance(key, str) or not isinstance(code, str):
            raise FileProblem(f"{path.name} line {line}: missing CodeStateID or Code.")
        lengths[key.strip()] = len(code)
    return lengths


def import_csv(
    database: Database,
    course_id: int,
    main_table: Path,
    code_states: Path | None = None,
    chunk_size: int = 1000,
) -> ImportSummary:
    """Import a ProgSnap2 MainTable CSV into one course, ``chunk_size`` rows per transaction.
    Running it again is harmless: stored rows are duplicates."""
    with database.transaction() as session:
        course = session.get(Course, course_id)
        if course is None:
            raise FileProblem(f"There is no course #{course_id}.")
        scope = Scope.of(course)
    lengths = read_code_states(code_states) if code_states is not None else None
    summary = ImportSummary()
    rows = _reader(main_table, REQUIRED_COLUMNS)
    while True:
        chunk: list[Item] = []
        now = utcnow()
        for row in rows:
            chunk.append(parse_row(row, summary.rows + len(chunk), now, lengths))
            if len(chunk) >= chunk_size:
                break
        if not chunk:
            return summary
        with database.transaction() as session:
            outcome = store(session, scope, SOURCE, chunk, compare=compare_stored, now=now)
        for result in outcome.results:
            summary.counts[result.status] = summary.counts.get(result.status, 0) + 1
            problem = result.reason and result.status in ("invalid", "conflict")
            if problem and len(summary.problems) < 20:
                # Line numbers: the header is line 1 (rows with embedded newlines aside).
                summary.problems.append(f"line {result.index + 2}: {result.reason}")
        summary.rows += len(chunk)
