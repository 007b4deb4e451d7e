"""xAPI 1.0.3 statements: validation (naming the field that is wrong) and normalisation.

Accepts what Open edX's event-routing-backends really sends (through the ADL TinCanPython
client): ``account`` actors with the LMS root as homePage, ``evaluated`` / ``attempted`` /
``asked`` verbs from the ADL and acrossx vocabularies, object ids that are not URLs
(``block-v1:…``), and the non-standard ``object.objectType`` "GroupActivity" for a problem
with several questions. The per-question statements that accompany a GroupActivity (their
context parent is the group) are kept raw but ``ignored``: the group statement is the attempt,
counting each question again would multiply it.

Verbs and results map to ``ActivityKind``:

- answered / evaluated / attempted / submitted with ``result.success`` or a score → submit
  (``correct`` = success, ``score`` = result.score.scaled, or (raw-min)/(max-min));
  answered / evaluated without a result → submit with ``correct`` unknown; attempted without
  a result only says an attempt began (Open edX sends it before grading) → ignored;
- failed → submit, correct False; passed → submit, correct True; completed → submit when it
  carries success or a score, else ignored;
- asked (Open edX: a hint or the answer shown) → hint; ran / executed → run; stuck → stuck;
- an error in ``result.extensions`` (a key ending in error / error-type / exception, or
  compile-error / syntax-error) sets ``error``; on a run it makes the event a runtime error
  (compile error when the key says compile or syntax).
Any other verb, or an object that is not an activity, is stored ``ignored``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from .ingest import (
    FUTURE_SLACK,
    ActivityRef,
    ActorRef,
    IngestError,
    Item,
    Normalised,
    canonical,
    check_not_future,
    clean_text,
    finite_number,
    invalid_item,
    parse_timestamp,
    short,
)
from .model import ActivityKind

VERSION = "1.0.3"
VERSION_HEADER = "X-Experience-API-Version"
_ACCEPTED_VERSION = re.compile(r"^1\.0(\.\d{1,3})?$")

MAX_IRI = 2048
MAX_NAME = 500
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_IRI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_SHA1 = re.compile(r"^[0-9a-fA-F]{40}$")
_DURATION = re.compile(
    r"^P(?=\d|T\d)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
    r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$"
)

TOP_LEVEL = {
    "id",
    "actor",
    "verb",
    "object",
    "result",
    "context",
    "timestamp",
    "stored",
    "authority",
    "version",
    "attachments",
}
# Left out when telling a repeat from a conflict (xAPI 1.0.3 part 2, statement comparison).
NOT_COMPARED = ("authority", "stored", "timestamp", "version", "attachments")
ACTIVITY_TYPES = {"Activity", "GroupActivity"}
OBJECT_TYPES = ACTIVITY_TYPES | {"Agent", "Group", "StatementRef", "SubStatement"}

SUBMIT_VERBS = {"answered", "evaluated", "attempted", "submitted", "scored", "responded"}
RUN_VERBS = {"ran", "executed", "run"}
HINT_VERBS = {"asked", "requested-hint", "hinted"}
STUCK_VERBS = {"stuck"}
ERROR_KEYS = {
    "error",
    "error-type",
    "errortype",
    "error_type",
    "exception",
    "exception-type",
    "runtime-error",
    "compile-error",
    "syntax-error",
}


def check_version(value: str | None) -> None:
    """The ``X-Experience-API-Version`` header every xAPI request must carry (1.0.x)."""
    if value is None:
        raise IngestError(
            400,
            f"The {VERSION_HEADER} header is missing: xAPI requests must send it "
            f"(e.g. {VERSION_HEADER}: {VERSION}).",
            VERSION_HEADER,
        )
    if not _ACCEPTED_VERSION.match(value.strip()):
        raise IngestError(
            400,
            f"{VERSION_HEADER} {short(value, 20)!r} is not supported: Lifeline accepts "
            f"xAPI 1.0.x (send {VERSION}).",
            VERSION_HEADER,
        )


def check_statement_id(value: str | None) -> str:
    """The ``statementId`` of a PUT, as a lower-case UUID."""
    if value is None or value == "":
        raise IngestError(
            400, "PUT /xapi/statements needs the statementId query parameter.", "statementId"
        )
    if not _UUID.match(value):
        raise IngestError(400, "statementId must be a UUID.", "statementId")
    return value.lower()


class _Invalid(Exception):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field, self.reason = field, reason


def _obj(value: Any, name: str, required: bool = False) -> dict[str, Any] | None:
    if value is None:
        if required:
            raise _Invalid(name, "is required")
        return None
    if not isinstance(value, dict):
        raise _Invalid(name, "must be a JSON object")
    return value


def _text(value: Any, name: str, max_length: int = MAX_NAME) -> str:
    if not isinstance(value, str) or value == "":
        raise _Invalid(name, "must be a non-empty string")
    cleaned = clean_text(value, max_length)
    if cleaned is None:
        raise _Invalid(
            name, f"must be at most {max_length} characters of text (no NUL, valid Unicode)"
        )
    return cleaned


def _iri(value: Any, name: str) -> str:
    text = _text(value, name, MAX_IRI)
    if not _IRI.match(text):
        raise _Invalid(name, f"{short(text, 60)!r} is not an IRI (scheme:rest, no spaces)")
    return text


def _uuid(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _UUID.match(value):
        raise _Invalid(name, "must be a UUID (8-4-4-4-12 hexadecimal digits)")
    return value.lower()


def _bool(value: Any, name: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise _Invalid(name, "must be true or false")
    return value


def _number(value: Any, name: str) -> float | None:
    if value is None:
        return None
    number = finite_number(value)
    if number is None:
        raise _Invalid(name, "must be a finite number")
    return number


def _language_map(value: Any, name: str) -> None:
    found = _obj(value, name)
    if found is not None and not all(isinstance(v, str) for v in found.values()):
        raise _Invalid(name, "must be a language map (language tag → string)")


def _actor(value: Any, name: str, group_allowed: bool = True) -> ActorRef:
    actor = _obj(value, name, required=True)
    assert actor is not None
    kind = actor.get("objectType", "Agent")
    if kind not in (("Agent", "Group") if group_allowed else ("Agent",)):
        raise _Invalid(
            f"{name}.objectType", "must be Agent or Group" if group_allowed else "must be Agent"
        )
    if "name" in actor and not isinstance(actor["name"], str):
        raise _Invalid(f"{name}.name", "must be a string")
    present = [k for k in ("mbox", "mbox_sha1sum", "openid", "account") if k in actor]
    if kind == "Agent" and len(present) != 1:
        raise _Invalid(
            name, "an Agent must have exactly one of mbox, mbox_sha1sum, openid, account"
        )
    if kind == "Group":
        if len(present) > 1:
            raise _Invalid(name, "a Group may have at most one of mbox, mbox_sha1sum, …")
        members = actor.get("member")
        if not present and (not isinstance(members, list) or not members):
            raise _Invalid(f"{name}.member", "an anonymous Group must list its members")
        if members is not None and not isinstance(members, list):
            raise _Invalid(f"{name}.member", "must be an array of Agents")
        for i, member in enumerate(members or []):
            _actor(member, f"{name}.member[{i}]", group_allowed=False)
    keys: list[str] = []
    subs: list[str] = []
    emails: list[str] = []
    describe = ""
    if "mbox" in actor:
        mbox = _text(actor["mbox"], f"{name}.mbox")
        if not mbox.lower().startswith("mailto:") or "@" not in mbox:
            raise _Invalid(f"{name}.mbox", "must be mailto:address")
        email = mbox[7:].strip().lower()
        keys, emails, describe = [email, "mailto:" + email], [email], f"mbox {short(mbox)!r}"
    elif "mbox_sha1sum" in actor:
        sha1 = _text(actor["mbox_sha1sum"], f"{name}.mbox_sha1sum")
        if not _SHA1.match(sha1):
            raise _Invalid(f"{name}.mbox_sha1sum", "must be 40 hexadecimal digits")
        keys, describe = [sha1.lower()], f"mbox_sha1sum {sha1.lower()!r}"
    elif "openid" in actor:
        openid = _iri(actor["openid"], f"{name}.openid")
        keys, describe = [openid], f"openid {short(openid)!r}"
    elif "account" in actor:
        account = _obj(actor["account"], f"{name}.account", required=True)
        assert account is not None
        _iri(account.get("homePage"), f"{name}.account.homePage")
        account_name = _text(account.get("name"), f"{name}.account.name")
        keys, subs = [account_name], [account_name]
        describe = f"account.name {short(account_name)!r}"
    if kind == "Group":
        # A group is not one learner: kept, never mapped.
        return ActorRef(describe=f"(a Group{', ' + describe if describe else ''})")
    return ActorRef(describe=describe, keys=tuple(keys), subs=tuple(subs), emails=tuple(emails))


@dataclass(frozen=True)
class _Object:
    kind: str
    activity_id: str | None


def _object(value: Any) -> _Object:
    obj = _obj(value, "object", required=True)
    assert obj is not None
    kind = obj.get("objectType", "Activity")
    if not isinstance(kind, str) or kind not in OBJECT_TYPES:
        raise _Invalid(
            "object.objectType",
            f"{short(str(kind), 40)!r} is not one of {', '.join(sorted(OBJECT_TYPES))}",
        )
    if kind in ACTIVITY_TYPES:
        activity_id = _iri(obj.get("id"), "object.id")
        definition = _obj(obj.get("definition"), "object.definition")
        if definition is not None:
            _language_map(definition.get("name"), "object.definition.name")
            _language_map(definition.get("description"), "object.definition.description")
            if "type" in definition:
                _iri(definition["type"], "object.definition.type")
        return _Object(kind, activity_id)
    if kind == "StatementRef":
        _uuid(obj.get("id"), "object.id")
    elif kind in ("Agent", "Group"):
        _actor(obj, "object")
    return _Object(kind, None)


@dataclass(frozen=True)
class _Result:
    success: bool | None
    score: float | None
    error: str | None
    compile_error: bool


def _result(value: Any) -> _Result:
    result = _obj(value, "result")
    if result is None:
        return _Result(None, None, None, False)
    success = _bool(result.get("success"), "result.success")
    _bool(result.get("completion"), "result.completion")
    if "response" in result and not isinstance(result["response"], str):
        raise _Invalid("result.response", "must be a string")
    if "duration" in result and (
        not isinstance(result["duration"], str) or not _DURATION.match(result["duration"])
    ):
        raise _Invalid("result.duration", "must be an ISO 8601 duration such as PT1M30S")
    score = _score(_obj(result.get("score"), "result.score"))
    error, compile_error = _error(_obj(result.get("extensions"), "result.extensions"))
    return _Result(success, score, error, compile_error)


def _score(score: dict[str, Any] | None) -> float | None:
    if score is None:
        return None
    scaled = _number(score.get("scaled"), "result.score.scaled")
    raw = _number(score.get("raw"), "result.score.raw")
    low = _number(score.get("min"), "result.score.min")
    high = _number(score.get("max"), "result.score.max")
    if scaled is not None and not -1 <= scaled <= 1:
        raise _Invalid("result.score.scaled", f"{scaled:g} is outside -1..1")
    if low is not None and high is not None and low >= high:
        raise _Invalid("result.score.min", "must be less than result.score.max")
    if raw is not None:
        if low is not None and raw < low:
            raise _Invalid("result.score.raw", f"{raw:g} is below result.score.min")
        if high is not None and raw > high:
            raise _Invalid("result.score.raw", f"{raw:g} is above result.score.max")
    if scaled is None and None not in (raw, low, high):
        assert raw is not None and low is not None and high is not None
        scaled = (raw - low) / (high - low)
    return None if scaled is None else min(1.0, max(0.0, scaled))


def _last_segment(iri: str) -> str:
    return re.split(r"[/#:]", iri.rstrip("/#"))[-1].lower()


def _error(extensions: dict[str, Any] | None) -> tuple[str | None, bool]:
    for key, value in (extensions or {}).items():
        segment = _last_segment(key) if isinstance(key, str) else ""
        if segment not in ERROR_KEYS:
            continue
        if isinstance(value, dict):
            value = value.get("type") or value.get("name") or value.get("message")
        text = clean_text(value, 10_000) if isinstance(value, str) else None
        if text:
            return text.strip()[:200] or None, "compile" in segment or "syntax" in segment
    return None, False


def _part_of_group(context: dict[str, Any] | None) -> bool:
    activities = (context or {}).get("contextActivities")
    parents = activities.get("parent") if isinstance(activities, dict) else None
    if isinstance(parents, dict):
        parents = [parents]
    return isinstance(parents, list) and any(
        isinstance(p, dict) and p.get("objectType") == "GroupActivity" for p in parents
    )


def _context(value: Any) -> dict[str, Any] | None:
    context = _obj(value, "context")
    if context is None:
        return None
    if "registration" in context:
        _uuid(context["registration"], "context.registration")
    _obj(context.get("extensions"), "context.extensions")
    activities = _obj(context.get("contextActivities"), "context.contextActivities")
    for key, entry in (activities or {}).items():
        entries = entry if isinstance(entry, list) else [entry]
        for i, activity in enumerate(entries):
            where = f"context.contextActivities.{short(str(key), 20)}[{i}]"
            found = _obj(activity, where, required=True)
            assert found is not None
            _iri(found.get("id"), where + ".id")
    return context


def _kind(
    verb: str, success: bool | None, score: float | None, error: str | None, compile_error: bool
) -> tuple[ActivityKind | None, bool | None, str]:
    """The kind and correctness a verb and its result mean, or None and why not."""
    graded = success is not None or score is not None
    if verb in SUBMIT_VERBS:
        if verb == "attempted" and not graded:
            return None, None, "attempted without a result (the graded statement counts)"
        return ActivityKind.SUBMIT, success, ""
    if verb == "failed":
        return ActivityKind.SUBMIT, False if success is None else success, ""
    if verb == "passed":
        return ActivityKind.SUBMIT, True if success is None else success, ""
    if verb == "completed":
        if graded:
            return ActivityKind.SUBMIT, success, ""
        return None, None, "completed without success or score"
    if verb in RUN_VERBS:
        if error:
            kind = ActivityKind.COMPILE_ERROR if compile_error else ActivityKind.RUNTIME_ERROR
            return kind, None, ""
        return ActivityKind.RUN, None, ""
    if verb in HINT_VERBS:
        return ActivityKind.HINT, None, ""
    if verb in STUCK_VERBS:
        return ActivityKind.STUCK, None, ""
    return None, None, f"verb {verb!r} is not an exercise attempt Lifeline uses"


def comparable(statement: Any) -> str:
    """The text two statements with one id must share to be the same statement."""
    if not isinstance(statement, dict):
        return canonical(statement)
    stripped = {k: v for k, v in statement.items() if k not in NOT_COMPARED}
    obj = stripped.get("object")
    if isinstance(obj, dict) and "definition" in obj:
        stripped["object"] = {k: v for k, v in obj.items() if k != "definition"}
    return canonical(stripped)


def compare_stored(body: str) -> str:
    try:
        return comparable(json.loads(body))
    except ValueError:
        return body


# -- the fast path -----------------------------------------------------------------------------
#
# ``parse_statement`` first tries ``_fast``: the same checks, for the shapes senders really use
# (an Agent with an account or mbox, an Activity or GroupActivity, no stored / authority /
# attachments), without the intermediate objects, with what depends only on a string kept in
# small caches, and the compare text cut out of the body instead of encoded again. Anything
# unusual or invalid makes it give up (None) before it has decided anything: the full parse
# below then gives the answer, its field and reason, as it always has.

_FAST_KEYS = frozenset(
    ("id", "actor", "verb", "object", "result", "context", "timestamp", "version")
)
_OBJECT_KEYS = frozenset(("objectType", "id", "definition"))
# Each cache holds at most _CACHE_SIZE entries (emptied when full: a course's learners and
# exercises repeat from batch to batch) of keys at most _CACHE_KEY characters long (a few MB
# at worst, whatever is sent).
_CACHE_SIZE = 4096
_CACHE_KEY = 300
_ACCOUNTS: dict[tuple[str, str], ActorRef] = {}  # (homePage, name) of a valid account Agent
_MBOXES: dict[str, ActorRef] = {}  # mbox of a valid mbox Agent
_ACTIVITIES: dict[str, ActivityRef] = {}  # a valid activity id
_VERBS: dict[str, str] = {}  # a valid verb id: its last segment
_IRIS: dict[str, bool] = {}  # valid IRIs (object.definition.type, context activity ids)
_STAMPS: dict[str, dt.datetime] = {}  # a valid timestamp, parsed
_FUTURE_SLACK = FUTURE_SLACK
_encode_str = json.encoder.encode_basestring_ascii  # what ``canonical`` does to a str


def _remember(cache: dict[Any, Any], key: Any, value: Any, length: int) -> None:
    if length > _CACHE_KEY:
        return
    if len(cache) >= _CACHE_SIZE:
        cache.clear()
    cache[key] = value


def _fast_actor(actor: Any) -> ActorRef | None:
    if type(actor) is not dict or actor.get("objectType", "Agent") != "Agent":
        return None
    if "name" in actor and type(actor["name"]) is not str:
        return None
    if "account" in actor:
        if "mbox" in actor or "mbox_sha1sum" in actor or "openid" in actor:
            return None
        account = actor["account"]
        if type(account) is not dict:
            return None
        home, name = account.get("homePage"), account.get("name")
        if type(home) is not str or type(name) is not str:
            return None
        key = (home, name)
        ref = _ACCOUNTS.get(key)
        if ref is None:
            # As _actor: a valid homePage IRI, a name of text.
            if not _fast_iri(home, "actor.account.homePage"):
                return None
            if name == "" or clean_text(name, MAX_NAME) is None:
                return None
            ref = ActorRef(
                describe=f"account.name {short(name)!r}", keys=(name,), subs=(name,), emails=()
            )
            _remember(_ACCOUNTS, key, ref, len(home) + len(name))
        return ref
    if "mbox" in actor:
        if "mbox_sha1sum" in actor or "openid" in actor:
            return None
        mbox = actor["mbox"]
        if type(mbox) is not str:
            return None
        ref = _MBOXES.get(mbox)
        if ref is None:
            ref = _actor(actor, "actor")
            _remember(_MBOXES, mbox, ref, len(mbox))
        return ref
    return None


def _fast_iri(value: Any, name: str) -> bool:
    if type(value) is not str:
        return False
    if value not in _IRIS:
        _iri(value, name)
        _remember(_IRIS, value, True, len(value))
    return True


def _fast_language_map(value: Any) -> bool:
    if value is None:
        return True
    if type(value) is not dict:
        return False
    for text in value.values():  # noqa: SIM110 (a loop: no generator per call)
        if type(text) is not str:
            return False
    return True


def _fast_context(context: dict[str, Any]) -> bool | None:
    """Whether the statement is one question of a GroupActivity; None to give up."""
    if "registration" in context:
        registration = context["registration"]
        if type(registration) is not str or not _UUID.match(registration):
            return None
    extensions = context.get("extensions")
    if extensions is not None and type(extensions) is not dict:
        return None
    activities = context.get("contextActivities")
    if activities is None:
        return False
    if type(activities) is not dict:
        return None
    group = False
    for key, entry in activities.items():
        if type(entry) is not list:
            return None  # a single object: the full parse
        for activity in entry:
            if type(activity) is not dict or not _fast_iri(activity.get("id"), "context"):
                return None
            if key == "parent" and activity.get("objectType") == "GroupActivity":
                group = True
    return group


def _fast(
    value: dict[str, Any], index: int, received_at: dt.datetime, statement_id: str | None
) -> Item | None:
    """The Item for an ordinary valid statement, or None (the full parse decides)."""
    for key in value:
        if key not in _FAST_KEYS:
            return None
    reply_id = statement_id
    if "id" in value:
        given = value["id"]
        if type(given) is not str or not _UUID.match(given):
            return None
        reply_id = given.lower()
        if statement_id is not None and reply_id != statement_id:
            return None
    if "version" in value:
        version = value["version"]
        if type(version) is not str or not version.startswith("1.0"):
            return None
    actor = _fast_actor(value.get("actor"))
    if actor is None:
        return None

    verb = value.get("verb")
    if type(verb) is not dict:
        return None
    verb_id = verb.get("id")
    if type(verb_id) is not str:
        return None
    segment = _VERBS.get(verb_id)
    if segment is None:
        segment = _last_segment(_iri(verb_id, "verb.id"))
        _remember(_VERBS, verb_id, segment, len(verb_id))
    if not _fast_language_map(verb.get("display")):
        return None

    obj = value.get("object")
    if type(obj) is not dict:
        return None
    object_type = obj.get("objectType", "Activity")
    if object_type != "Activity" and object_type != "GroupActivity":
        return None
    activity_id = obj.get("id")
    if type(activity_id) is not str:
        return None
    activity = _ACTIVITIES.get(activity_id)
    if activity is None:
        _iri(activity_id, "object.id")
        activity = ActivityRef(
            describe=f"object.id {short(activity_id)!r}", activity_id=activity_id, iri=True
        )
        _remember(_ACTIVITIES, activity_id, activity, len(activity_id))
    definition = obj.get("definition")
    if definition is not None:
        if type(definition) is not dict:
            return None
        if not _fast_language_map(definition.get("name")) or not _fast_language_map(
            definition.get("description")
        ):
            return None
        if "type" in definition and not _fast_iri(definition["type"], "object.definition.type"):
            return None

    success: bool | None = None
    score: float | None = None
    error: str | None = None
    compile_error = False
    result = value.get("result")
    if result is not None:
        if type(result) is not dict:
            return None
        success = result.get("success")
        if success is not None and type(success) is not bool:
            return None
        completion = result.get("completion")
        if completion is not None and type(completion) is not bool:
            return None
        if "response" in result and type(result["response"]) is not str:
            return None
        if "duration" in result:
            duration = result["duration"]
            if type(duration) is not str or not _DURATION.match(duration):
                return None
        found = result.get("score")
        if found is not None:
            if type(found) is not dict:
                return None
            score = _score(found)
        extensions = result.get("extensions")
        if extensions is not None:
            if type(extensions) is not dict:
                return None
            if extensions:
                error, compile_error = _error(extensions)

    group = False
    context = value.get("context")
    if context is not None:
        if type(context) is not dict:
            return None
        part = _fast_context(context)
        if part is None:
            return None
        group = part

    occurred_at = received_at
    stamp = None
    if "timestamp" in value:
        stamp = value["timestamp"]
        if type(stamp) is not str:
            return None
        parsed = _STAMPS.get(stamp)
        if parsed is None:
            parsed = parse_timestamp(stamp)
            if parsed is None:
                return None
            _remember(_STAMPS, stamp, parsed, len(stamp))
        if parsed > received_at + _FUTURE_SLACK:
            return None
        occurred_at = parsed

    # Valid: from here on nothing gives up.
    if reply_id is None:
        reply_id = str(uuid.uuid4())
    statement = {**value, "id": reply_id}
    body = canonical(statement)
    # The compare text, cut out of the body. Its keys are sorted: actor, context, id, object,
    # result, timestamp, verb, version (each but actor, id, object, verb optional); the compare
    # text leaves out the timestamp and version (NOT_COMPARED) and the object's definition.
    verb_entry = ',"verb":' + canonical(verb)
    end = len(body) - 1 - len(verb_entry)
    if "version" in value:
        end -= 11 + len(_encode_str(value["version"]))  # ',"version":'
    if stamp is not None:
        end -= 13 + len(_encode_str(stamp))  # ',"timestamp":'
    if "definition" not in obj:
        compare = body[:end] + verb_entry + "}"
    elif obj.keys() <= _OBJECT_KEYS:
        # '"object":{"definition":D,' + the rest, with no key sorting before "definition".
        stripped = canonical({k: v for k, v in obj.items() if k != "definition"})
        object_end = end - (10 + len(canonical(result)) if "result" in value else 0)
        object_start = object_end - 24 - len(canonical(definition)) - len(stripped)
        compare = (
            body[:object_start] + ',"object":' + stripped + body[object_end:end] + verb_entry + "}"
        )
    else:
        compare = comparable(statement)
    item = Item(
        index=index,
        external_id=reply_id,
        body=body,
        compare=compare,
        reply_id=reply_id,
        actor=actor,
        activity=activity,
    )
    if group:
        item.note = "one question of a multi-question problem (its GroupActivity counts)"
        return item
    kind, correct, why_not = _kind(segment, success, score, error, compile_error)
    if kind is None:
        item.note = why_not
        return item
    item.event = Normalised(
        kind=kind, occurred_at=occurred_at, correct=correct, score=score, error=error
    )
    return item


def parse_statement(
    value: Any, index: int, received_at: dt.datetime, statement_id: str | None = None
) -> Item:
    """One statement as an ``Item``: invalid ones name the field and why, never raise.

    ``statement_id`` is the PUT's ``statementId``; a statement without an id gets a new UUID.
    """
    if type(value) is dict:
        try:
            fast = _fast(value, index, received_at, statement_id)
        except _Invalid:
            fast = None
        if fast is not None:
            return fast
    if not isinstance(value, dict):
        return invalid_item(index, value, "statement", "must be a JSON object")
    reply_id = statement_id
    try:
        if "id" in value:
            reply_id = _uuid(value["id"], "id")
            if statement_id is not None and reply_id != statement_id:
                raise _Invalid("id", "differs from the statementId query parameter")
        unknown = sorted(k for k in value if k not in TOP_LEVEL)
        if unknown:
            raise _Invalid(short(str(unknown[0]), 40), "is not a statement property in xAPI 1.0.3")
        if "version" in value and (
            not isinstance(value["version"], str) or not value["version"].startswith("1.0")
        ):
            raise _Invalid("version", "must be 1.0.x")
        actor = _actor(value.get("actor"), "actor")
        verb = _obj(value.get("verb"), "verb", required=True)
        assert verb is not None
        verb_id = _iri(verb.get("id"), "verb.id")
        _language_map(verb.get("display"), "verb.display")
        obj = _object(value.get("object"))
        result = _result(value.get("result"))
        context = _context(value.get("context"))
        if "attachments" in value and not isinstance(value["attachments"], list):
            raise _Invalid("attachments", "must be an array")
        occurred_at = received_at
        if "timestamp" in value:
            stamp = value["timestamp"]
            parsed = parse_timestamp(stamp) if isinstance(stamp, str) else None
            if parsed is None:
                raise _Invalid("timestamp", "must be an ISO 8601 date and time")
            future = check_not_future(parsed, received_at)
            if future:
                raise _Invalid("timestamp", future)
            occurred_at = parsed
    except _Invalid as exc:
        return invalid_item(index, value, exc.field, exc.reason, reply_id)

    reply_id = reply_id or str(uuid.uuid4())
    statement = {**value, "id": reply_id}
    body = canonical(statement)
    item = Item(
        index=index,
        external_id=reply_id,
        body=body,
        compare=comparable(statement),
        reply_id=reply_id,
        actor=actor,
    )
    if obj.activity_id is None:
        item.note = f"object is a {obj.kind}, not an exercise activity"
        return item
    item.activity = ActivityRef(
        describe=f"object.id {short(obj.activity_id)!r}", activity_id=obj.activity_id, iri=True
    )
    if _part_of_group(context):
        item.note = "one question of a multi-question problem (its GroupActivity counts)"
        return item
    kind, correct, why_not = _kind(
        _last_segment(verb_id), result.success, result.score, result.error, result.compile_error
    )
    if kind is None:
        item.note = why_not
        return item
    item.event = Normalised(
        kind=kind,
        occurred_at=occurred_at,
        correct=correct,
        score=result.score,
        error=result.error,
    )
    return item


def reparse(body: str, received_at: dt.datetime) -> Item | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return parse_statement(value, 0, received_at)
