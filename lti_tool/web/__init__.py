"""HTTP: blueprints that parse input, call operations, and render templates or JSON."""

from __future__ import annotations

from flask import Flask, Response

from .cookies import IframeSessionInterface
from .csrf import check_csrf, csrf_token
from .errors import register_error_handlers
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


def init_web(app: Flask) -> None:
    from . import instructor, learner, lti, pages, tutor

    app.session_interface = IframeSessionInterface()
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.before_request(check_csrf)
    app.after_request(commit_on_success)
    app.after_request(_security_headers)
    app.teardown_request(close_db_session)
    register_error_handlers(app)
    app.register_blueprint(lti.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(learner.bp)
    app.register_blueprint(tutor.bp)
    app.register_blueprint(instructor.bp)
