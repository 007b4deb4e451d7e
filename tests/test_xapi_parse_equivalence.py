"""``xapi.parse_statement`` gives, for every input, exactly the ``Item`` it gave before it was
made faster: a broad corpus of statements (valid and invalid, every branch) against a snapshot
of what the earlier implementation produced (``tests/data/xapi_parse_snapshot.json``).

Every field of every Item is compared: the strings that are long (body, compare) by digest,
everything else as its type and repr (a float that became an int, a datetime in another zone,
a changed note text: all fail). The snapshot is only regenerated from a known-good
implementation, deliberately::

    .venv/bin/python -m tests.test_xapi_parse_equivalence --write
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import hashlib
import itertools
import json
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lti_tool.activity import xapi

SNAPSHOT = Path(__file__).parent / "data" / "xapi_parse_snapshot.json"
NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
LMS = "https://lms.example.edu"
EDX = "http://localhost:18000"
ADL = "http://adlnet.gov/expapi/verbs/"
ACROSSX = "https://w3id.org/xapi/acrossx/verbs/"
BLOCK = "block-v1:edX+DemoX+Demo_Course+type@problem+block@a0effb954cca4759994f1ac9e9434bf4"
ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
OTHER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
MISSING = object()  # the component is left out

NAN, INF = float("nan"), float("inf")
LONG = "x" * 501
LONG_IRI = "https://lms.example.edu/" + "a" * 2030
LONG_ID = "https://lms.example.edu/activity/" + "very-long-" * 12

ACCOUNT = {"objectType": "Agent", "account": {"homePage": LMS, "name": "alice"}}
ACTORS: list[Any] = [
    ACCOUNT,
    {"account": {"homePage": EDX, "name": "32e08e30-f8ae-4ce2-94a8-c2bfe38a70cb"}},
    {"objectType": "Agent", "name": "Alice A", "account": {"homePage": LMS, "name": "alice"}},
    {"objectType": "Agent", "name": 5, "account": {"homePage": LMS, "name": "alice"}},
    {"objectType": "Agent", "account": {"homePage": "lms example", "name": "alice"}},
    {"objectType": "Agent", "account": {"name": "alice"}},
    {"objectType": "Agent", "account": {"homePage": LMS}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": ""}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": LONG}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": "n" * 120}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": "n" * 400}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": "al\x00ice"}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": "al\ud800ice"}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": "ålice ✓"}},
    {"objectType": "Agent", "account": {"homePage": LMS, "name": 7}},
    {"objectType": "Agent", "account": "alice"},
    {"objectType": "Agent", "account": None},
    {"objectType": "Agent", "mbox": "mailto:Alice@Example.edu"},
    {"objectType": "Agent", "mbox": "MAILTO: Bob@Example.org "},
    {"mbox": "alice@example.edu"},
    {"mbox": "mailto:nobody"},
    {"mbox": 123},
    {"mbox": "mailto:" + "m" * 100 + "@example.edu"},
    {"objectType": "Agent", "mbox_sha1sum": "A94A8FE5CCB19BA61C4C0873D391E987982FBBD3"},
    {"mbox_sha1sum": "a94a8fe5ccb19ba61c4c0873d391e987982fbbd"},
    {"openid": "https://openid.example/alice"},
    {"openid": "not an iri"},
    {"openid": "https://openid.example/" + "o" * 100},
    {"mbox": "mailto:a@example.edu", "account": {"homePage": LMS, "name": "alice"}},
    {"objectType": "Agent", "name": "nobody"},
    {"objectType": "Person", "account": {"homePage": LMS, "name": "alice"}},
    {"objectType": 5, "account": {"homePage": LMS, "name": "alice"}},
    {"objectType": "Group", "account": {"homePage": LMS, "name": "team-1"}},
    {"objectType": "Group", "member": [ACCOUNT, {"mbox": "mailto:b@example.edu"}]},
    {"objectType": "Group", "member": []},
    {"objectType": "Group"},
    {"objectType": "Group", "member": {"a": 1}},
    {"objectType": "Group", "mbox": "mailto:team@example.edu", "member": "x"},
    {"objectType": "Group", "member": [ACCOUNT, {"objectType": "Group", "member": [ACCOUNT]}]},
    {"objectType": "Group", "member": [ACCOUNT, {"name": "no ifi"}]},
    {"objectType": "Group", "member": [ACCOUNT, "bob"]},
    {"objectType": "Group", "mbox": "mailto:t@example.edu", "openid": "https://o.example/t"},
    {"objectType": "Group", "openid": "https://o.example/t", "member": [{"mbox": "x"}]},
    "alice",
    None,
    [ACCOUNT],
    MISSING,
]

VERBS: list[Any] = [
    {"id": ADL + "answered", "display": {"en-US": "answered"}},
    {"id": ACROSSX + "evaluated", "display": {"en": "evaluated"}},
    {"id": ADL + "attempted"},
    *({"id": ADL + v} for v in ("submitted", "scored", "responded", "failed", "passed")),
    *({"id": ADL + v} for v in ("completed", "ran", "executed", "run", "asked")),
    *({"id": ADL + v} for v in ("requested-hint", "hinted", "stuck", "experienced")),
    {"id": "http://example.edu/verbs/Answered/"},
    {"id": "urn:example:verbs:answered"},
    {"id": "http://example.edu/verbs#stuck"},
    {"id": "http://example.edu/verbs/Ran#"},
    {"id": "answered"},
    {"display": {"en": "answered"}},
    {"id": ADL + "answered", "display": "answered"},
    {"id": ADL + "answered", "display": {"en": 5}},
    {"id": ADL + "answered", "display": {"en": "answered", "fr-FR": "a répondu"}},
    {"id": ADL + "answered", "display": {}},
    {"id": LONG_IRI},
    {"id": 5},
    {"id": ""},
    {"id": "http://example.edu/verbs/" + "v" * 100},
    {"id": "http://example.edu/verbs/" + "v" * 500 + "/answered"},
    "answered",
    None,
    MISSING,
]

DEFINITION = {
    "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
    "name": {"en-US": "Multiple Choice Questions"},
    "description": {"en-US": "Pick one", "de": "Wähle"},
    "interactionType": "other",
}
OBJECTS: list[Any] = [
    {"objectType": "Activity", "id": LMS + "/activity/link-1"},
    {"id": LMS + "/activity/link-1"},
    {"objectType": "Activity", "id": LMS + "/activity/link-1", "definition": DEFINITION},
    {"objectType": "Activity", "id": EDX + "/xblock/" + BLOCK, "definition": {}},
    {"objectType": "Activity", "id": LMS + "/a", "definition": "problem"},
    {"objectType": "Activity", "id": LMS + "/a", "definition": {"name": "problem"}},
    {"objectType": "Activity", "id": LMS + "/a", "definition": {"description": {"en": 1}}},
    {"objectType": "Activity", "id": LMS + "/a", "definition": {"type": "cmi interaction"}},
    {"objectType": "Activity", "id": LMS + "/a", "definition": {"type": None}},
    {"objectType": "GroupActivity", "id": EDX + "/xblock/" + BLOCK, "definition": DEFINITION},
    {"objectType": "GroupActivity", "id": BLOCK},
    {"objectType": "Activity", "id": BLOCK},
    {"objectType": "StatementRef", "id": ID},
    {"objectType": "StatementRef", "id": "not-a-uuid"},
    {
        "objectType": "SubStatement",
        "actor": ACCOUNT,
        "verb": {"id": ADL + "answered"},
        "object": {"id": LMS + "/activity/link-1"},
    },
    {"objectType": "Agent", "mbox": "mailto:teacher@example.edu"},
    {"objectType": "Agent", "name": "no ifi"},
    {"objectType": "Group", "member": [ACCOUNT]},
    {"objectType": "Widget", "id": LMS + "/w"},
    {"objectType": "W" * 100, "id": LMS + "/w"},
    {"objectType": 5, "id": LMS + "/w"},
    {"objectType": None, "id": LMS + "/w"},
    {"objectType": "activity", "id": LMS + "/w"},
    {"objectType": "Activity", "id": "https://lms.example.edu/has space"},
    {"objectType": "Activity"},
    {"objectType": "Activity", "id": LONG_IRI},
    {"objectType": "Activity", "id": LONG_ID},
    {"objectType": "Activity", "id": LMS + "/" + "i" * 1000},
    {"objectType": "Activity", "id": LMS + "/a\x00b"},
    {"objectType": "Activity", "id": LMS + "/\udc80"},
    {"objectType": "Activity", "id": LMS + "/ünïcode/✓"},
    "https://lms.example.edu/activity/link-1",
    None,
    MISSING,
]

SCORE_CASES: list[Any] = [
    {"scaled": 0.5},
    {"scaled": 1},
    {"scaled": 0},
    {"scaled": -0.5},
    {"scaled": -0.0},
    {"scaled": 1.5},
    {"scaled": -1.5},
    {"raw": 2, "min": 0, "max": 3},
    {"raw": 2.5, "min": 1, "max": 3},
    {"raw": 5, "min": 0, "max": 3},
    {"raw": -1, "min": 0, "max": 3},
    {"raw": 1, "min": 3, "max": 3},
    {"raw": 1, "min": 4, "max": 3},
    {"raw": 2},
    {"raw": 2, "max": 3},
    {"min": 0, "max": 3, "raw": 2, "scaled": 0.6667},
    {"scaled": "0.5"},
    {"scaled": True},
    {"scaled": NAN},
    {"raw": INF, "min": 0, "max": 1},
    {"raw": 10**400, "min": 0, "max": 1},
    {"max": 10**400},
    {"scaled": None},
    {},
    "0.5",
]
EXTENSIONS: list[Any] = [
    {"https://example.edu/ext/error": "NameError: name 'x' is not defined"},
    {"https://example.edu/ext/compile-error": "SyntaxError: invalid syntax"},
    {"http://example.edu/ext#syntax-error": {"type": "SyntaxError", "message": "m"}},
    {"urn:x:exception": {"message": "boom"}},
    {"https://example.edu/ext/Error-Type/": {"name": "ValueError"}},
    {"https://example.edu/ext/runtime-error": {"line": 3}},
    {"https://example.edu/ext/error": "   "},
    {"https://example.edu/ext/error": "bad\x00text"},
    {"https://example.edu/ext/error": "e" * 300},
    {"https://example.edu/ext/error": "  padded error  "},
    {"https://example.edu/ext/error": "e" * 10_001},
    {"https://example.edu/ext/error": 42},
    {"https://example.edu/ext/attempt": 3, "https://example.edu/ext/exception": "KeyError"},
    {"https://example.edu/ext/exception": "", "https://example.edu/ext/error_type": "TypeError"},
    {"https://example.edu/ext/errors": "not an error key"},
    {"error": "bare key"},
    {},
    "error",
]
RESULTS: list[Any] = [
    {"success": True},
    {"success": False},
    {"success": True, "response": "print(x)"},
    {"success": "yes"},
    {"success": None},
    {"completion": True},
    {"completion": 1},
    {"response": 5},
    {"response": "a\x00b"},
    {"duration": "PT1M30S"},
    {"duration": "P1Y2M3DT4H5M6.5S"},
    {"duration": "P1W"},
    {"duration": "PT"},
    {"duration": "P"},
    {"duration": "1 minute"},
    {"duration": 5},
    *({"score": s} for s in SCORE_CASES),
    *({"extensions": e} for e in EXTENSIONS),
    {"success": False, "score": {"scaled": 0.2}, "extensions": EXTENSIONS[0]},
    {
        "success": False,
        "completion": True,
        "response": "print(x)",
        "duration": "PT5S",
        "score": {"raw": 1, "min": 0, "max": 4},
        "extensions": EXTENSIONS[12],
    },
    {},
    "passed",
    [],
    None,
    MISSING,
]

PARENT = {"id": EDX + "/course/course-v1:edX+DemoX", "objectType": "Activity"}
GROUP_PARENT = {"id": EDX + "/xblock/" + BLOCK, "objectType": "GroupActivity"}
CONTEXTS: list[Any] = [
    {"registration": ID},
    {"registration": ID.upper()},
    {"registration": "nope"},
    {"extensions": {"https://example.edu/ext/session": "s-1"}},
    {"extensions": 5},
    {"contextActivities": {"parent": [PARENT]}},
    {"contextActivities": {"parent": [PARENT, GROUP_PARENT]}},
    {"contextActivities": {"parent": GROUP_PARENT}},
    {"contextActivities": {"parent": PARENT}},
    {"contextActivities": {"grouping": [GROUP_PARENT]}},
    {"contextActivities": {"category": [{"id": "https://w3id.org/xapi/openedx"}]}},
    {"contextActivities": {"other": [{"objectType": "Activity"}]}},
    {"contextActivities": {"parent": [PARENT, {"id": "no iri"}]}},
    {"contextActivities": {"parent": ["https://example.edu/p"]}},
    {"contextActivities": {"parent": [None]}},
    {"contextActivities": {"k" * 30: [{"id": "bad"}]}},
    {"contextActivities": {"parent": []}},
    {"contextActivities": []},
    {"contextActivities": None},
    {
        "statement": {"id": ID, "objectType": "StatementRef"},
        "contextActivities": {"parent": [dict(GROUP_PARENT, definition=DEFINITION)]},
        "extensions": {"https://w3id.org/xapi/openedx/extension/transformer-version": "erb@1"},
    },
    {},
    "context",
    None,
    MISSING,
]

TIMESTAMPS: list[Any] = [
    "2026-03-01T10:00:00Z",
    "2026-03-01T10:00:00z",
    "2026-03-01T10:00:00.123Z",
    "2026-03-01T10:00:00.906232+00:00",
    "2026-03-01T10:00:00.123456789Z",
    "2026-03-01T10:00:00.1Z",
    "2026-03-01T10:00:00+02:00",
    "2026-03-01T10:00:00-05:30",
    "2026-03-01T10:00:00+0200",
    "2026-03-01T10:00:00+02",
    "2026-03-01T10:00:00.5-01:00:30",
    "2026-03-01 10:00:00",
    "2026-03-01T10:00",
    "2026-03-01T10:00Z",
    "2026-03-01T10:00:00",
    "2026-03-01T10:00:00+00:00Z",
    "2026-03-01T10:00:00ZZ",
    "2026-03-01T10:00:00 Z",
    "2026-03-01",
    "2026-13-01T10:00:00Z",
    "2026-02-30T10:00:00Z",
    "2026-03-01T25:00:00Z",
    "2026-03-01T24:00:00Z",
    "2026-03-01T10:00:60Z",
    "2026-03-02T11:00:00Z",
    "2026-03-02T12:00:00.000001Z",
    "2026-03-03T12:00:00Z",
    "2026-03-02T08:00:00-05:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00+01:00",
    "2026-03-01T10:00:00.000000000000000000000000000000000000000000000000Z",
    "2026-03-01T10:00:00.00000000000000000000000000000000000000000000000000Z",
    "\u0662\u0660\u0662\u0666-\u0660\u0663-\u0660\u0661T10:00:00Z",
    "2026-03-01T10:00:00\u00a0",
    "2026-03-01t10:00:00Z",
    "2026-03-01T10:00:00,5Z",
    "20260301T100000Z",
    "yesterday",
    "",
    5,
    None,
    MISSING,
]

IDS: list[Any] = [ID, ID.upper(), MISSING, "{" + ID + "}", "not-a-uuid", 5, "", None]
VERSIONS: list[Any] = ["1.0.3", "1.0", "1.0.99", "2.0.0", 1.0, None, MISSING]
EXTRAS: list[dict[str, Any]] = [
    {},
    {"stored": "2026-03-01T10:00:01Z", "authority": {"mbox": "mailto:lrs@example.edu"}},
    {"attachments": []},
    {"attachments": {}},
    {"zeta": 1, "alpha": 2},
    {"k" * 60: 1},
    {"bad\x00key": 1},
    {"bad\udfffkey": 1},
]

FIELDS: dict[str, list[Any]] = {
    "actor": ACTORS,
    "verb": VERBS,
    "object": OBJECTS,
    "result": RESULTS,
    "context": CONTEXTS,
    "timestamp": TIMESTAMPS,
    "id": IDS,
    "version": VERSIONS,
}


def _bases() -> list[dict[str, Any]]:
    ordinary = {
        "id": ID,
        "actor": ACCOUNT,
        "verb": {"id": ADL + "answered", "display": {"en-US": "answered"}},
        "object": {"objectType": "Activity", "id": LMS + "/activity/bench-link-1"},
        "result": {"success": False, "response": "print(x)"},
        "timestamp": "2026-03-01T10:00:00.123Z",
    }
    edx = {
        "id": OTHER_ID,
        "actor": ACTORS[1],
        "verb": {"id": ACROSSX + "evaluated", "display": {"en": "evaluated"}},
        "object": {"objectType": "GroupActivity", "id": EDX + "/xblock/" + BLOCK},
        "result": {"score": {"min": 0, "max": 3, "raw": 2, "scaled": 0.6667}, "success": False},
        "context": {"contextActivities": {"parent": [PARENT]}},
        "timestamp": "2026-03-01T14:39:26.906232+00:00",
        "version": "1.0.3",
    }
    ran = {
        "actor": {"mbox": "mailto:Carol@Example.edu"},
        "verb": {"id": ADL + "ran"},
        "object": {"id": LMS + "/activity/link-2", "definition": DEFINITION},
        "result": {"extensions": EXTENSIONS[1]},
    }
    return [ordinary, edx, ran]


def _with(base: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = dict(base)
    if value is MISSING:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def corpus() -> Iterator[tuple[Any, str | None]]:
    """(statement, PUT statementId) pairs, as the web has them (decoded from JSON text)."""
    cases: list[tuple[Any, str | None]] = [
        (value, None) for value in ([], "statement", 5, None, True, 1.5, [_bases()[0]])
    ]
    for base in _bases():
        cases.append((base, None))
        for key, values in FIELDS.items():
            cases.extend((_with(base, key, value), None) for value in values)
        cases.extend(({**base, **extra}, None) for extra in EXTRAS)
        for statement_id in (ID, OTHER_ID, ID.upper()):
            cases.append((base, statement_id))
            cases.append((_with(base, "id", MISSING), statement_id))
    rng = random.Random(20260301)
    for _ in range(400):
        statement: dict[str, Any] = {}
        for key, values in FIELDS.items():
            value = rng.choice(values[:3] if rng.random() < 0.7 else values)
            if value is not MISSING:
                statement[key] = copy.deepcopy(value)
        if rng.random() < 0.15:
            statement.update(rng.choice(EXTRAS))
        if rng.random() < 0.3:  # key order: the first unknown / error key found differs
            keys = list(statement)
            rng.shuffle(keys)
            statement = {k: statement[k] for k in keys}
        statement_id = rng.choice([None, None, None, ID, OTHER_ID])
        cases.append((statement, statement_id))
    for value, statement_id in cases:
        yield json.loads(json.dumps(value)), statement_id


def _leaf(value: Any) -> Any:
    """``value`` as JSON to compare: long strings by digest, other scalars by type and repr,
    dataclasses by their fields (None and False left out, to keep the snapshot small)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):  # before str: ActivityKind is a str too
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, str) and type(value) is str:
        if len(value) <= 100:
            return value
        text = value.encode("utf-8", "surrogatepass")
        return f"sha256:{hashlib.sha256(text).hexdigest()[:16]}:{len(value)}"
    if isinstance(value, tuple):
        return ["tuple", *(_leaf(v) for v in value)]
    if dataclasses.is_dataclass(value):
        fields = {f.name: _leaf(getattr(value, f.name)) for f in dataclasses.fields(value)}
        return {k: v for k, v in fields.items() if v is not None and v is not False}
    return f"{type(value).__name__}:{value!r}"


