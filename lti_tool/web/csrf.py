"""CSRF protection for our own forms: a per-session token in every POST.

The LTI endpoints are exempt by design: the platform posts to them cross-site, and they are
protected by state, nonce and the signed id_token instead.
"""

from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session

EXEMPT_ENDPOINTS = {"lti.login", "lti.launch"}
EXEMPT_BLUEPRINTS = {"demo_lms", "activity_api"}  # cross-site posts: demo LMS; Basic/Bearer APIs
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    token = session.get(FIELD)
    if not isinstance(token, str):
        token = session[FIELD] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    if request.routing_exception is not None:
        return  # no such route or method: let the 404 / 405 through, it says more than CSRF
    if request.endpoint in EXEMPT_ENDPOINTS or request.blueprint in EXEMPT_BLUEPRINTS:
        return
    sent = request.form.get(FIELD) or request.headers.get(HEADER) or ""
    expected = session.get(FIELD)
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        abort(
            400,
            description="This form has expired or did not come from Lifeline (CSRF check "
            "failed). Reload the page and try again.",
        )
