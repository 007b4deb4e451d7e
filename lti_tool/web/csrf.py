"""CSRF protection for our own forms: a per-session token in every POST.

The LTI endpoints are exempt by design: the platform posts to them cross-site, and they are
protected by state, nonce and the signed id_token instead (and the continuation of a launch in
a new window by its single-use token, see ``lti/platform_storage.py``).

A launch bound by platform storage lives in a browser that refuses our cookies, so it has no
session to keep a token in: on its pages (``/l/<launch_id>/...``, and its landing) the token is
an HMAC of the launch id under the app's secret key instead. Only the server can compute it,
and only those who may open the launch's pages see it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from flask import abort, current_app, g, request, session

# registration.confirm runs in the LMS's iframe, where the session cookie may be blocked: its
# form carries a single-use server-side handle instead (see web/registration.py).
EXEMPT_ENDPOINTS = {"lti.login", "lti.launch", "lti.launch_continue", "registration.confirm"}
EXEMPT_BLUEPRINTS = {"demo_lms", "activity_api"}  # cross-site posts: demo LMS; Basic/Bearer APIs
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


_BOUND_LAUNCH = "lifeline_csrf_launch"


def launch_token(launch_id: str) -> str:
    """The CSRF token of the pages of ``launch_id`` when no session cookie carries one."""
    secret = current_app.secret_key
    key = secret.encode() if isinstance(secret, str) else bytes(secret or b"")
    digest = hmac.new(key, b"lifeline-csrf\x00" + launch_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def bind_forms_to_launch(launch_id: str) -> None:
    """This response renders ``launch_id``'s landing, which the browser holds by URL only."""
    setattr(g, _BOUND_LAUNCH, launch_id)


def _launch_without_session() -> str | None:
    bound = getattr(g, _BOUND_LAUNCH, None)
    if isinstance(bound, str):
        return bound
    launch_id = (request.view_args or {}).get("launch_id")
    if isinstance(launch_id, str) and launch_id not in session.get("launches", []):
        return launch_id
    return None


def _matches(sent: str, expected: str) -> bool:
    return hmac.compare_digest(sent.encode(), expected.encode())  # str needs ASCII; bytes not


def csrf_token() -> str:
    launch_id = _launch_without_session()
    if launch_id is not None:
        return launch_token(launch_id)
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
    if isinstance(expected, str) and _matches(sent, expected):
        return
    launch_id = (request.view_args or {}).get("launch_id")
    if not isinstance(launch_id, str) or not _matches(sent, launch_token(launch_id)):
        abort(
            400,
            description="This form has expired or did not come from Lifeline (CSRF check "
            "failed). Reload the page and try again.",
        )