def describe(item: Any, compare_stored: Callable[[str], str]) -> dict[str, Any]:
    """Every field of ``item`` (and the compare text of its body as stored), comparably."""
    out = _leaf(item)
    assert isinstance(out, dict) and type(item).__name__ == "Item"
    for name in ("body", "compare"):  # always by digest: no snapshot of statement texts
        text = getattr(item, name).encode("utf-8", "surrogatepass")
        out[name] = hashlib.sha256(text).hexdigest()[:16]
    if item.external_id.startswith("invalid:") and len(item.external_id) == 72:
        out["external_id"] = item.external_id[:24]  # the digest of the body, checked above
    out["stored_compare"] = compare_stored(item.body) == item.compare
    return out


def _ids() -> Callable[[], uuid.UUID]:
    numbers = itertools.count(1)
    return lambda: uuid.UUID(int=next(numbers), version=4)


def run(parse: Callable[..., Any], compare_stored: Callable[[str], str]) -> list[dict[str, Any]]:
    """Parses the corpus, ``uuid.uuid4`` made deterministic (a statement without an id)."""
    real = uuid.uuid4
    uuid.uuid4 = _ids()  # type: ignore[assignment]
    try:
        return [
            describe(parse(value, n, NOW, statement_id), compare_stored)
            for n, (value, statement_id) in enumerate(corpus())
        ]
    finally:
        uuid.uuid4 = real  # type: ignore[assignment]


