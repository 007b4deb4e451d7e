"""Pages outside the launch itself: the front page, reloads of a launch, health."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template
from sqlalchemy import text

from ..services import current_services
from .lti import launch_for_browser, render_landing
from .transaction import db_session

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("web/index.html", demo=current_services().settings.demo_lms)


@bp.get("/app/<launch_id>")
def landing(launch_id: str) -> Response:
    return render_landing(launch_for_browser(launch_id))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    status = {"database": "ok", "redis": "ok"}
    try:
        db_session().execute(text("SELECT 1"))
    except Exception:
        status["database"] = "unavailable"
    try:
        current_services().redis.ping()
    except Exception:
        status["redis"] = "unavailable"
    healthy = all(v == "ok" for v in status.values())
    return jsonify(status), 200 if healthy else 503
