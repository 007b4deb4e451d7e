"""HTTP: blueprints that parse input, call operations, and render templates or JSON."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, Response, request
from flask.sessions import SecureCookieSession, SessionMixin
from werkzeug.routing import IntegerConverter

from .cookies import IframeSessionInterface
from .csrf import check_csrf, csrf_token
from .errors import register_error_handlers
from .forms import check_form_text
from .transaction import close_db_session, commit_on_success

# Set on every response unless a view set its own. Precomputed: one pass over the response's
# headers per request instead of a lookup per header.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    # Lifeline lives in LMS iframes, so any site may frame it; scripts only from ourselves.
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        "'unsafe-inline'; img-src 'self' data:; frame-ancestors *; form-action *",
    ),
)
_SECURITY_NAMES = tuple((name.lower(), name, value) for name, value in SECURITY_HEADERS)

# The Basic / Bearer-authenticated APIs (``activity.api``): they take no cookies, so their
# requests neither read nor write the session cookie.
API_PATH_PREFIXES = ("/xapi/", "/api/activity/")


def _security_headers(response: Response) -> Response:
    headers = response.headers
    present = {name.lower() for name, _ in headers}
    for lower, name, value in _SECURITY_NAMES:
        if lower not in present:
            headers.add(name, value)
    return response


def _after_request(response: Response) -> Response:
    """The security headers, then the request's database transaction (one hook, in the order
    the two separate hooks ran: Flask runs after-request hooks last registered first)."""
    return commit_on_success(_security_headers(response))


def _before_request() -> None:
    if request.blueprint == "activity_api":
        return  # Basic / Bearer APIs: no CSRF token and no form fields (both skip them anyway)
    check_csrf()
    check_form_text()


def is_api_path(path: str) -> bool:
    return path.startswith(API_PATH_PREFIXES)


class SessionInterface(IframeSessionInterface):
    """The iframe session cookie, except on the API paths: there a request gets an empty
    session that is never saved, so an API response never sets (or refreshes) a cookie and
    the cookie a browser may send is not read."""

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if is_api_path(request.environ.get("PATH_INFO") or ""):
            return self.session_class()
        return super().open_session(app, request)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if is_api_path(request.environ.get("PATH_INFO") or ""):
            return
        super().save_session(app, session, response)


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
    app.session_interface = SessionInterface()
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.before_request(_before_request)
    app.after_request(_after_request)
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
    from . import fastpath

    fastpath.wrap(app)  # the ordinary xAPI POST / PUT answered outside Flask (same answers)
