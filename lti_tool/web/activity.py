"""Activity in: the xAPI statements resource, the ProgSnap2 and SDK endpoints, and the
instructor's page for credentials and mappings.

The API endpoints take no cookies: xAPI and ProgSnap2 use a course's Basic credentials, the
SDK a short-lived bearer token, so they are exempt from the CSRF check (``api`` blueprint).

Batches (an array of statements, rows or events) never fail as a whole for one odd item: the
valid ones are stored, each invalid one is kept raw with its reason, and the answer is 200
with a result per item. This is what an LRS forwarder needs: Open edX retries a rejected
batch whole, so one bad statement would otherwise block every statement after it forever.
For xAPI the 200 body stays what the spec says (the array of statement ids, ``null`` for an
item without a usable id); ``?detail=1`` answers ``{"ids", "results", "counts"}`` instead, and
the ``X-Lifeline-Counts`` header always sums the statuses. A single statement (PUT, or POST
of one object) is strict: 400 naming the field, 409 for a conflicting repeat.

Where the items go depends on ``ingest_mode``. "stream" (production): the request is parsed
and validated here, then accepted into the Redis stream in one round trip
(``activity.pipeline.accept``: rate limit, repeats and conflicts, append) and answered at once;
a new valid item is ``queued``, and the worker stores and evaluates it moments later. If
Redis cannot take the request, it is stored here instead, as in "sync" mode, where every
request stores and evaluates its items in its own transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from ..activity import credentials, ingest, pipeline, progsnap2, sdk, xapi
from ..activity.credentials import CredentialInfo, SdkIdentity, SdkTokenError
from ..activity.ingest import CONFLICT, INVALID, IngestError, Item, Scope, StoreOutcome
from ..config import Settings
from ..courses import Exercise
from ..db import utcnow
from ..launches import ActiveLaunch, load
from ..lti.launch import Launch
from ..lti.roles import Audience
from ..services import Services, current_services
from .auth import LaunchContext, launch_context
from .transaction import db_session

log = logging.getLogger(__name__)
api = Blueprint("activity_api", __name__)
bp = Blueprint("activity", __name__, url_prefix="/l/<launch_id>/course/activity")

SDK_ENDPOINT = "activity_api.sdk_events"
CORS_PREFLIGHT = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "7200",
}


# -- responses ------------------------------------------------------------------------------


def error_payload(status: int, message: str, field: str | None = None) -> dict[str, Any]:
    """The JSON body of a refused API request (also answered by ``fastpath``)."""
    payload: dict[str, Any] = {"error": _ERROR_CODES.get(status, "error"), "status": status}
    payload["detail"] = message
    if field:
        payload["field"] = field
    return payload


def _error_json(
    status: int, message: str, field: str | None = None, retry_after: int | None = None
) -> Response:
    response = jsonify(error_payload(status, message, field))
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    if status == 401 and request.endpoint != SDK_ENDPOINT:
        response.headers["WWW-Authenticate"] = 'Basic realm="Lifeline activity"'
    return response


_ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@api.errorhandler(IngestError)
def _ingest_error(exc: IngestError) -> Response:
    return _error_json(exc.status, exc.message, exc.field, exc.retry_after)


@api.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        return _error_json(413, _too_large_message())
    return _error_json(status, exc.description or exc.name)


@api.after_request
def _api_headers(response: Response) -> Response:
    if request.path.startswith("/xapi/"):
        response.headers[xapi.VERSION_HEADER] = xapi.VERSION
    if request.endpoint == SDK_ENDPOINT:
        # The exercise page may live on another origin; the bearer token is the credential,
        # never a cookie, so any origin may call without credentials.
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    response.headers["Cache-Control"] = "no-store"
    return response


def _too_large_message() -> str:
    limits = ingest.LIMITS
    return (
        f"The request body is larger than {limits.max_body // 1024} KiB: send at most "
        f"{limits.max_batch} items per request, in several requests."
    )


# -- request input ----------------------------------------------------------------------------


def _read_json() -> Any:
    limit = ingest.LIMITS.max_body
    if request.content_length is not None and request.content_length > limit:
        raise IngestError(413, _too_large_message())
    # One byte over the limit: a chunked body that is too large reads as limit + 1 bytes.
    request.max_content_length = limit + 1
    return parse_json_body(request.get_data(cache=False))


def parse_json_body(data: bytes) -> Any:
    """A request body read whole (at most one byte over the limit) as JSON, or IngestError."""
    if len(data) > ingest.LIMITS.max_body:
        raise IngestError(413, _too_large_message())
    if not data.strip():
        raise IngestError(400, "The request body is empty: send JSON.", "body")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise IngestError(400, "The request body is not valid JSON (UTF-8).", "body") from None


def _check_batch(items: list[Any], what: str) -> None:
    if len(items) > ingest.LIMITS.max_batch:
        raise IngestError(
            413,
            f"{len(items)} {what} in one request: send at most {ingest.LIMITS.max_batch} "
            "per request.",
        )


def _credential() -> CredentialInfo:
    auth = request.authorization
    if auth is None or auth.type != "basic" or not auth.username or auth.password is None:
        raise IngestError(
            401,
            "Send the key and secret of one of this course's activity credentials "
            "(HTTP Basic); an instructor creates them on the course's Activity page.",
        )
    found = credentials.authenticate_cached(db_session, auth.username, auth.password)
    if found is None:
        raise IngestError(401, "Unknown or revoked credentials.")
    return found


def too_many(limit: int, wait: int) -> IngestError:
    return IngestError(
        429,
        f"More than {limit} requests in a minute for this credential: slow down and "
        f"retry in {wait} s.",
        retry_after=wait,
    )


def _rate_limit(bucket: str, limit: int) -> None:
    wait = ingest.rate_limited(current_services().redis, bucket, limit, time.time())
    if wait is not None:
        raise too_many(limit, wait)


Outcome = StoreOutcome | pipeline.Accepted


def _ingest(
    scope: Scope,
    source: str,
    items: Sequence[Item],
    *,
    now: dt.datetime,
    rate: tuple[str, int],
    credential_id: int | None = None,
    compare: Callable[[str], str] | None = None,
    strict: bool = False,
) -> Outcome:
    """Accept the items into the stream ("stream" mode), or store them here ("sync" mode, or
    when Redis cannot take them: losing events is worse than a slower request)."""
    services = current_services()
    if services.settings.ingest_mode == "stream":
        try:
            return stream_accept(
                services,
                scope,
                source,
                items,
                now=now,
                rate=rate,
                credential_id=credential_id,
                strict=strict,
            )
        except redis.RedisError:
            log.warning("Redis cannot take activity: stored in the request", exc_info=True)
    else:
        _rate_limit(*rate)
    db = db_session()
    if credential_id is not None:
        credentials.touch(db, [credential_id], now)
    # Last before the commit: storing ends by adding to the course's peer statistics, whose
    # rows stay locked until the commit.
    return ingest.store(db, scope, source, items, compare=compare, now=now)


def stream_accept(
    services: Services,
    scope: Scope,
    source: str,
    items: Sequence[Item],
    *,
    now: dt.datetime,
    rate: tuple[str, int],
    credential_id: int | None = None,
    strict: bool = False,
) -> pipeline.Accepted:
    """``pipeline.accept`` with this app's Redis and settings (shared with ``fastpath``): over
    the rate limit is a 429 ``IngestError``; raises ``redis.RedisError`` when Redis cannot take
    the items."""
    try:
        return pipeline.accept(
            services.redis,
            scope,
            source,
            items,
            now=now,
            rate=rate,
            credential_id=credential_id,
            strict=strict,
            partitions=services.settings.stream_partitions,
        )
    except pipeline.RateLimited as exc:
        raise too_many(rate[1], exc.retry_after) from None


def _single(outcome: Outcome) -> None:
    """A lone statement / row / event is strict: invalid is a 400, a conflict a 409."""
    result = outcome.results[0]
    if result.status == INVALID:
        raise IngestError(400, result.reason or "Invalid.", result.field)
    if result.status == CONFLICT:
        raise IngestError(409, result.reason or "A different item has this id.", "id")


def counts_header(outcome: Outcome) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(outcome.counts().items()))


def _batch_json(outcome: Outcome) -> Response:
    response = jsonify(
        {"results": [r.as_json() for r in outcome.results], "counts": outcome.counts()}
    )
    response.headers["X-Lifeline-Counts"] = counts_header(outcome)
    return response


# -- xAPI ---------------------------------------------------------------------------------------


@api.get("/xapi/about")
def xapi_about() -> Response:
    return jsonify({"version": [xapi.VERSION, "1.0.2", "1.0.1", "1.0.0"]})


@api.post("/xapi/statements")
def post_statements() -> Response:
    xapi.check_version(request.headers.get(xapi.VERSION_HEADER))
    credential = _credential()
    if "method" in request.args:
        raise IngestError(
            400, "The xAPI alternate request syntax (?method=) is not supported.", "method"
        )
    if request.mimetype.startswith("multipart/"):
        raise IngestError(
            415, "Statements with attachments (multipart/mixed) are not supported: send JSON."
        )
    body = _read_json()
    now = utcnow()
    items, single = statement_items(body, now)
    outcome = _ingest(
        Scope(credential.platform_id, credential.course_id),
        "xapi",
        items,
        now=now,
        strict=single,
        **_credential_options(credential),
    )
    detail = request.args.get("detail", "").lower() in DETAIL_VALUES
    return _answer(statements_answer(outcome, single=single, put=False, detail=detail))


DETAIL_VALUES = frozenset({"1", "true", "yes"})


def statement_items(
    body: Any, now: dt.datetime, statement_id: str | None = None, put: bool = False
) -> tuple[list[Item], bool]:
    """The statements of a POST (``put``: PUT with its ``statementId``) body, and whether it is
    a single statement (strict). A body refused whole (or an invalid single statement) raises
    ``IngestError``; a batch keeps its invalid items. Shared with ``fastpath``."""
    if isinstance(body, dict):
        item = xapi.parse_statement(body, 0, now, statement_id)
        if item.invalid:
            raise IngestError(400, item.note or "Invalid statement.", item.invalid_field)
        return [item], True
    if put:
        raise IngestError(400, "PUT takes one statement object.", "statement")
    if not isinstance(body, list):
        raise IngestError(
            400, "The body must be a statement object or an array of statements.", "body"
        )
    _check_batch(body, "statements")
    return [xapi.parse_statement(s, i, now) for i, s in enumerate(body)], False


def statements_answer(
    outcome: Outcome, *, single: bool, put: bool, detail: bool
) -> tuple[int, Any, str | None]:
    """The answer of an accepted POST / PUT of statements: status, JSON payload (None: no
    body), ``X-Lifeline-Counts`` (None: not sent). A single statement that was not accepted
    raises ``IngestError`` (400, 409). Shared with ``fastpath``."""
    if single:
        _single(outcome)
    if put:
        return 204, None, counts_header(outcome)
    if single:
        return 200, [outcome.results[0].id], None
    ids = [r.id for r in outcome.results]
    if detail:
        payload: Any = {
            "ids": ids,
            "results": [r.as_json() for r in outcome.results],
            "counts": outcome.counts(),
        }
    else:
        payload = ids
    return 200, payload, counts_header(outcome)


def _answer(answer: tuple[int, Any, str | None]) -> Response:
    status, payload, counts = answer
    response = Response(status=status) if payload is None else jsonify(payload)
    if counts is not None:
        response.headers["X-Lifeline-Counts"] = counts
    return response


def credential_rate(credential: CredentialInfo, settings: Settings) -> tuple[str, int]:
    """The rate-limit bucket of a Basic credential and its requests per minute
    (``LIFELINE_ACTIVITY_RATE_LIMIT``)."""
    limit = settings.activity_rate_limit or ingest.LIMITS.per_credential_per_minute
    return f"cred:{credential.id}", limit


def _credential_options(credential: CredentialInfo) -> dict[str, Any]:
    return {
        "rate": credential_rate(credential, current_services().settings),
        "credential_id": credential.id,
        "compare": xapi.compare_stored,
    }


@api.put("/xapi/statements")
def put_statement() -> Response:
    xapi.check_version(request.headers.get(xapi.VERSION_HEADER))
    credential = _credential()
    statement_id = xapi.check_statement_id(request.args.get("statementId"))
    body = _read_json()
    now = utcnow()
    items, _ = statement_items(body, now, statement_id, put=True)
    scope = Scope(credential.platform_id, credential.course_id)
    outcome = _ingest(scope, "xapi", items, now=now, strict=True, **_credential_options(credential))
    return _answer(statements_answer(outcome, single=True, put=True, detail=False))


# -- ProgSnap2 ----------------------------------------------------------------------------------


@api.post("/api/activity/progsnap2")
def progsnap2_rows() -> Response:
    credential = _credential()
    body = _read_json()
    scope = Scope(credential.platform_id, credential.course_id)
    now = utcnow()
    options = {**_credential_options(credential), "compare": progsnap2.compare_stored}
    if isinstance(body, dict):
        item = progsnap2.parse_row(body, 0, now)
        if item.invalid:
            raise IngestError(400, item.note or "Invalid row.", item.invalid_field)
        outcome = _ingest(scope, progsnap2.SOURCE, [item], now=now, strict=True, **options)
        _single(outcome)
        return _batch_json(outcome)
    if not isinstance(body, list):
        raise IngestError(400, "The body must be an array of ProgSnap2 row objects.", "body")
    _check_batch(body, "rows")
    items = [progsnap2.parse_row(row, i, now) for i, row in enumerate(body)]
    return _batch_json(_ingest(scope, progsnap2.SOURCE, items, now=now, **options))


# -- the page SDK ---------------------------------------------------------------------------------


def _sdk_identity(body: Any) -> SdkIdentity:
    header = request.headers.get("Authorization", "")
    token = ""
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
    elif not header and isinstance(body, dict) and isinstance(body.get("token"), str):
        token = body["token"]  # navigator.sendBeacon cannot set headers
    if not token:
        raise IngestError(401, "Send the SDK token as Authorization: Bearer <token>.")
    try:
        identity = credentials.read_sdk_token(current_services().settings.secret_key, token)
    except SdkTokenError as exc:
        raise IngestError(401, exc.message) from None
    if not credentials.check_sdk_identity(db_session(), identity):
        raise IngestError(401, "The SDK token's learner or exercise no longer exists.")
    return identity


@api.route("/api/activity/sdk", methods=["POST", "OPTIONS"], endpoint="sdk_events")
def sdk_events() -> Response:
    if request.method == "OPTIONS":
        response = Response(status=204)
        response.headers.update(CORS_PREFLIGHT)
        return response
    body = _read_json()
    identity = _sdk_identity(body)
    rate = (f"sdk:{identity.course_id}:{identity.learner_id}", ingest.LIMITS.per_learner_per_minute)
    now = utcnow()
    single = False
    skew = sdk.clock_skew(None, now)
    if isinstance(body, dict) and "events" in body:
        events = body["events"]
        if not isinstance(events, list):
            raise IngestError(400, "events must be an array of SDK events.", "events")
        skew = sdk.clock_skew(body.get("sent_at"), now)
    elif isinstance(body, list):
        events = body
    elif isinstance(body, dict):
        events, single = [body], True
    else:
        raise IngestError(400, "The body must be {events: [...]} or an event.", "body")
    _check_batch(events, "events")
    items = [
        sdk.parse_event(e, i, identity.learner_id, identity.exercise_id, now, skew)
        for i, e in enumerate(events)
    ]
    if single and items[0].invalid:
        raise IngestError(400, items[0].note or "Invalid event.", items[0].invalid_field)
    scope = Scope(identity.platform_id, identity.course_id)
    outcome = _ingest(scope, sdk.SOURCE, items, now=now, rate=rate, strict=single)
    if single:
        _single(outcome)
    return _batch_json(outcome)


def sdk_token(launch: Launch | ActiveLaunch | None) -> str:
    """The SDK token for a learner's launch into an exercise ("" when there is none): what the
    learner landing page exposes as ``data-sdk-token`` for ``Lifeline.init({token})``."""
    if launch is None:
        return ""
    active = (
        launch
        if isinstance(launch, ActiveLaunch)
        else load(current_services().redis, launch.launch_id)
    )
    if active is None:
        return ""
    record, validated = active.record, active.launch
    if (
        validated.audience is not Audience.LEARNER
        or validated.is_deep_linking
        or record.course_id is None
        or record.exercise_id is None
    ):
        return ""
    identity = SdkIdentity(
        validated.registration_id, record.course_id, record.person_id, record.exercise_id
    )
    return credentials.issue_sdk_token(current_services().settings.secret_key, identity)


api.add_app_template_global(sdk_token, "sdk_token")


# -- the instructor's page ------------------------------------------------------------------------


def _context(launch_id: str) -> LaunchContext:
    return launch_context(db_session(), launch_id, Audience.INSTRUCTOR)


def _page(ctx: LaunchContext, status: int = 200, **extra: Any) -> tuple[str, int]:
    db = db_session()
    course_id = ctx.course.id
    base = current_services().settings.base_url
    exercises = list(
        db.scalars(select(Exercise).where(Exercise.course_id == course_id).order_by(Exercise.id))
    )
    return render_template(
        "instructor/activity.html",
        ctx=ctx,
        launch=ctx.active.launch,
        credentials=credentials.listing(db, course_id),
        counts=ingest.status_counts(db, course_id),
        problems=ingest.recent_problems(db, course_id),
        actor_mappings=ingest.actor_mappings(db, course_id),
        exercise_mappings=ingest.exercise_mappings(db, course_id),
        exercises=exercises,
        xapi_endpoint=f"{base}/xapi/",
        progsnap2_endpoint=f"{base}/api/activity/progsnap2",
        sdk_url=f"{base}/static/lifeline.js",
        limits=ingest.LIMITS,
        **extra,
    ), status


@bp.get("")
def page(launch_id: str) -> tuple[str, int]:
    return _page(_context(launch_id))


@bp.post("/credentials")
def create_credential(launch_id: str) -> tuple[str, int]:
    ctx = _context(launch_id)
    try:
        created = credentials.create(
            db_session(), ctx.course, request.form.get("label", ""), ctx.person.id
        )
    except credentials.CredentialError as exc:
        return _page(ctx, 400, error=str(exc))
    return _page(ctx, new_key=created.credential.key, new_secret=created.secret)


@bp.post("/credentials/<int:credential_id>/revoke")
def revoke_credential(launch_id: str, credential_id: int) -> BaseResponse:
    ctx = _context(launch_id)
    if not credentials.revoke(db_session(), ctx.course.id, credential_id):
        abort(404, description="No such live credential in this course.")
    return redirect(url_for(".page", launch_id=launch_id, revoked=1), code=303)


def _uploaded_text() -> str:
    upload = request.files.get("csv_file")
    if upload is not None and upload.filename:
        raw: bytes = upload.read(ingest.LIMITS.max_body + 1)
        if len(raw) > ingest.LIMITS.max_body:
            abort(413, description="The CSV file is too large: split it.")
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            abort(400, description="The CSV file is not UTF-8 text.")
    return request.form.get("csv_text", "")


@bp.post("/actors")
def upload_actors(launch_id: str) -> tuple[str, int]:
    ctx = _context(launch_id)
    result = ingest.upload_actor_mappings(db_session(), ctx.course.id, _uploaded_text())
    return _page(ctx, 200 if result.saved or not result.problems else 400, upload=result)


@bp.post("/exercises")
def upload_exercises(launch_id: str) -> tuple[str, int]:
    ctx = _context(launch_id)
    result = ingest.upload_exercise_mappings(db_session(), ctx.course.id, _uploaded_text())
    return _page(ctx, 200 if result.saved or not result.problems else 400, upload=result)


@bp.post("/mappings/<kind>/<int:mapping_id>/delete")
def delete_mapping(launch_id: str, kind: str, mapping_id: int) -> BaseResponse:
    ctx = _context(launch_id)
    if kind not in ("actor", "exercise") or not ingest.delete_mapping(
        db_session(), ctx.course.id, kind, mapping_id
    ):
        abort(404, description="No such mapping in this course.")
    return redirect(url_for(".page", launch_id=launch_id), code=303)


@bp.post("/reprocess")
def reprocess(launch_id: str) -> tuple[str, int]:
    ctx = _context(launch_id)
    summary = ingest.reprocess_unmapped(db_session(), Scope.of(ctx.course))
    return _page(ctx, reprocessed=summary)
