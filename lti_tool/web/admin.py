"""``/admin``: Lifeline's administrators sign in, approve and disable platform registrations,
add deployment ids, see the tool's keys, and choose what a new dynamic registration starts as.

Admin identity comes only from the ``lifeline_admin`` cookie, set by this blueprint's login
with a password (``lifeline admin add``). It is a top-level cookie (``SameSite=Lax``, never
``Partitioned``, path ``/admin``): the admin page is used in its own tab, not in an LMS
iframe, and no LTI launch, tutor login or iframe ever carries it. Every form also carries
the session's CSRF token (``web/csrf.py``).
"""

from __future__ import annotations

import datetime as dt

from flask import (
    Blueprint,
    abort,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as BaseResponse

from ..admin import accounts
from ..admin import settings as admin_settings
from ..admin.models import AdminAccount
from ..db import utcnow
from ..lti.models import Platform, PlatformStatus, ToolKey
from ..lti.registry import (
    RegistrationError,
    add_deployment,
    list_platforms,
    set_accept_new_deployments,
    set_status,
)
from ..lti.tool_config import ToolUrls
from ..services import current_services
from .transaction import db_session

bp = Blueprint("admin", __name__, url_prefix="/admin")

COOKIE = "lifeline_admin"
COOKIE_PATH = "/admin"
IP_LIMIT = 30  # failed logins per client address per 15 minutes, whatever the email
IP_WINDOW = 15 * 60
DENIED = "This page is for Lifeline's administrators. Log in at /admin/login first."

# action -> (statuses it applies to, the new status, what the page says afterwards)
ACTIONS: dict[str, tuple[frozenset[PlatformStatus], PlatformStatus, str]] = {
    "approve": (frozenset({PlatformStatus.PENDING}), PlatformStatus.ACTIVE, "approved"),
    "disable": (
        frozenset({PlatformStatus.ACTIVE, PlatformStatus.PENDING}),
        PlatformStatus.DISABLED,
        "disabled",
    ),
    "enable": (frozenset({PlatformStatus.DISABLED}), PlatformStatus.ACTIVE, "enabled"),
}
NOTICES = {
    "approved": "Approved: launches from {name} work now.",
    "disabled": "Disabled: {name} can no longer launch Lifeline.",
    "enabled": "Enabled: launches from {name} work again.",
    "deployment": "{name} now accepts deployment {detail!r}.",
    "deployment-known": "{name} already accepted deployment {detail!r}.",
    "new-deployments-on": "{name} now records a new deployment on its first launch.",
    "new-deployments-off": "{name} now accepts only the deployments listed here.",
    "setting": "Saved: new dynamic registrations will be {detail}.",
}


@bp.context_processor
def _demo_admin() -> dict[str, str | None]:
    """In ``lifeline demo``, the login page says which account the demo made (its password is
    printed in the demo's terminal only, never on a page)."""
    if not current_services().settings.demo_lms:
        return {"demo_admin_email": None}
    from ..demo_lms.startup import DEMO_ADMIN_EMAIL

    return {"demo_admin_email": DEMO_ADMIN_EMAIL}


def current_admin(db: Session) -> AdminAccount | None:
    token = request.cookies.get(COOKIE, "")
    return accounts.session_account(db, token) if token else None


def require_admin(db: Session) -> AdminAccount:
    admin = current_admin(db)
    if admin is None:
        abort(403, description=DENIED)
    return admin


# -- signing in and out -----------------------------------------------------------------------


def _ip_key() -> str:
    return "lifeline:admin-login-failures:" + (request.remote_addr or "unknown")[:64]


@bp.get("/login")
def login_form() -> BaseResponse | str:
    if current_admin(db_session()) is not None:
        return redirect(url_for(".dashboard"), code=303)
    return render_template("admin/login.html", error=None, email="")


@bp.post("/login")
def login() -> BaseResponse | tuple[str, int]:
    services = current_services()
    email = request.form.get("email", "").strip().lower()[:320]
    password = request.form.get("password", "")[: accounts.MAX_PASSWORD + 1]
    limiter = services.redis
    if int(limiter.get(_ip_key()) or 0) >= IP_LIMIT:
        return render_template(
            "admin/login.html",
            error="Too many failed logins from this address. Wait 15 minutes and try again.",
            email=email,
        ), 429
    # Its own transaction: a failed attempt must be counted although the answer is a 401.
    with services.db.transaction() as tx:
        result = accounts.authenticate(tx, email, password)
        token = accounts.start_session(tx, result.account) if result.account else None
    if token is None:
        pipe = limiter.pipeline()
        pipe.incr(_ip_key())
        pipe.expire(_ip_key(), IP_WINDOW)
        pipe.execute()
        if result.locked_until is not None:
            until = result.locked_until.astimezone(dt.UTC).strftime("%H:%M UTC")
            return render_template(
                "admin/login.html",
                error=f"Too many failed logins: this account is locked until {until}.",
                email=email,
            ), 429
        return render_template(
            "admin/login.html", error="That email and password do not match.", email=email
        ), 401
    response = redirect(url_for(".dashboard"), code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(accounts.SESSION_LIFETIME.total_seconds()),
        path=COOKIE_PATH,
        secure=request.is_secure,
        httponly=True,
        samesite="Lax",
    )
    return response


@bp.post("/logout")
def logout() -> BaseResponse:
    db = db_session()
    require_admin(db)
    accounts.end_session(db, request.cookies.get(COOKIE, ""))
    response = redirect(url_for(".login_form"), code=303)
    response.delete_cookie(
        COOKIE, path=COOKIE_PATH, secure=request.is_secure, httponly=True, samesite="Lax"
    )
    return response


# -- the page -------------------------------------------------------------------------------


def _key_state(key: ToolKey, now: dt.datetime) -> str:
    if key.retire_after is None:
        return "signing"
    return "published" if key.retire_after > now else "retired"


def _dashboard(
    db: Session, admin: AdminAccount, error: str | None = None, status: int = 200
) -> tuple[str, int]:
    now = utcnow()
    keys = list(db.scalars(select(ToolKey).order_by(ToolKey.id)))
    page = render_template(
        "admin/dashboard.html",
        admin=admin,
        platforms=list_platforms(db),
        keys=[(k, _key_state(k, now)) for k in keys],
        approval=admin_settings.registration_status(db),
        choices=admin_settings.REGISTRATION_CHOICES,
        register_url=ToolUrls(current_services().settings.base_url).register,
        notices=get_flashed_messages(),
        error=error,
    )
    return page, status


@bp.get("/")
def dashboard() -> BaseResponse | tuple[str, int]:
    db = db_session()
    admin = current_admin(db)
    if admin is None:
        return redirect(url_for(".login_form"), code=303)
    return _dashboard(db, admin)


def _platform(db: Session, platform_id: int) -> Platform:
    """The platform an action changes, locked until the request commits: two admins acting
    at once (approve and disable) are serialised, and the second sees the first's result."""
    platform = db.get(Platform, platform_id, with_for_update=True)
    if platform is None:
        abort(404, description=f"There is no platform #{platform_id}.")
    return platform


def _done(what: str, name: str, detail: str = "") -> BaseResponse:
    """Back to the page (POST, redirect, GET), saying what happened. The notice travels in
    the session, not the URL, so nobody can put words on this page with a crafted link."""
    flash(NOTICES[what].format(name=name, detail=detail))
    return redirect(url_for(".dashboard"), code=303)


@bp.post("/platforms/<int:platform_id>/status")
def platform_status(platform_id: int) -> BaseResponse | tuple[str, int]:
    db = db_session()
    admin = require_admin(db)
    platform = _platform(db, platform_id)
    action = request.form.get("action", "")
    if action not in ACTIONS:
        return _dashboard(
            db, admin, f"Unknown action {action[:40]!r}: use approve, disable or enable.", 400
        )
    allowed, new_status, notice = ACTIONS[action]
    if PlatformStatus(platform.status) not in allowed:
        return _dashboard(
            db,
            admin,
            f"{platform.name} is {platform.status}, so it cannot be {notice} "
            f"(reload the page: someone may have changed it).",
            409,
        )
    set_status(db, platform, new_status)
    current_services().registrations.clear()
    return _done(notice, platform.name)


@bp.post("/platforms/<int:platform_id>/deployments")
def platform_deployment(platform_id: int) -> BaseResponse | tuple[str, int]:
    db = db_session()
    admin = require_admin(db)
    platform = _platform(db, platform_id)
    deployment_id = request.form.get("deployment_id", "")
    known = {d.deployment_id for d in platform.deployments}
    try:
        added = add_deployment(db, platform, deployment_id)
    except RegistrationError as exc:
        return _dashboard(db, admin, f"{platform.name}: {exc}", 400)
    current_services().registrations.clear()
    what = "deployment-known" if added.deployment_id in known else "deployment"
    return _done(what, platform.name, added.deployment_id)


@bp.post("/platforms/<int:platform_id>/new-deployments")
def platform_new_deployments(platform_id: int) -> BaseResponse | tuple[str, int]:
    db = db_session()
    admin = require_admin(db)
    platform = _platform(db, platform_id)
    accept = request.form.get("accept", "")
    if accept not in {"yes", "no"}:
        return _dashboard(db, admin, f"accept must be yes or no, not {accept[:40]!r}.", 400)
    set_accept_new_deployments(db, platform, accept == "yes")
    current_services().registrations.clear()
    return _done("new-deployments-on" if accept == "yes" else "new-deployments-off", platform.name)


@bp.post("/settings/registration")
def registration_setting() -> BaseResponse | tuple[str, int]:
    db = db_session()
    admin = require_admin(db)
    try:
        status = admin_settings.set_registration_status(
            db, request.form.get("registration_status", ""), by=admin.email
        )
    except admin_settings.SettingError as exc:
        return _dashboard(db, admin, str(exc), 400)
    return _done("setting", "", "active at once" if status.value == "active" else "pending")
