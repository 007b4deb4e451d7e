"""The LTI 1.3 endpoints: OIDC login, launch, the tool's JWKS, deep linking confirm."""

from __future__ import annotations

import functools
import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, session
from sqlalchemy import Integer, Select, bindparam, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from .. import jobs
from ..courses import LaunchFacts, recent_launches, record_launch
from ..db import utcnow
from ..launches import ActiveLaunch, load, remember, store
from ..lms import endpoints as lms_endpoints
from ..lti import deep_linking, keys, platform_storage
from ..lti.errors import LaunchError
from ..lti.launch import Launch
from ..lti.login import STATE_COOKIE_PREFIX, begin_login
from ..lti.models import Platform
from ..lti.registry import record_deployment
from ..lti.roles import Audience
from ..services import current_services
from .cookies import delete_cookie, set_cookie
from .csrf import bind_forms_to_launch
from .errors import launch_error_response, wants_json
from .transaction import db_session

bp = Blueprint("lti", __name__, url_prefix="/lti")

_STATE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # the shape of the states begin_login makes
_NOTE_EVERY = 30.0  # seconds between writes of a platform's last launch / last error
_last_noted: dict[tuple[int, str], float] = {}
_note_lock = threading.Lock()


def _should_note(platform_id: int, what: str) -> bool:
    now = time.monotonic()
    with _note_lock:
        if now - _last_noted.get((platform_id, what), -_NOTE_EVERY) < _NOTE_EVERY:
            return False
        _last_noted[(platform_id, what)] = now
        return True


def _note_error(exc: LaunchError) -> None:
    """Keep the platform's last error for the admin page, in its own short transaction."""
    if exc.platform_id is None or not _should_note(exc.platform_id, "error"):
        return
    with current_services().db.transaction() as tx:
        tx.execute(
            update(Platform)
            .where(Platform.id == exc.platform_id)
            .values(last_error=f"{exc.code}: {exc.detail}"[:2000], last_error_at=utcnow())
        )


@bp.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse:
    services = current_services()
    params = {k: v for k, v in request.values.items() if isinstance(v, str)}
    redirect_to = begin_login(
        params,
        session=db_session(),
        cache=services.registrations,
        redis_client=services.redis,
        base_url=services.settings.base_url,
        login_ttl=services.settings.login_ttl,
    )
    response: BaseResponse
    if redirect_to.storage is None:
        response = redirect(redirect_to.url, code=302)
    else:
        # The platform offers storage: a page puts state and nonce there, then goes on to the
        # platform. The cookie is still set; browsers that keep it need nothing else.
        response = _no_store(
            render_template(
                "lti/storage_login.html",
                auth_url=redirect_to.url,
                storage=redirect_to.storage,
                timeout_ms=platform_storage.MESSAGE_TIMEOUT_MS,
            )
        )
    set_cookie(
        response,
        redirect_to.cookie_name,
        redirect_to.state,
        max_age=services.settings.login_ttl,
        path="/lti/",
    )
    return response


@bp.post("/launch")
@bp.post("/launch/continue", endpoint="launch_continue")
def launch() -> Response:
    """The platform's form post with the id_token; also, when the state cookie did not come
    back, our own pages' posts that bind the launch without it (``lti/platform_storage.py``):
    the storage check (to /launch) and the continuation in a new window (/launch/continue)."""
    services = current_services()
    tx = db_session()
    state = request.form.get("state", "")
    outcome = _validate(tx, state)
    if isinstance(outcome, Response):
        return outcome
    validated, url_bound = outcome

    facts = LaunchFacts(
        platform_id=validated.registration_id,
        deployment_id=validated.deployment_id,
        sub=validated.sub,
        name=validated.name,
        email=validated.email,
        context_id=validated.context_id,
        context_title=validated.context_title,
        context_label=validated.context_label,
        resource_link_id=validated.resource_link_id,
        resource_link_title=validated.resource_link_title,
    )
    # A registration that accepts new deployments: note this one on its first launch.
    if validated.new_deployment and record_deployment(
        tx, validated.registration_id, validated.deployment_id
    ):
        services.registrations.clear()
    record, written = record_launch(tx, facts)
    if written and record.course_id is not None:  # (not repeated within the recent window)
        lms_endpoints.readmit(tx, record.course_id, record.person_id)
    # LMS services (roster, gradebook, custom ids): noted on the course; first roster sync.
    sync_roster = record.course_id is not None and lms_endpoints.note_launch(
        tx, record.course_id, validated
    )
    if validated.audience is Audience.TUTOR and record.course_id is not None:
        _sign_in_lti_tutor(tx, record.person_id, record.course_id)
    else:
        _end_tutor_session_of_someone_else(tx, record.person_id)
    if _should_note(validated.registration_id, "launch"):
        tx.execute(
            update(Platform)
            .where(Platform.id == validated.registration_id)
            .values(last_launch_at=utcnow())
        )
    tx.commit()
    if sync_roster:
        services.jobs.enqueue(jobs.SYNC_ROSTER, record.course_id)
    if written:
        recent_launches.put(facts, record)
    active = ActiveLaunch(validated, record)
    store(services.redis, active, services.settings.launch_ttl)
    session["launches"] = remember(list(session.get("launches", [])), validated.launch_id)
    if url_bound:  # the session cookie will not come back either: the URL carries the launch
        platform_storage.mark_url_bound(
            services.redis, validated.launch_id, services.settings.launch_ttl
        )
        bind_forms_to_launch(validated.launch_id)

    response = render_landing(active)
    delete_cookie(response, STATE_COOKIE_PREFIX + state, path="/lti/")
    return response