def test_every_item_is_the_one_of_the_snapshot() -> None:
    expected = json.loads(SNAPSHOT.read_text())
    got = run(xapi.parse_statement, xapi.compare_stored)
    assert len(got) == len(expected)
    inputs = list(corpus())
    for n, (want, have) in enumerate(zip(expected, got, strict=True)):
        assert have == want, f"corpus[{n}] = {inputs[n]!r}"


def test_the_corpus_reaches_every_outcome() -> None:
    got = run(xapi.parse_statement, xapi.compare_stored)
    notes = {g.get("note") for g in got}
    fields = {g.get("invalid_field") for g in got}
    kinds = {g["event"]["kind"] for g in got if "event" in g}
    assert len(fields) > 50 and len(notes) > 80
    assert kinds == {"ActivityKind." + k for k in ("SUBMIT", "RUN", "HINT", "STUCK")} | {
        "ActivityKind.COMPILE_ERROR",
        "ActivityKind.RUNTIME_ERROR",
    }
    assert "one question of a multi-question problem (its GroupActivity counts)" in notes
    assert all(g["stored_compare"] for g in got if "invalid_field" not in g)


def test_reparse_of_the_stored_body_gives_the_same_item() -> None:
    real = uuid.uuid4
    uuid.uuid4 = _ids()  # type: ignore[assignment]
    try:
        for n, (value, statement_id) in enumerate(corpus()):
            item = xapi.parse_statement(value, 0, NOW, statement_id)
            if item.invalid or statement_id not in (None, ID, OTHER_ID):
                continue
            again = xapi.reparse(item.body, NOW)
            assert again is not None
            assert dataclasses.replace(again, index=0) == item, n
    finally:
        uuid.uuid4 = real  # type: ignore[assignment]


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    rows = run(xapi.parse_statement, xapi.compare_stored)
    SNAPSHOT.parent.mkdir(exist_ok=True)
    lines = (json.dumps(r, sort_keys=True, separators=(",", ":")) for r in rows)
    SNAPSHOT.write_text("[\n" + ",\n".join(lines) + "\n]\n")
    print(f"{len(rows)} items written to {SNAPSHOT}")
