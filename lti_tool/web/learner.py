"""The learner's side of the queue: ask, wait (live position and estimate), chat, rate."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, render_template, request, url_for
from sqlalchemy import func, select
from werkzeug.wrappers import Response as BaseResponse

from ..help import operations as ops
from ..help import queue
from ..help import settings as course_settings
from ..help.models import HelpEvent, HelpRequest, HelpStatus
from ..lti.roles import Audience
from ..tutors.models import Tutor
from .auth import LaunchContext, launch_context
from .errors import wants_json
from .transaction import db_session

bp = Blueprint("learner", __name__, url_prefix="/l/<launch_id>")


def _context(launch_id: str) -> LaunchContext:
    return launch_context(db_session(), launch_id, Audience.LEARNER)


def _own_request(ctx: LaunchContext, request_id: int) -> HelpRequest:
    found = db_session().get(HelpRequest, request_id)
    if found is None or found.learner_id != ctx.person.id or found.course_id != ctx.course.id:
        abort(404, description="No such request of yours in this course.")
    return found


def _error(exc: ops.HelpError) -> Response:
    response = jsonify({"error": exc.message, **exc.data})
    response.status_code = exc.status
    if "retry_after" in exc.data:
        response.headers["Retry-After"] = str(exc.data["retry_after"])
    return response


def last_event_id() -> int:
    return int(db_session().scalar(select(func.max(HelpEvent.id))) or 0)


def shared_context(ctx: LaunchContext) -> dict[str, Any]:
    """Exactly what a tutor will see about the learner's situation: the course, the exercise,
    and from activity tracking their latest attempts and last error."""
    from ..detection.live import activity_context

    return activity_context(db_session(), ctx.course, ctx.person.id, ctx.exercise_id)


def _int_or_none(value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        number: int | None = int(value)
    except ValueError:
        number = None
    if number is None or not -(2**31) < number < 2**31:  # what an INTEGER column holds
        abort(400, description="The form's version field must be a number.")
    return number


@bp.get("/help/new")
def new_request(launch_id: str) -> str | BaseResponse:
    ctx = _context(launch_id)
    existing = ops.active_request(db_session(), ctx.person.id, ctx.course.id)
    if existing is not None:
        return redirect(url_for(".status", launch_id=launch_id, request_id=existing.id))
    cfg = course_settings.load(db_session(), ctx.course.id)
    return render_template(
        "help/new.html",
        ctx=ctx,
        launch=ctx.active.launch,
        skills=cfg.skills,
        shared=shared_context(ctx),
        form={"notify_email": ""},
        error=None,
        hint=ops.QUESTION_HINT,
    )


@bp.post("/help")
def create_request(launch_id: str) -> Response | BaseResponse | tuple[str, int]:
    ctx = _context(launch_id)
    form = request.form
    new = ops.NewRequest(
        question=form.get("question", ""),
        tried=form.get("tried", ""),
        skills=tuple(form.getlist("skills")),
        context=shared_context(ctx),
        notify_email=form.get("notify_email") or None,
    )
    try:
        created, _fresh = ops.request_help(
            db_session(),
            learner=ctx.person,
            course=ctx.course,
            exercise_id=ctx.exercise_id,
            new=new,
        )
    except ops.HelpError as exc:
        if wants_json():
            return _error(exc)
        cfg = course_settings.load(db_session(), ctx.course.id)
        return render_template(
            "help/new.html",
            ctx=ctx,
            launch=ctx.active.launch,
            skills=cfg.skills,
            shared=shared_context(ctx),
            form=form,
            error=exc.message,
            hint=ops.QUESTION_HINT,
        ), exc.status
    target = url_for(".status", launch_id=launch_id, request_id=created.id)
    if wants_json():
        return jsonify({"request_id": created.id, "url": target, "status": created.status})
    return redirect(target, code=303)


def status_payload(req: HelpRequest) -> dict[str, Any]:
    db = db_session()
    payload: dict[str, Any] = {
        "request_id": req.id,
        "status": req.status,
        "version": req.version,
        "away_until": req.away_until.isoformat() if req.away_until else None,
        "tutor_name": None,
        "meeting_url": None,
        "outcome": req.outcome,
        "rating": req.rating,
    }
    if req.status == HelpStatus.QUEUED.value:
        estimate = queue.estimate(db, req)
        payload.update(
            {
                "ahead": estimate.ahead,
                "position": estimate.ahead + 1,
                "estimate": estimate.as_dict(),
            }
        )
    if req.tutor_id is not None and req.status in (
        HelpStatus.CLAIMED.value,
        HelpStatus.RESOLVED.value,
    ):
        tutor = db.get(Tutor, req.tutor_id)
        payload["tutor_name"] = tutor.display_name if tutor else "Your tutor"
        if req.status == HelpStatus.CLAIMED.value:
            payload["meeting_url"] = req.meeting_url
    return payload


@bp.get("/help/<int:request_id>")
def status(launch_id: str, request_id: int) -> str:
    ctx = _context(launch_id)
    req = _own_request(ctx, request_id)
    return render_template(
        "help/status.html",
        ctx=ctx,
        launch=ctx.active.launch,
        req=req,
        state=status_payload(req),
        messages=ops.messages(db_session(), req.id),
        last_event_id=last_event_id(),
    )


@bp.get("/help/<int:request_id>/status.json")
def status_json(launch_id: str, request_id: int) -> Response:
    ctx = _context(launch_id)
    return jsonify(status_payload(_own_request(ctx, request_id)))


def _after(req: HelpRequest, launch_id: str) -> Response | BaseResponse:
    if wants_json():
        return jsonify(status_payload(req))
    return redirect(url_for(".status", launch_id=launch_id, request_id=req.id), code=303)


def _act(launch_id: str, request_id: int, action: str) -> Response | BaseResponse | tuple[str, int]:
    ctx = _context(launch_id)
    req = _own_request(ctx, request_id)
    db = db_session()
    version = _int_or_none(request.form.get("version"))
    try:
        if action == "cancel":
            req = ops.cancel(db, req.id, ctx.person.id, version)
        elif action in {"away", "back"}:
            req = ops.step_away(db, req.id, ctx.person.id, back=action == "back")
        elif action == "rate":
            raw = (request.form.get("rating") or "").strip()
            if not raw.isascii() or not raw.isdigit():
                raise ops.HelpError(400, "Choose a rating from 1 to 5 stars.", field="rating")
            rating = int(raw) if len(raw) <= 3 else 0  # out of range, never a huge int
            req = ops.rate(db, req.id, ctx.person.id, rating, request.form.get("comment", ""))
    except ops.HelpError as exc:
        if wants_json():
            return _error(exc)
        return render_template(
            "help/status.html",
            ctx=ctx,
            launch=ctx.active.launch,
            req=req,
            state=status_payload(req),
            messages=ops.messages(db, req.id),
            last_event_id=last_event_id(),
            error=exc.message,
        ), exc.status
    return _after(req, launch_id)


@bp.post("/help/<int:request_id>/cancel")
def cancel(launch_id: str, request_id: int) -> Response | BaseResponse | tuple[str, int]:
    return _act(launch_id, request_id, "cancel")


@bp.post("/help/<int:request_id>/away")
def away(launch_id: str, request_id: int) -> Response | BaseResponse | tuple[str, int]:
    return _act(launch_id, request_id, "away")


@bp.post("/help/<int:request_id>/back")
def back(launch_id: str, request_id: int) -> Response | BaseResponse | tuple[str, int]:
    return _act(launch_id, request_id, "back")


@bp.post("/help/<int:request_id>/rate")
def rate(launch_id: str, request_id: int) -> Response | BaseResponse | tuple[str, int]:
    return _act(launch_id, request_id, "rate")


def message_dict(message: Any) -> dict[str, Any]:
    return {
        "id": message.id,
        "author": message.author,
        "name": message.author_name,
        "body": message.body,
        "at": message.created_at.isoformat(),
    }


@bp.post("/help/<int:request_id>/chat")
def chat(launch_id: str, request_id: int) -> Response | BaseResponse:
    ctx = _context(launch_id)
    req = _own_request(ctx, request_id)
    try:
        message = ops.post_message(
            db_session(), req, "learner", ctx.person.name or "Learner", request.form.get("body", "")
        )
    except ops.HelpError as exc:
        return _error(exc)
    if wants_json():
        return jsonify(message_dict(message))
    return redirect(url_for(".status", launch_id=launch_id, request_id=req.id), code=303)


@bp.get("/help/<int:request_id>/messages.json")
def messages(launch_id: str, request_id: int) -> Response:
    ctx = _context(launch_id)
    req = _own_request(ctx, request_id)
    return jsonify({"messages": [message_dict(m) for m in ops.messages(db_session(), req.id)]})
