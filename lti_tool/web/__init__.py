"""HTTP: blueprints that parse input, call operations, and render templates or JSON."""

from __future__ import annotations

from typing import Any

from flask import Flask, Response
from werkzeug.routing import IntegerConverter

from .cookies import IframeSessionInterface
from .csrf import check_csrf, csrf_token
from .errors import register_error_handlers
from .forms import check_form_text
from .transaction import close_db_session, commit_on_success


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    # Lifeline lives in LMS iframes, so any site may frame it; scripts only from ourselves.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors *; form-action *",
    )
    return response


class DatabaseId(IntegerConverter):
    """``<int:...>`` in a route is a row id: a number no INTEGER column holds is a 404, not a
    database error."""

    def __init__(
        self,
        map: Any,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = 2**31 - 1,
        signed: bool = False,
    ) -> None:
        super().__init__(map, fixed_digits, min, max, signed)


def init_web(app: Flask) -> None:
    from . import (
        activity,
        admin,
        detection,
        instructor,
        learner,
        lti,
        offers,
        pages,
        registration,
        streams,
        tutor,
    )

    app.url_map.converters["int"] = DatabaseId  # before any blueprint adds its rules
    app.session_interface = IframeSessionInterface()
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.before_request(check_csrf)
    app.before_request(check_form_text)
    app.after_request(commit_on_success)
    app.after_request(_security_headers)
    app.teardown_request(close_db_session)
    register_error_handlers(app)
    app.register_blueprint(lti.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(learner.bp)
    app.register_blueprint(tutor.bp)
    app.register_blueprint(instructor.bp)
    app.register_blueprint(detection.bp)  # the instructor's stuck detection and analytics
    app.register_blueprint(streams.bp)  # live updates: SSE and JSON polling
    app.register_blueprint(offers.bp)  # live detection's offers to the learner
    app.register_blueprint(activity.api)  # xAPI, ProgSnap2, SDK: Basic / Bearer auth
    app.register_blueprint(activity.bp)  # the instructor's activity page
    app.register_blueprint(registration.bp)  # LTI Dynamic Registration (/lti/register)
    app.register_blueprint(admin.bp)  # Lifeline's own administrators (/admin)
