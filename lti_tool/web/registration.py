"""``/lti/register``: LTI Dynamic Registration, as the LMS admin sees it.

1. The LMS opens ``GET /lti/register?openid_configuration=...&registration_token=...`` in a
   window or an iframe. Lifeline reads the platform's configuration at once (so a wrong link
   fails here, before anyone presses anything) and shows what it will ask the LMS for.
2. The admin presses Register: ``POST /lti/register/confirm`` posts the registration to the
   LMS, stores the platform, and shows the result with a button that sends
   ``{subject: "org.imsglobal.lti.close"}`` to the LMS window, which closes the dialog.

Between the two steps the configuration and the token wait in Redis under a random,
single-use handle that only the confirmation page carries. That handle is what protects the
POST against cross-site forgery here, instead of the session's CSRF token: this page runs
in the LMS's iframe, where browsers that block third-party cookies (Safari, Chrome's
incognito) drop Lifeline's session cookie, and the registration must still work there. A
forged POST needs a handle, which only a page Lifeline served holds; and a handle someone
obtained for their own LMS registers only their LMS, which they could do anyway.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

from flask import Blueprint, Response, render_template, request
from sqlalchemy.exc import IntegrityError

from ..admin.settings import registration_status
from ..lti import dynamic_registration as dynreg
from ..lti.models import PlatformStatus
from ..lti.registry import RegistrationError, save_registration
from ..lti.tool_config import CLAIMS, ToolUrls
from ..services import current_services
from .errors import wants_json
from .transaction import db_session

bp = Blueprint("registration", __name__, url_prefix="/lti")

START_LIMIT = 30  # registration pages per client address per 10 minutes: each one makes
START_WINDOW = 600  # Lifeline fetch a URL the visitor chose, so nobody may make it do so in bulk
PENDING_TTL = 3600  # seconds a confirmation page stays usable (Canvas's tokens live 1 hour)
RETRY_TTL = 600  # after a passing failure, how long "Register" may be pressed again
_HANDLE = re.compile(r"[A-Za-z0-9_-]{43}")


def _key(handle: str) -> str:
    return "lifeline:dynamic-registration:" + handle


def _problem_page(problem: dynreg.RegistrationProblem, handle: str | None = None) -> Response:
    if wants_json():
        response = Response(
            json.dumps(
                {
                    "error": problem.code,
                    "title": problem.title,
                    "detail": problem.detail,
                    "hint": problem.hint,
                    "status": problem.status,
                }
            ),
            mimetype="application/json",
        )
    else:
        response = Response(
            render_template("lti/register_error.html", problem=problem, handle=handle),
            mimetype="text/html",
        )
    response.status_code = problem.status
    return response


def _over_start_limit() -> bool:
    """Count one request that makes Lifeline contact a URL the visitor chose (opening the
    page, pressing Register): START_LIMIT per address per START_WINDOW."""
    key = "lifeline:dynamic-registration-starts:" + (request.remote_addr or "unknown")[:64]
    pipe = current_services().redis.pipeline()
    pipe.incr(key)
    pipe.ttl(key)
    count, ttl = pipe.execute()
    if int(ttl) < 0:  # new, or its expiry was lost (a process killed between the two)
        current_services().redis.expire(key, START_WINDOW)
    return int(count) > START_LIMIT


def _too_many() -> Response:
    problem = dynreg.RegistrationProblem(
        "too_many_registrations",
        "Too many registration attempts",
        "This address opened Lifeline's registration page (or pressed Register) too often in "
        "the last 10 minutes.",
        "Wait 10 minutes, then start again from the LMS.",
    )
    problem.status = 429
    return _problem_page(problem)


@bp.get("/register")
def start() -> Response:
    services = current_services()
    if _over_start_limit():
        return _too_many()
    try:
        url, token = dynreg.check_start(
            request.args.get("openid_configuration", ""),
            request.args.get("registration_token", ""),
        )
        config, document = dynreg.fetch_configuration(url, token, services.settings.http_timeout)
    except dynreg.RegistrationProblem as exc:
        return _problem_page(exc)
    handle = secrets.token_urlsafe(32)
    services.redis.set(
        _key(handle),
        json.dumps({"url": url, "token": token, "document": document}),
        ex=PENDING_TTL,
    )
    urls = ToolUrls(services.settings.base_url)
    body = render_template(
        "lti/register.html",
        config=config,
        handle=handle,
        name=config.suggested_name,
        error=None,
        **_asks(config, urls),
        approval=registration_status(db_session()),
    )
    return Response(body, mimetype="text/html")


def _asks(config: dynreg.PlatformConfiguration, urls: ToolUrls) -> dict[str, Any]:
    """What the confirmation page lists: scopes (with their purpose), messages, claims."""
    return {
        "scopes": [(s, dynreg.SCOPE_PURPOSES.get(s, s)) for s in dynreg.requested_scopes(config)],
        "messages": [(m, dynreg.placements(config, m)) for m in dynreg.message_types(config)],
        "claims": CLAIMS,
        "custom": dynreg.custom_parameters(config),
        "urls": urls,
    }


def _check_name(raw: str) -> str:
    name = raw.strip()
    if not name:
        raise ValueError("Give the platform a name Lifeline's administrators will recognise.")
    if len(name) > 200:
        raise ValueError("The name is longer than 200 characters.")
    if "\x00" in name or any(not c.isprintable() for c in name):
        raise ValueError("The name contains control characters.")
    return name


@bp.post("/register/confirm")
def confirm() -> Response | tuple[str, int]:
    services = current_services()
    # Pressing Register posts to the platform, and a passing failure keeps the page usable:
    # without counting presses too, one page could make Lifeline post without end.
    if _over_start_limit():
        return _too_many()  # the handle stays good: Register works again after the wait
    handle = request.form.get("handle", "")
    raw = services.redis.getdel(_key(handle)) if _HANDLE.fullmatch(handle) else None
    if raw is None:  # single use: a second press (or a forged form) finds nothing
        return _problem_page(
            dynreg.RegistrationProblem(
                "registration_page_expired",
                "This registration page has expired",
                "The page was already used, is more than an hour old, or did not come from "
                "Lifeline. Nothing was registered by this request.",
                dynreg.START_AGAIN,
            )
        )
    pending = json.loads(raw)
    token: str | None = pending["token"]
    try:  # validated on the first page already; parsed again for its typed form
        config = dynreg.parse_configuration(pending["document"], pending["url"])
    except dynreg.RegistrationProblem as exc:
        return _problem_page(exc)
    urls = ToolUrls(services.settings.base_url)
    tx = db_session()
    approval = registration_status(tx)
    try:
        name = _check_name(request.form.get("name", ""))
    except ValueError as exc:
        services.redis.set(_key(handle), raw, ex=PENDING_TTL)  # nothing happened: page stays good
        page = render_template(
            "lti/register.html",
            config=config,
            handle=handle,
            name=request.form.get("name", "")[:200].replace("\x00", ""),
            error=str(exc),
            **_asks(config, urls),
            approval=approval,
        )
        return page, 400

    try:
        registered = dynreg.register(
            config,
            token,
            dynreg.registration_request(config, urls),
            services.settings.http_timeout,
        )
    except dynreg.RegistrationProblem as exc:
        if exc.retry:
            services.redis.set(_key(handle), raw, ex=RETRY_TTL)
        return _problem_page(exc, handle if exc.retry else None)

    try:
        platform, created = save_registration(
            tx,
            name=name,
            issuer=config.issuer,
            client_id=registered.client_id,
            auth_login_url=config.authorization_endpoint,
            auth_token_url=config.token_endpoint,
            keyset_url=config.jwks_uri,
            deployment_ids=[registered.deployment_id] if registered.deployment_id else [],
            token_audience=config.token_audience,
            status=approval,
        )
        tx.flush()
    except (RegistrationError, IntegrityError) as exc:
        tx.rollback()
        detail = str(exc) if isinstance(exc, RegistrationError) else "it was stored twice at once."
        return _problem_page(
            dynreg.RegistrationProblem(
                "registration_not_stored",
                dynreg.ANSWER_TITLE,
                f"The LMS registered Lifeline (client id {registered.client_id}), but Lifeline "
                f"could not store it: {detail}",
                "Remove the registration in the LMS, then start again from the LMS.",
            )
        )
    services.registrations.clear()
    requested = dynreg.requested_scopes(config)
    refused = (
        [s for s in requested if s not in registered.granted_scopes]
        if registered.granted_scopes is not None
        else []
    )
    body = render_template(
        "lti/register_done.html",
        config=config,
        platform=platform,
        created=created,
        registered=registered,
        refused_scopes=refused,
        purposes=dynreg.SCOPE_PURPOSES,
        active=platform.status == PlatformStatus.ACTIVE.value,
        disabled=platform.status == PlatformStatus.DISABLED.value,
    )
    return Response(body, mimetype="text/html")
