"""The learner's offers: what live detection proposed ("Looks like this one is fighting back.
Want a tutor?"), accepting (a help request opens, with the offer's severity and the learner's
recent activity as context), declining, and agreeing to a request if they keep failing.

Offers reach the page live through the learner's offer stream: ``offer.*`` events of the
course whose ``data.learner_id`` is this learner, and nobody else's (SSE, with the usual JSON
polling twin).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, abort, jsonify, redirect, url_for
from sqlalchemy import ColumnElement, and_
from werkzeug.wrappers import Response as BaseResponse

from ..courses import Exercise
from ..db import utcnow
from ..detection import live
from ..detection.models import Offer, OfferStatus
from ..help import operations as ops
from ..help.models import HelpEvent
from ..lti.roles import Audience
from ..streams import Message, Scope
from .auth import LaunchContext, launch_context
from .errors import wants_json
from .learner import last_event_id
from .streams import _poll_response, _stream_response
from .transaction import db_session

bp = Blueprint("offers", __name__, url_prefix="/l/<launch_id>/offers")

HEADLINE = "Looks like this one is fighting back. Want a tutor?"
STRONGER = "Still fighting back? A tutor can sort it out with you right now."


@dataclass
class OfferView:
    """A learner's offer events: of their course, naming them."""

    course_id: int
    learner_id: int

    @property
    def scope(self) -> Scope:
        return Scope(course_ids=frozenset({self.course_id}))

    def where(self) -> ColumnElement[bool]:
        return and_(HelpEvent.course_id == self.course_id, HelpEvent.kind.in_(live.OFFER_KINDS))

    def render(self, event: Message) -> Message | None:
        data = event.get("data") or {}
        if (
            event.get("course_id") != self.course_id
            or event.get("kind") not in live.OFFER_KINDS
            or data.get("learner_id") != self.learner_id
        ):
            return None
        return {"id": event["id"], "kind": event["kind"], "offer_id": data.get("offer_id")}


def _context(launch_id: str) -> LaunchContext:
    return launch_context(db_session(), launch_id, Audience.LEARNER)


def offer_dict(offer: Offer, launch_id: str, escalate: bool) -> dict[str, Any]:
    exercise = db_session().get(Exercise, offer.exercise_id)
    return {
        "id": offer.id,
        "exercise": (exercise.title or exercise.resource_link_id) if exercise else "",
        "headline": STRONGER if offer.level > 1 else HEADLINE,
        "reason": offer.reason,
        "level": offer.level,
        "severity": offer.severity,
        "status": offer.status,
        "consent": offer.consent,
        "can_consent": escalate and offer.level == 1,
        "accept_url": url_for(".accept", launch_id=launch_id, offer_id=offer.id),
        "decline_url": url_for(".decline", launch_id=launch_id, offer_id=offer.id),
        "consent_url": url_for(".consent", launch_id=launch_id, offer_id=offer.id),
    }


def _own_offer(ctx: LaunchContext, offer_id: int) -> Offer:
    offer = db_session().get(Offer, offer_id, with_for_update=True)
    if offer is None or offer.learner_id != ctx.person.id or offer.course_id != ctx.course.id:
        abort(404, description="No such offer of yours in this course.")
    return offer


def _refused(message: str, status: int = 409) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


@bp.get("")
def list_offers(launch_id: str) -> Response:
    ctx = _context(launch_id)
    db = db_session()
    _, escalate = live.load_rules(db, ctx.course.id)
    offers = live.open_offers(db, ctx.person.id, ctx.course.id)
    response = jsonify(
        {
            "offers": [offer_dict(o, launch_id, escalate) for o in offers],
            "last_event_id": last_event_id(),
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/events")
def events(launch_id: str) -> Response:
    ctx = _context(launch_id)
    return _stream_response(OfferView(ctx.course.id, ctx.person.id))


@bp.get("/events.json")
def events_json(launch_id: str) -> Response:
    ctx = _context(launch_id)
    return _poll_response(OfferView(ctx.course.id, ctx.person.id))


@bp.post("/<int:offer_id>/accept")
def accept(launch_id: str, offer_id: int) -> Response | BaseResponse:
    ctx = _context(launch_id)
    db = db_session()
    offer = _own_offer(ctx, offer_id)
    if offer.status == OfferStatus.ACCEPTED.value and offer.request_id is not None:
        created_id = offer.request_id  # a double click: the same request
    elif offer.status != OfferStatus.OFFERED.value:
        return _refused(f"This offer is {offer.status}.")
    else:
        try:
            created, _ = ops.request_help(
                db,
                learner=ctx.person,
                course=ctx.course,
                exercise_id=offer.exercise_id,
                new=ops.NewRequest(
                    question=live.offer_question(db, offer),
                    context=live.activity_context(db, ctx.course, ctx.person.id, offer.exercise_id),
                ),
                severity=offer.severity,
            )
        except ops.HelpError as exc:
            return _refused(exc.message, exc.status)
        offer.status, offer.request_id, offer.responded_at = (
            OfferStatus.ACCEPTED.value,
            created.id,
            utcnow(),
        )
        live.record_offer(db, "offer.accepted", offer, request_id=created.id)
        created_id = created.id
    target = url_for("learner.status", launch_id=launch_id, request_id=created_id)
    if wants_json():
        return jsonify({"request_id": created_id, "url": target, "status": offer.status})
    return redirect(target, code=303)


@bp.post("/<int:offer_id>/decline")
def decline(launch_id: str, offer_id: int) -> Response:
    ctx = _context(launch_id)
    offer = _own_offer(ctx, offer_id)
    if offer.status == OfferStatus.OFFERED.value:
        offer.status, offer.responded_at = OfferStatus.DECLINED.value, utcnow()
        live.record_offer(db_session(), "offer.declined", offer)
    elif offer.status != OfferStatus.DECLINED.value:
        return _refused(f"This offer is {offer.status}.")
    return jsonify({"id": offer.id, "status": offer.status})


@bp.post("/<int:offer_id>/consent")
def consent(launch_id: str, offer_id: int) -> Response:
    """ "Open a request for me if I keep failing": only where the course lets offers escalate."""
    ctx = _context(launch_id)
    db = db_session()
    offer = _own_offer(ctx, offer_id)
    _, escalate = live.load_rules(db, ctx.course.id)
    if not escalate:
        return _refused("This course does not open requests on its own.", 403)
    if offer.status != OfferStatus.OFFERED.value:
        return _refused(f"This offer is {offer.status}.")
    offer.consent = True
    return jsonify({"id": offer.id, "status": offer.status, "consent": True})
