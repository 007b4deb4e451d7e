"""The tutor's side: log in (invited experts), availability, the live queue, sessions."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from ..courses import Course, Exercise, Person
from ..help import operations as ops
from ..help import queue
from ..help.models import HelpRequest, HelpStatus
from ..services import current_services
from ..tutors import operations as tutors
from ..tutors.models import Pool
from .auth import TutorContext, current_tutor, sign_in_tutor, sign_out_tutor
from .errors import wants_json
from .learner import last_event_id, message_dict
from .transaction import db_session

bp = Blueprint("tutor", __name__, url_prefix="/tutor")
LOGIN_LIMIT = 10  # failed logins per email per 15 minutes


def _error(exc: ops.HelpError | tutors.TutorError, status: int | None = None) -> Response:
    if isinstance(exc, ops.HelpError):
        response = jsonify({"error": exc.message, **exc.data})
        response.status_code = exc.status
    else:
        response = jsonify({"error": str(exc)})
        response.status_code = status or 400
    return response


def _version() -> int | None:
    raw = request.form.get("version", "")
    if not raw:
        return None
    try:
        number: int | None = int(raw)
    except ValueError:
        number = None
    if number is None or not -(2**31) < number < 2**31:  # what an INTEGER column holds
        abort(400, description="The form's version field must be a number.")
    return number


def _pool_id(raw: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,18}", raw):
        raise ops.HelpError(400, f"{raw[:20]!r} is not a pool of this course.", field="pool")
    return int(raw)


# -- account -------------------------------------------------------------------------------


@bp.get("/login")
def login_form() -> str:
    return render_template("tutor/login.html", error=None, email="")


@bp.post("/login")
def login() -> BaseResponse | tuple[str, int]:
    email = request.form.get("email", "").strip().lower()[:320]
    password = request.form.get("password", "")
    limiter = current_services().redis
    key = "lifeline:tutor-login-failures:" + email
    failures = int(limiter.get(key) or 0)
    if failures >= LOGIN_LIMIT:
        return render_template(
            "tutor/login.html",
            error="Too many failed attempts for this account. Wait 15 minutes and try again.",
            email=email,
        ), 429
    tutor = tutors.authenticate(db_session(), email, password)
    if tutor is None:
        pipe = limiter.pipeline()
        pipe.incr(key)
        pipe.expire(key, 15 * 60)
        pipe.execute()
        return render_template(
            "tutor/login.html", error="That email and password do not match.", email=email
        ), 401
    limiter.delete(key)
    sign_in_tutor(tutor.id)
    return redirect(url_for(".dashboard"), code=303)


@bp.post("/logout")
def logout() -> BaseResponse:
    db = db_session()
    ctx = current_tutor(db)
    tutors.set_availability(db, ctx.tutor, "offline")
    sign_out_tutor()
    return redirect(url_for(".login_form"), code=303)


@bp.get("/invite/<token>")
def invitation(token: str) -> str | tuple[str, int]:
    try:
        found = tutors.find_invitation(db_session(), token)
    except tutors.TutorError as exc:
        return render_template("tutor/invite.html", error=str(exc), invitation=None), 404
    return render_template(
        "tutor/invite.html",
        error=None,
        invitation=found,
        token=token,
        existing=tutors.has_account(db_session(), found.email),
    )


@bp.post("/invite/<token>")
def accept(token: str) -> BaseResponse | tuple[str, int]:
    db = db_session()
    try:
        tutor = tutors.accept_invitation(
            db, token, request.form.get("display_name", ""), request.form.get("password", "")
        )
    except tutors.TutorError as exc:
        try:
            found = tutors.find_invitation(db, token)
        except tutors.TutorError:
            found = None
        existing = found is not None and tutors.has_account(db, found.email)
        return render_template(
            "tutor/invite.html", error=str(exc), invitation=found, token=token, existing=existing
        ), 400
    sign_in_tutor(tutor.id)
    return redirect(url_for(".dashboard"), code=303)


# -- dashboard ------------------------------------------------------------------------------


def _queue_items(ctx: TutorContext) -> list[queue.QueueItem]:
    return queue.tutor_view(db_session(), ctx.pool_ids, ctx.tutor.skills or [])


def _my_sessions(ctx: TutorContext) -> list[HelpRequest]:
    return list(
        db_session().scalars(
            select(HelpRequest)
            .where(
                HelpRequest.tutor_id == ctx.tutor.id,
                HelpRequest.status == HelpStatus.CLAIMED.value,
            )
            .order_by(HelpRequest.claimed_at)
        )
    )


def _history(ctx: TutorContext, limit: int = 20) -> list[HelpRequest]:
    return list(
        db_session().scalars(
            select(HelpRequest)
            .where(
                HelpRequest.tutor_id == ctx.tutor.id,
                HelpRequest.status == HelpStatus.RESOLVED.value,
            )
            .order_by(HelpRequest.resolved_at.desc())
            .limit(limit)
        )
    )


def _pools(ctx: TutorContext) -> list[Pool]:
    if not ctx.pool_ids:
        return []
    return list(db_session().scalars(select(Pool).where(Pool.id.in_(ctx.pool_ids))))


@bp.get("/")
def dashboard() -> str:
    db = db_session()
    ctx = current_tutor(db)
    ops.expire_away(db)
    tutors.heartbeat(db, ctx.tutor)
    return render_template(
        "tutor/dashboard.html",
        tutor=ctx.tutor,
        availability=tutors.effective_availability(ctx.tutor).value,
        pools=_pools(ctx),
        items=_queue_items(ctx),
        sessions=_my_sessions(ctx),
        history=_history(ctx),
        last_event_id=last_event_id(),
    )


@bp.get("/queue.fragment")
def queue_fragment() -> str:
    db = db_session()
    ctx = current_tutor(db)
    return render_template(
        "tutor/_queue.html", items=_queue_items(ctx), sessions=_my_sessions(ctx), tutor=ctx.tutor
    )


def _item_dict(item: queue.QueueItem) -> dict[str, Any]:
    req = item.request
    return {
        "request_id": req.id,
        "version": req.version,
        "learner": item.learner_name,
        "course": item.course_title,
        "exercise": item.exercise_title,
        "question": req.question,
        "skills": req.skills,
        "waited_minutes": item.waited_minutes,
        "matches_skills": item.matches_skills,
        "similar": item.similar,
        "priority": req.priority,
        "away": req.away_until is not None,
    }


@bp.get("/queue.json")
def queue_json() -> Response:
    db = db_session()
    ctx = current_tutor(db)
    return jsonify(
        {
            "queue": [_item_dict(i) for i in _queue_items(ctx)],
            "sessions": [s.id for s in _my_sessions(ctx)],
            "last_event_id": last_event_id(),
        }
    )


@bp.post("/availability")
def availability() -> Response | BaseResponse:
    db = db_session()
    ctx = current_tutor(db)
    capacity_raw = request.form.get("capacity", "").strip()
    try:
        capacity = int(capacity_raw) if capacity_raw else None
    except ValueError:
        return _error(tutors.TutorError("Capacity must be a whole number."))
    skills_raw = request.form.get("skills")
    skills = None if skills_raw is None else [s for s in skills_raw.split(",")]
    try:
        tutors.set_availability(
            db, ctx.tutor, request.form.get("availability", ""), skills, capacity
        )
    except tutors.TutorError as exc:
        return _error(exc)
    if wants_json():
        return jsonify({"availability": ctx.tutor.availability, "skills": ctx.tutor.skills})
    return redirect(url_for(".dashboard"), code=303)


@bp.post("/heartbeat")
def heartbeat() -> Response:
    db = db_session()
    ctx = current_tutor(db)
    tutors.heartbeat(db, ctx.tutor)
    return jsonify({"availability": tutors.effective_availability(ctx.tutor).value})


# -- requests ------------------------------------------------------------------------------


def _request_view(ctx: TutorContext, req: HelpRequest) -> dict[str, Any]:
    db = db_session()
    learner = db.get(Person, req.learner_id)
    course = db.get(Course, req.course_id)
    exercise = db.get(Exercise, req.exercise_id) if req.exercise_id else None
    return {
        "learner_name": (learner.name if learner else "") or "A learner",
        "course_title": (course.title if course else "") or "",
        "exercise_title": (exercise.title if exercise else "") or "",
    }


@bp.get("/requests/<int:request_id>")
def session_page(request_id: int) -> str:
    db = db_session()
    ctx = current_tutor(db)
    req = db.get(HelpRequest, request_id)
    if req is None or req.pool_id not in ctx.pool_ids:
        abort(404, description="No such request in your pools.")
    from ..tutors.operations import course_pools

    return render_template(
        "tutor/session.html",
        tutor=ctx.tutor,
        req=req,
        info=_request_view(ctx, req),
        messages=ops.messages(db, req.id),
        pools=course_pools(db, req.course_id),
        last_event_id=last_event_id(),
        error=None,
    )


def _act(request_id: int, action: str) -> Response | BaseResponse:
    db = db_session()
    ctx = current_tutor(db)
    version = _version()
    form = request.form
    try:
        if action == "claim":
            req = ops.claim(db, request_id, ctx.tutor, ctx.pool_ids, version)
        elif action == "release":
            req = ops.release(db, request_id, ctx.tutor, ctx.pool_ids, version)
        elif action == "transfer":
            pool_raw = form.get("pool_id", "").strip()
            skills_raw = form.get("skills")
            req = ops.transfer(
                db,
                request_id,
                ctx.tutor,
                ctx.pool_ids,
                _pool_id(pool_raw) if pool_raw else None,
                tuple(s for s in skills_raw.split(",") if s.strip()) if skills_raw else None,
                version,
            )
        else:
            req = ops.resolve(
                db,
                request_id,
                ctx.tutor,
                ctx.pool_ids,
                form.get("outcome", ""),
                form.get("note", ""),
                version,
            )
    except ops.HelpError as exc:
        if wants_json():
            return _error(exc)
        return Response(
            render_template(
                "errors/error.html",
                status=exc.status,
                title="That did not work",
                detail=exc.message,
                hint="Go back to the dashboard; it shows the queue as it is now.",
            ),
            status=exc.status,
        )
    if wants_json():
        return jsonify({"request_id": req.id, "status": req.status, "version": req.version})
    if action == "claim":
        return redirect(url_for(".session_page", request_id=req.id), code=303)
    return redirect(url_for(".dashboard"), code=303)


@bp.post("/requests/<int:request_id>/claim")
def claim(request_id: int) -> Response | BaseResponse:
    return _act(request_id, "claim")


@bp.post("/requests/<int:request_id>/release")
def release(request_id: int) -> Response | BaseResponse:
    return _act(request_id, "release")


@bp.post("/requests/<int:request_id>/transfer")
def transfer(request_id: int) -> Response | BaseResponse:
    return _act(request_id, "transfer")


@bp.post("/requests/<int:request_id>/resolve")
def resolve(request_id: int) -> Response | BaseResponse:
    return _act(request_id, "resolve")


@bp.post("/requests/<int:request_id>/meeting")
def meeting(request_id: int) -> Response | BaseResponse:
    db = db_session()
    ctx = current_tutor(db)
    try:
        req = ops.set_meeting_url(
            db, request_id, ctx.tutor, ctx.pool_ids, request.form.get("meeting_url", "")
        )
    except ops.HelpError as exc:
        return _error(exc)
    if wants_json():
        return jsonify({"request_id": req.id, "meeting_url": req.meeting_url})
    return redirect(url_for(".session_page", request_id=req.id), code=303)


@bp.post("/requests/<int:request_id>/chat")
def chat(request_id: int) -> Response | BaseResponse:
    db = db_session()
    ctx = current_tutor(db)
    req = db.get(HelpRequest, request_id)
    if req is None or req.pool_id not in ctx.pool_ids:
        abort(404, description="No such request in your pools.")
    if req.tutor_id != ctx.tutor.id:
        return _error(ops.HelpError(403, "Only the tutor who holds this request can chat."))
    try:
        message = ops.post_message(
            db, req, "tutor", ctx.tutor.display_name, request.form.get("body", "")
        )
    except ops.HelpError as exc:
        return _error(exc)
    if wants_json():
        return jsonify(message_dict(message))
    return redirect(url_for(".session_page", request_id=req.id), code=303)


@bp.get("/requests/<int:request_id>/messages.json")
def messages(request_id: int) -> Response:
    db = db_session()
    ctx = current_tutor(db)
    req = db.get(HelpRequest, request_id)
    if req is None or req.pool_id not in ctx.pool_ids:
        abort(404, description="No such request in your pools.")
    if req.tutor_id != ctx.tutor.id:
        abort(403, description="A session's chat is only for the learner and their tutor.")
    return jsonify({"messages": [message_dict(m) for m in ops.messages(db, req.id)]})
