"""Read a ProgSnap2 directory (MainTable.csv, optional CodeState.csv) into ActivityEvents.

Mapping (EventType → kind): ``Submit`` → submit (``Correct`` TRUE/FALSE; NA, i.e. the tests
could not run it, counts as a failure; ``Score`` where present), ``Run.Program`` → run,
``Compile.Error`` → compile_error, ``Runtime.Error`` → runtime_error, ``X-HintRequest`` /
``Hint.Request`` / ``Help.Request`` → hint, ``X-Stuck`` → stuck; other types are skipped and
counted. From the code of each event's ``CodeStateID`` we take its length and, for Python
tools, whether it parses: a failed submission that does not parse carries the syntax error's
type and message as its ``error`` (the code is parsed, never run).
"""

from __future__ import annotations

import ast
import csv
import datetime as dt
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..activity.model import ActivityEvent, ActivityKind

KINDS: dict[str, ActivityKind] = {
    "submit": ActivityKind.SUBMIT,
    "run.program": ActivityKind.RUN,
    "compile.error": ActivityKind.COMPILE_ERROR,
    "runtime.error": ActivityKind.RUNTIME_ERROR,
    "x-hintrequest": ActivityKind.HINT,
    "hint.request": ActivityKind.HINT,
    "help.request": ActivityKind.HINT,
    "x-stuck": ActivityKind.STUCK,
}
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no", "na", "n/a"}


class ProgSnap2Error(ValueError):
    """The directory is not a ProgSnap2 data set we can read; the message says what is wrong."""


@dataclass
class Dataset:
    events: list[ActivityEvent]
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def sequences(self) -> int:
        return len({(e.learner, e.exercise) for e in self.events})


def _timestamp(raw: str, where: str) -> dt.datetime:
    text = raw.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ProgSnap2Error(f"{where}: ServerTimestamp {raw!r} is not an ISO date-time") from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


def syntax_error(code: str) -> str | None:
    """``"SyntaxError: invalid syntax"`` (type and message) if ``code`` does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. SyntaxWarning for "\d" in a string
            ast.parse(code)
    except SyntaxError as exc:  # includes IndentationError and TabError
        return f"{type(exc).__name__}: {exc.msg}"
    except (ValueError, RecursionError, MemoryError):  # NUL bytes, absurd nesting
        return "SyntaxError: unparseable"
    return None


def _code_states(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"CodeStateID", "Code"} <= set(reader.fieldnames):
            raise ProgSnap2Error(f"{path}: expected columns CodeStateID and Code")
        return {row["CodeStateID"]: row["Code"] or "" for row in reader}


def read_progsnap2(directory: str | Path) -> Dataset:
    """All events of the data set, sorted by (ServerTimestamp, Order)."""
    root = Path(directory)
    main = root / "MainTable.csv"
    if not main.is_file():
        raise ProgSnap2Error(f"{root}: no MainTable.csv (is this a ProgSnap2 directory?)")
    codes = _code_states(root / "CodeState.csv")
    parsed: dict[str, str | None] = {}
    events: list[ActivityEvent] = []
    skipped: Counter[str] = Counter()
    with main.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = {"EventType", "SubjectID", "ProblemID", "Order", "ServerTimestamp"}
        missing = sorted(needed - set(reader.fieldnames or ()))
        if missing:
            raise ProgSnap2Error(f"{main}: missing column(s) {', '.join(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{main.name} line {line}"
            kind = KINDS.get((row["EventType"] or "").strip().lower())
            if kind is None:
                skipped[row["EventType"]] += 1
                continue
            try:
                order = int(row["Order"])
            except ValueError:
                raise ProgSnap2Error(f"{where}: Order {row['Order']!r} is not a number") from None
            correct: bool | None = None
            score: float | None = None
            if kind is ActivityKind.SUBMIT:
                flag = (row.get("Correct") or "").strip().lower()
                if flag in _TRUE:
                    correct = True
                elif flag in _FALSE:
                    correct = False
                if row.get("Score"):
                    try:
                        score = max(0.0, min(1.0, float(row["Score"])))
                    except ValueError:
                        raise ProgSnap2Error(f"{where}: Score {row['Score']!r}") from None
            code_id = row.get("CodeStateID") or ""
            code = codes.get(code_id)
            error: str | None = None
            if kind in (ActivityKind.COMPILE_ERROR, ActivityKind.RUNTIME_ERROR):
                error = (row.get("CompileMessageType") or row.get("EventType") or "").strip()
            elif (
                kind is ActivityKind.SUBMIT
                and correct is not True
                and code is not None
                and "python" in (row.get("ToolInstances") or "").lower()
            ):
                if code_id not in parsed:
                    parsed[code_id] = syntax_error(code)
                error = parsed[code_id]
            events.append(
                ActivityEvent(
                    learner=row["SubjectID"],
                    exercise=row["ProblemID"],
                    kind=kind,
                    at=_timestamp(row["ServerTimestamp"], where),
                    order=order,
                    correct=correct,
                    score=score,
                    error=error,
                    code_length=len(code) if code is not None else None,
                )
            )
    events.sort(key=lambda e: (e.at, e.order))
    return Dataset(events, skipped)


def sequences(events: list[ActivityEvent]) -> Iterator[tuple[tuple[str, str], list[ActivityEvent]]]:
    """Events grouped per (learner, exercise), each group in time order."""
    groups: dict[tuple[str, str], list[ActivityEvent]] = {}
    for event in events:
        groups.setdefault((event.learner, event.exercise), []).append(event)
    yield from groups.items()
