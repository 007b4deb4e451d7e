"""The instructor's side: course queue settings, tutor invitations, the live course queue."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from .. import jobs
from ..courses import Exercise, Person
from ..help import queue
from ..help import settings as course_settings
from ..help.models import HelpRequest, HelpStatus
from ..lms import endpoints as lms_endpoints
from ..lti.roles import Audience
from ..services import current_services
from ..tutors import operations as tutors
from ..tutors.models import Tutor
from .auth import LaunchContext, launch_context
from .learner import last_event_id
from .transaction import db_session

bp = Blueprint("instructor", __name__, url_prefix="/l/<launch_id>/course")


def _context(launch_id: str) -> LaunchContext:
    return launch_context(db_session(), launch_id, Audience.INSTRUCTOR)


def _exercises(ctx: LaunchContext) -> list[Exercise]:
    return list(
        db_session().scalars(
            select(Exercise).where(Exercise.course_id == ctx.course.id).order_by(Exercise.id)
        )
    )


def _settings_page(
    ctx: LaunchContext,
    cfg: course_settings.QueueSettings,
    error: str | None = None,
    saved: bool = False,
    invite_link: str | None = None,
) -> str:
    db = db_session()
    pool = tutors.ensure_course_pool(db, ctx.course)
    pools = tutors.course_pools(db, ctx.course.id)
    members = {p.id: tutors.pool_tutors(db, [p.id]) for p in pools}
    return render_template(
        "instructor/settings.html",
        ctx=ctx,
        launch=ctx.active.launch,
        cfg=cfg,
        exercises=_exercises(ctx),
        pools=pools,
        default_pool=pool,
        members=members,
        error=error,
        saved=saved,
        invite_link=invite_link,
        form=request.form if request.method == "POST" else None,
        lms=lms_endpoints.status(db, ctx.course.id),
    )


@bp.get("/settings")
def settings_page(launch_id: str) -> str:
    ctx = _context(launch_id)
    return _settings_page(ctx, course_settings.load(db_session(), ctx.course.id))


@bp.post("/settings")
def save_settings(launch_id: str) -> BaseResponse | tuple[str, int]:
    ctx = _context(launch_id)
    db = db_session()
    try:
        course_settings.save(db, ctx.course.id, request.form, {e.id for e in _exercises(ctx)})
    except course_settings.SettingsError as exc:
        return _settings_page(ctx, course_settings.load(db, ctx.course.id), error=str(exc)), 400
    participation = request.form.get("report_participation", "")
    if participation not in ("", "on"):
        return _settings_page(
            ctx,
            course_settings.load(db, ctx.course.id),
            error="Reporting to the gradebook is a checkbox: leave it ticked or unticked.",
        ), 400
    lms_endpoints.set_report_participation(db, ctx.course.id, participation == "on")
    return redirect(url_for(".settings_page", launch_id=launch_id, saved=1), code=303)


@bp.post("/roster/sync")
def sync_roster(launch_id: str) -> BaseResponse | tuple[str, int]:
    """The "Sync roster now" button: a full roster sync, as a job (inline in the demo)."""
    ctx = _context(launch_id)
    db = db_session()
    if not lms_endpoints.status(db, ctx.course.id).roster_available:
        return _settings_page(
            ctx,
            course_settings.load(db, ctx.course.id),
            error="The LMS has not offered this course's roster to Lifeline (Names and Role "
            "Provisioning). Ask your LMS administrator to enable it for Lifeline, then open "
            "Lifeline from the course again.",
        ), 409
    # Nothing of this request needs committing first: the job reads what launches stored.
    current_services().jobs.enqueue(jobs.SYNC_ROSTER, ctx.course.id, True)
    return redirect(url_for(".settings_page", launch_id=launch_id, roster="requested"), code=303)


@bp.post("/invite")
def invite(launch_id: str) -> str | tuple[str, int]:
    ctx = _context(launch_id)
    db = db_session()
    default_pool = tutors.ensure_course_pool(db, ctx.course).id  # before listing the pools
    pool_ids = {p.id for p in tutors.course_pools(db, ctx.course.id)}
    raw_pool = request.form.get("pool_id", "").strip()
    valid = raw_pool.isascii() and raw_pool.isdigit() and len(raw_pool) <= 18
    pool_id = (int(raw_pool) if valid else -1) if raw_pool else default_pool
    cfg = course_settings.load(db, ctx.course.id)
    if pool_id not in pool_ids:
        return _settings_page(ctx, cfg, error="That pool does not serve this course."), 400
    try:
        created = tutors.invite(
            db,
            request.form.get("email", ""),
            pool_id,
            invited_by=ctx.person.name or ctx.person.sub,
        )
    except tutors.TutorError as exc:
        return _settings_page(ctx, cfg, error=str(exc)), 400
    link = f"{current_services().settings.base_url}/tutor/invite/{created.token}"
    return _settings_page(ctx, cfg, invite_link=link)


def _queue_rows(ctx: LaunchContext, statuses: tuple[str, ...], limit: int) -> list[dict[str, Any]]:
    db = db_session()
    query = select(HelpRequest).where(
        HelpRequest.course_id == ctx.course.id, HelpRequest.status.in_(statuses)
    )
    if statuses == (HelpStatus.QUEUED.value,) or HelpStatus.QUEUED.value in statuses:
        query = query.order_by(*queue.queue_order())
    else:
        query = query.order_by(HelpRequest.created_at.desc())
    rows = list(db.scalars(query.limit(limit)))
    people = {
        p.id: p
        for p in db.scalars(select(Person).where(Person.id.in_({r.learner_id for r in rows})))
    }
    tutor_rows = {
        t.id: t
        for t in db.scalars(
            select(Tutor).where(Tutor.id.in_({r.tutor_id for r in rows if r.tutor_id}))
        )
    }
    exercises = {e.id: e for e in _exercises(ctx)}
    result = []
    for r in rows:
        learner = people.get(r.learner_id)
        tutor = tutor_rows.get(r.tutor_id) if r.tutor_id else None
        exercise = exercises.get(r.exercise_id) if r.exercise_id else None
        result.append(
            {
                "id": r.id,
                "status": r.status,
                "learner": (learner.name if learner else "") or "A learner",
                "exercise": (exercise.title if exercise else "") or "",
                "question": r.question,
                "tutor": tutor.display_name if tutor else "",
                "created_at": r.created_at.isoformat(),
                "queued_at": r.queued_at.isoformat(),
                "claimed_at": r.claimed_at.isoformat() if r.claimed_at else None,
                "resolved_at": r.resolved_at.isoformat() if r.resolved_at else None,
                "wait_minutes": round((r.claimed_at - r.created_at).total_seconds() / 60, 1)
                if r.claimed_at
                else None,
                "outcome": r.outcome,
                "rating": r.rating,
            }
        )
    return result


def _queue_data(ctx: LaunchContext) -> dict[str, Any]:
    return {
        "live": _queue_rows(ctx, (HelpStatus.QUEUED.value, HelpStatus.CLAIMED.value), 200),
        "history": _queue_rows(ctx, (HelpStatus.RESOLVED.value, HelpStatus.CANCELLED.value), 100),
        "last_event_id": last_event_id(),
    }


@bp.get("/queue")
def queue_page(launch_id: str) -> str:
    ctx = _context(launch_id)
    return render_template(
        "instructor/queue.html", ctx=ctx, launch=ctx.active.launch, **_queue_data(ctx)
    )


@bp.get("/queue.json")
def queue_json(launch_id: str) -> Response:
    return jsonify(_queue_data(_context(launch_id)))