def _no_store(body: str, status: int = 200) -> Response:
    """A page holding a login's state or a launch's tokens: never kept by any cache."""
    response = Response(body, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


def _refused(exc: LaunchError, state: str) -> Response:
    _note_error(exc)
    response = launch_error_response(exc)
    if _STATE.fullmatch(state):  # never echo arbitrary text into a Set-Cookie name
        delete_cookie(response, STATE_COOKIE_PREFIX + state, path="/lti/")
    return response


def _validate(tx: Session, state: str) -> tuple[Launch, bool] | Response:
    """The validated launch and whether only its URL binds it to the browser, or the page to
    answer instead: a refusal, or a page that must first bind the launch in the browser."""
    services = current_services()
    form, fetch_site = request.form, request.headers.get("Sec-Fetch-Site")
    try:
        if request.endpoint == "lti.launch_continue":
            platform_storage.take_continuation(services.redis, state, form, fetch_site)
            cookies = platform_storage.bound_cookies(state)
            return services.launches.validate(form, cookies, tx), False
        return services.launches.validate(form, request.cookies, tx), False
    except LaunchError as exc:
        if exc.code != "state_not_bound" or not _STATE.fullmatch(state):
            return _refused(exc, state)
        unbound = exc  # a valid, fresh id_token whose state cookie did not come back
    if platform_storage.CHECK_FIELD in form:  # the storage check page's post
        try:
            platform_storage.verify_storage_proof(services.redis, state, form, fetch_site)
            cookies = platform_storage.bound_cookies(state)
            return services.launches.validate(form, cookies, tx), True
        except LaunchError as exc:
            if exc.platform_id is None:  # the admin page shows the registration's last error
                exc.platform_id = unbound.platform_id
            return _refused(exc, state)
    pending = None
    if not wants_json():
        ttl = min(services.settings.login_ttl, 600)
        pending = platform_storage.pending_binding(services.redis, state, ttl)
    if pending is None:
        return _refused(unbound, state)
    if pending.storage is not None:
        return _no_store(
            render_template(
                "lti/storage_launch.html",
                pending=pending,
                id_token=form.get("id_token", ""),
                timeout_ms=platform_storage.MESSAGE_TIMEOUT_MS,
            )
        )
    # Not noted as the platform's last error: a browser that blocks cookies is routine, not
    # something the LMS's admin could fix, and the new window completes the launch.
    return _no_store(
        render_template(
            "lti/cookies_blocked.html",
            error=unbound,
            pending=pending,
            id_token=form.get("id_token", ""),
        ),
        status=unbound.status,
    )


def _sign_in_lti_tutor(tx: Session, person_id: int, course_id: int) -> None:
    """A TeachingAssistant / Mentor launch makes the person a tutor of the course's pool."""
    from ..courses import Course, Person
    from ..tutors.operations import tutor_for_person

    person, course = tx.get(Person, person_id), tx.get(Course, course_id)
    if person is not None and course is not None:
        session["tutor_id"] = tutor_for_person(tx, person, course).id


def _end_tutor_session_of_someone_else(tx: Session, person_id: int) -> None:
    """A launch by another person in this browser (a shared lab computer: the TA left, a
    learner opened the course) ends the tutor session the cookie still held."""
    from sqlalchemy import select

    from ..tutors.models import TutorLink

    tutor_id = session.get("tutor_id")
    if tutor_id is None:
        return
    same_person = tx.scalars(
        select(TutorLink.id).where(TutorLink.tutor_id == tutor_id, TutorLink.person_id == person_id)
    ).first()
    if same_person is None:
        session.pop("tutor_id", None)


def render_landing(active: ActiveLaunch) -> Response:
    launch = active.launch
    if launch.is_deep_linking:
        if launch.audience is not Audience.INSTRUCTOR:
            abort(403, description="Only instructors can place Lifeline in a course.")
        body = render_template("lti/deep_link.html", launch=launch, error=None)
    else:
        body = render_template(
            f"web/{launch.audience.value}.html",
            launch=launch,
            active=active,  # what sdk_token() needs, without reading it back from Redis
            **_landing_context(active),
        )
    return Response(body, mimetype="text/html")


def _landing_context(active: ActiveLaunch) -> dict[str, object]:
    """What a landing page shows of the queue: the learner's open request, tutors online."""
    from ..help import queue as help_queue
    from ..tutors.operations import HEARTBEAT_TIMEOUT, course_pools

    course_id = active.record.course_id
    if course_id is None:
        return {"help_request": None, "tutors_available": 0, "waiting": 0}
    if active.launch.audience is Audience.LEARNER:
        # Learners are most launches: one query, not three (see _learner_landing_query), read
        # outside a transaction (the launch has committed its writes by now), so no BEGIN and
        # COMMIT round trips around it.
        with _autocommit(current_services().db.engine).connect() as conn:
            row = conn.execute(
                _learner_landing_query(),
                {
                    "course_id": course_id,
                    "person_id": active.record.person_id,
                    "seen_since": utcnow() - HEARTBEAT_TIMEOUT,
                },
            ).one()
        return {
            "help_request": None if row[1] is None else OpenRequest(row[1], row[2]),
            "tutors_available": int(row[0]),
        }
    if active.launch.audience is Audience.TUTOR:
        tx = db_session()
        pool_ids = [p.id for p in course_pools(tx, course_id)]
        return {"waiting": len(help_queue.queued(tx, pool_ids))}
    return {}


_autocommit_engines: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _autocommit(engine: Engine) -> Engine:
    """``engine`` for single reads that need no transaction (it shares the engine's pool)."""
    found = _autocommit_engines.get(engine)
    if found is None:
        found = _autocommit_engines[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return found


@dataclass(frozen=True)
class OpenRequest:
    """The learner's open help request, as the landing page shows it."""

    id: int
    status: str


@functools.cache
def _learner_landing_query() -> Select[Any]:
    """A learner's landing page in one round trip: the tutors available now in the course's
    pools, counted as ``tutors.operations.effective_availability`` counts them (available,
    with a heartbeat within HEARTBEAT_TIMEOUT), and the learner's open request in the course
    (at most one: a partial unique index). Built once; the values are bound per launch."""
    from ..help.models import ACTIVE_STATUSES, CoursePool, HelpRequest
    from ..tutors.models import Availability, PoolMember, Tutor

    course_id = bindparam("course_id", type_=Integer)
    person_id = bindparam("person_id", type_=Integer)
    available = (
        select(func.count())
        .select_from(Tutor)
        .where(
            Tutor.id.in_(
                select(PoolMember.tutor_id)
                .join(CoursePool, CoursePool.pool_id == PoolMember.pool_id)
                .where(CoursePool.course_id == course_id)
            ),
            Tutor.availability == Availability.AVAILABLE.value,
            Tutor.last_seen_at >= bindparam("seen_since"),
        )
        .scalar_subquery()
    )
    mine = (
        HelpRequest.learner_id == person_id,
        HelpRequest.course_id == course_id,
        HelpRequest.status.in_(ACTIVE_STATUSES),
    )
    return select(
        available,
        select(HelpRequest.id).where(*mine).limit(1).scalar_subquery(),
        select(HelpRequest.status).where(*mine).limit(1).scalar_subquery(),
    )


def launch_for_browser(launch_id: str) -> ActiveLaunch:
    """The launch ``launch_id``, if this browser made it (its session cookie names it, or the
    launch was bound by platform storage, where the URL alone carries it); 403 / 401
    otherwise."""
    redis_client = current_services().redis
    if launch_id not in session.get("launches", []) and not platform_storage.is_url_bound(
        redis_client, launch_id
    ):
        abort(
            403,
            description="This page belongs to a launch made in another browser or session. "
            "Open Lifeline from your course again.",
        )
    active = load(redis_client, launch_id)
    if active is None:
        abort(
            401,
            description="This launch has expired. Open Lifeline from your course again.",
        )
    return active


@bp.get("/jwks")
def jwks() -> Response:
    tx = db_session()
    keys.ensure_key(tx)
    response = jsonify(keys.jwks(tx))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@bp.post("/deep-link/<launch_id>")
def deep_link_confirm(launch_id: str) -> Response | tuple[str, int]:
    active = launch_for_browser(launch_id)
    launch: Launch = active.launch
    if not launch.is_deep_linking or launch.audience is not Audience.INSTRUCTOR:
        abort(403, description="This launch cannot place content in the course.")
    placements: list[deep_linking.Placement] = []
    if request.form.get("action") != "cancel":
        try:
            placements = [
                deep_linking.check_placement(
                    request.form.get("title", ""), request.form.get("text", "")
                )
            ]
        except deep_linking.PlacementError as exc:
            return render_template("lti/deep_link.html", launch=launch, error=str(exc)), 400
    services = current_services()
    token = deep_linking.response_jwt(
        launch,
        keys.signing_key(db_session()),
        services.settings.base_url + "/lti/launch",
        placements,
    )
    return Response(
        render_template(
            "lti/autopost.html",
            action=deep_linking.return_url(launch),
            fields={"JWT": token},
            message="Returning to your course…",
        ),
        mimetype="text/html",
    )
