"""The demo LMS's pages: a course with two exercises, launch buttons, its OIDC endpoints, the
LTI Platform Storage its course page keeps for Lifeline (``?storage=0`` turns it off), and an
LMS admin page that installs Lifeline by LTI Dynamic Registration (``registration.py``), and
the LTI Advantage services it grants the demo's own registration (``services.py``): a token
endpoint, the course roster (NRPS), line items and scores (AGS) and a gradebook page."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from sqlalchemy.orm import Session

from ..lti.models import Platform
from ..lti.registry import add_deployment, add_platform, find_by_issuer
from ..services import current_services
from . import demo_platform, demo_platforms
from . import registration as dynreg
from .platform import (
    CLIENT_ID,
    COURSE,
    DEPLOYMENT_ID,
    EXERCISES,
    STORAGE_FRAME,
    USERS,
    DemoPlatform,
    DemoUser,
    origin_of,
)
from .services import (
    LINEITEM_MEDIA,
    LINEITEMS_MEDIA,
    NRPS_MEDIA,
    SCOPE_LINEITEM,
    SCOPE_NRPS,
    SCOPE_SCORE,
    SCORE_MEDIA,
    Refused,
)

bp = Blueprint("demo_lms", __name__, url_prefix="/demo")
HINT_TTL = 600
PLACEMENTS_KEY = "demo-lms:placements"


@bp.after_request
def _may_frame_the_tool(response: Response) -> Response:
    """Lifeline's policy (``web/__init__.py``), but the course page may also frame Lifeline's
    origin, which differs from the LMS's when the demo LMS is reached on another site."""
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' "
        f"'unsafe-inline'; img-src 'self' data:; frame-src 'self' {demo_platform().tool_origin}; "
        "frame-ancestors *; form-action *",
    )
    return response


def ensure_registered(session: Session) -> None:
    """Register the demo LMS with the tool, exactly as an admin would with the CLI."""
    platform = demo_platform()
    found = [r for r in find_by_issuer(session, platform.issuer) if r.client_id == CLIENT_ID]
    if not found:
        add_platform(session, **platform.registration())
        session.commit()
        current_services().registrations.clear()
    elif DEPLOYMENT_ID not in found[0].deployment_ids:
        row = session.get(Platform, found[0].id)
        assert row is not None
        add_deployment(session, row, DEPLOYMENT_ID)
        session.commit()
        current_services().registrations.clear()


def _placements() -> list[dict[str, Any]]:
    raw = current_services().redis.lrange(PLACEMENTS_KEY, 0, -1)
    return [json.loads(item) for item in raw]


def _storage_on() -> bool:
    """Whether this course page offers platform storage: yes unless ``storage=0``."""
    return request.args.get("storage", "1") != "0"


@bp.get("/")
def home() -> str:
    with current_services().db.transaction() as session:
        ensure_registered(session)
    platform = demo_platform()
    other = demo_platforms().other(platform)
    return render_template(
        "demo_lms/home.html",
        users=USERS,
        course=COURSE,
        exercises=EXERCISES,
        placements=_placements(),
        platform=platform,
        other_site=None if other is None else other.lms_url,
        storage=_storage_on(),
        storage_frame=STORAGE_FRAME,
        tools=dynreg.tools(current_services().redis, platform),
        default_client=CLIENT_ID,
    )


@bp.get("/storage")
def storage_frame() -> str:
    """The course page's hidden storage frame: answers lti.put_data / lti.get_data from
    Lifeline's origin only, on the origin of the LMS's authorization endpoint (the spec's
    rule, so the tool knows where to post)."""
    return render_template("demo_lms/storage.html", tool_origin=demo_platform().tool_origin)


@bp.get("/start")
def start() -> str:
    """The LMS side of 'open the tool': post a third-party login initiation to Lifeline."""
    user = USERS.get(request.args.get("user", ""))
    if user is None:
        abort(400, description="Unknown demo user: choose learner, instructor or tutor.")
    exercise = request.args.get("exercise", "ex1")
    placement = request.args.get("placement", "")
    title = ""
    for item in _placements():
        if item["id"] == placement:
            title = item["title"]
    if exercise not in EXERCISES and not title:
        abort(400, description="Unknown demo exercise.")
    platform = demo_platform()
    deep_link = request.args.get("deep_link") == "1"
    client_id, deployment_id = _client(platform, "" if deep_link else request.args.get("client"))
    hint = {
        "user": user.key,
        "exercise": placement or exercise,
        "title": title,
        "deep_link": deep_link,
        "client_id": client_id,
        "deployment_id": deployment_id,
    }
    with current_services().db.transaction() as session:
        ensure_registered(session)
    hint_id = platform.new_hint_id()
    current_services().redis.set("demo-lms:hint:" + hint_id, json.dumps(hint), ex=HINT_TTL)
    return render_template(
        "lti/autopost.html",
        action=platform.base_url + "/lti/login",
        fields=platform.login_params(
            user, hint_id, _storage_on(), client_id=client_id, deployment_id=deployment_id
        ),
        message="Opening Lifeline…",
    )


def _client(platform: DemoPlatform, client_id: str | None) -> tuple[str, str]:
    """The registration a launch goes through: the one ``lifeline demo`` makes, or a tool
    registered dynamically on the LMS admin page (``?client=``)."""
    if not client_id or client_id == CLIENT_ID:
        return CLIENT_ID, DEPLOYMENT_ID
    tool = dynreg.find_tool(current_services().redis, platform, client_id)
    if tool is None:
        abort(400, description="Unknown registration: register Lifeline again (LMS admin page).")
    return tool.client_id, tool.deployment_id


def _auth_error(redirect_uri: str, state: str, error: str, description: str) -> str:
    """An OIDC error post-back to the tool, as real platforms send it."""
    return render_template(
        "lti/autopost.html",
        action=redirect_uri,
        fields={"error": error, "error_description": description, "state": state},
        message="Returning to Lifeline…",
    )


@bp.route("/auth", methods=["GET", "POST"])
def auth() -> str | tuple[str, int]:
    """The platform's OIDC authorization endpoint: checks the request, signs the id_token."""
    params = request.values
    platform = demo_platform()
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri != platform.launch_url:
        return render_template(
            "errors/error.html",
            status=400,
            title="Demo LMS: unregistered redirect_uri",
            detail=f"The tool asked to return to {redirect_uri!r}, which is not registered.",
            hint="",
        ), 400
    state = params.get("state", "")
    checks = {
        "scope": "openid",
        "response_type": "id_token",
        "response_mode": "form_post",
        "prompt": "none",
    }
    for name, expected in checks.items():
        if params.get(name) != expected:
            return _auth_error(redirect_uri, state, "invalid_request", f"{name} must be {expected}")
    if not params.get("nonce"):
        return _auth_error(redirect_uri, state, "invalid_request", "nonce is required")
    user = USERS.get(params.get("login_hint", ""))
    raw_hint = current_services().redis.getdel(
        "demo-lms:hint:" + params.get("lti_message_hint", "")
    )
    if user is None or raw_hint is None:
        return _auth_error(redirect_uri, state, "login_required", "the demo LMS session expired")
    hint = json.loads(raw_hint)
    client_id = hint.get("client_id") or CLIENT_ID
    if params.get("client_id") != client_id:
        return _auth_error(redirect_uri, state, "invalid_request", f"client_id must be {client_id}")
    data = ""
    if hint.get("deep_link"):
        data = platform.new_data()
        current_services().redis.set("demo-lms:dl-data:" + data, "1", ex=HINT_TTL)
    token = platform.id_token(user, params["nonce"], hint, data)
    return render_template(
        "lti/autopost.html",
        action=redirect_uri,
        fields={"id_token": token, "state": state},
        message="Launching Lifeline…",
    )


@bp.get("/jwks")
def jwks() -> Response:
    response = jsonify(demo_platform().jwks())
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


def _refused(exc: Refused) -> tuple[Response, int]:
    response = jsonify({"error": exc.error, "error_description": exc.description})
    if exc.status == 401 and exc.error == "invalid_token":
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    response.headers["Cache-Control"] = "no-store"
    return response, exc.status


@bp.post("/token")
def token() -> tuple[Response, int]:
    """OAuth 2 client credentials with a client assertion signed by Lifeline's key (only the
    registration ``lifeline demo`` makes is granted services)."""
    platform = demo_platform()
    form = {k: v for k, v in request.form.items() if isinstance(v, str)}
    try:
        answer = platform.services.issue(form, _tool_jwks(), CLIENT_ID, platform.token_url)
    except Refused as exc:
        return _refused(exc)
    response = jsonify(answer)
    response.headers["Cache-Control"] = "no-store"
    return response, 200


def _membership(user: DemoUser) -> dict[str, Any]:
    return {
        "status": "Active",
        "user_id": user.sub,
        "name": user.name,
        "given_name": user.given_name,
        "family_name": user.family_name,
        "email": user.email,
        "roles": list(user.roles),
    }


@bp.get("/nrps/<context_id>/memberships")
def memberships(context_id: str) -> tuple[Response, int]:
    """Names and Role Provisioning: the demo course's people, ``limit`` per page."""
    platform = demo_platform()
    try:
        platform.services.check_bearer(request.headers.get("Authorization"), SCOPE_NRPS)
    except Refused as exc:
        return _refused(exc)
    if context_id != COURSE["id"]:
        return jsonify({"error": "not_found", "error_description": "no such course"}), 404
    limit = request.args.get("limit", type=int) or 100
    page = request.args.get("p", type=int) or 0
    if limit < 1 or page < 0:
        return jsonify({"error": "invalid_request", "error_description": "bad paging"}), 400
    people = [_membership(user) for user in USERS.values()]
    response = jsonify(
        {
            "id": platform.memberships_url,
            "context": {k: COURSE[k] for k in ("id", "label", "title")},
            "members": people[page * limit : (page + 1) * limit],
        }
    )
    response.headers["Content-Type"] = NRPS_MEDIA
    if (page + 1) * limit < len(people):
        following = urlencode({"limit": limit, "p": page + 1})
        response.headers["Link"] = f'<{platform.memberships_url}?{following}>; rel="next"'
    return response, 200


def _ags_guard(context_id: str, scope: str) -> tuple[Response, int] | None:
    try:
        demo_platform().services.check_bearer(request.headers.get("Authorization"), scope)
    except Refused as exc:
        return _refused(exc)
    if context_id != COURSE["id"]:
        return jsonify({"error": "not_found", "error_description": "no such course"}), 404
    return None


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


@bp.route("/ags/<context_id>/lineitems", methods=["GET", "POST"])
def lineitems(context_id: str) -> tuple[Response, int]:
    """Assignment and Grade Services: the course's line items (``?tag=``), or a new one."""
    platform = demo_platform()
    refused = _ags_guard(context_id, SCOPE_LINEITEM)
    if refused is not None:
        return refused
    if request.method == "GET":
        response = jsonify(platform.services.find_lineitems(request.args.get("tag")))
        response.headers["Content-Type"] = LINEITEMS_MEDIA
        return response, 200
    if _media(request.content_type) != LINEITEM_MEDIA:
        return jsonify({"error": "invalid_request", "error_description": "Content-Type"}), 415
    try:
        item = platform.services.add_lineitem(
            request.get_json(force=True, silent=True), platform.lineitems_url
        )
    except Refused as exc:
        return _refused(exc)
    response = jsonify(item)
    response.headers["Content-Type"] = LINEITEM_MEDIA
    return response, 201


@bp.post("/ags/<context_id>/lineitems/<int:number>/scores")
def scores(context_id: str, number: int) -> tuple[Response, int]:
    platform = demo_platform()
    refused = _ags_guard(context_id, SCOPE_SCORE)
    if refused is not None:
        return refused
    if _media(request.content_type) != SCORE_MEDIA:
        return jsonify({"error": "invalid_request", "error_description": "Content-Type"}), 415
    try:
        platform.services.add_score(
            f"{platform.lineitems_url}/{number}", request.get_json(force=True, silent=True)
        )
    except Refused as exc:
        return _refused(exc)
    return Response(status=204), 204


@bp.get("/gradebook")
def gradebook() -> str:
    """The course's gradebook as the LMS shows it to the teacher (demo: to anyone)."""
    platform = demo_platform()
    names = {user.sub: user.name for user in USERS.values()}
    return render_template(
        "demo_lms/gradebook.html",
        course=COURSE,
        platform=platform,
        items=platform.services.gradebook(),
        names=names,
    )


def _tool_jwks() -> dict[str, Any]:
    """Fetch the tool's JWKS through its real endpoint (in-process: the demo is one process)."""
    with current_app.test_client() as client:
        result: dict[str, Any] = client.get("/lti/jwks").get_json()
        return result


@bp.post("/deep-link-return")
def deep_link_return() -> str | tuple[str, int]:
    token = request.form.get("JWT", "")
    platform = demo_platform()
    try:
        import jwt

        unverified = jwt.decode(token, options={"verify_signature": False})
        data = unverified.get("https://purl.imsglobal.org/spec/lti-dl/claim/data")
        if not isinstance(data, str) or not current_services().redis.getdel(
            "demo-lms:dl-data:" + data
        ):
            raise ValueError("unknown or reused deep linking data")
        claims = platform.verify_deep_link_response(token, _tool_jwks(), data)
    except (ValueError, jwt.PyJWTError) as exc:
        return render_template(
            "errors/error.html",
            status=400,
            title="Demo LMS rejected the deep linking response",
            detail=str(exc),
            hint="",
        ), 400
    items = claims.get("https://purl.imsglobal.org/spec/lti-dl/claim/content_items", [])
    placed = []
    for item in items:
        if item.get("type") == "ltiResourceLink":
            entry = {
                "id": "placed-" + platform.new_hint_id()[:8],
                "title": item.get("title", "Lifeline help"),
                "text": item.get("text", ""),
                "url": item.get("url", ""),
            }
            current_services().redis.rpush(PLACEMENTS_KEY, json.dumps(entry))
            placed.append(entry)
    return render_template("demo_lms/placed.html", placed=placed)


# -- the LMS's admin page: install Lifeline by LTI Dynamic Registration ---------------------


def _lms_admin_page(error: str | None = None, registering: str | None = None) -> str:
    platform = demo_platform()
    return render_template(
        "demo_lms/admin.html",
        platform=platform,
        tools=dynreg.tools(current_services().redis, platform),
        tool_url=request.form.get("tool_url") or platform.base_url + "/lti/register",
        lifeline_admin=platform.base_url + "/admin/",
        error=error,
        registering=registering,
    )


@bp.get("/lms-admin/")
def lms_admin() -> str:
    return _lms_admin_page()


@bp.post("/lms-admin/register")
def lms_admin_register() -> str | tuple[str, int]:
    """Open the tool's registration URL in a frame, with this LMS's configuration URL and a
    fresh registration token, as Canvas's or Moodle's "register a tool by URL" does."""
    platform = demo_platform()
    tool_url = request.form.get("tool_url", "").strip()
    parts = urlsplit(tool_url)
    if parts.scheme not in {"http", "https"} or origin_of(tool_url) != platform.tool_origin:
        return _lms_admin_page(
            f"The demo LMS can install only the Lifeline it runs with: give a URL on "
            f"{platform.tool_origin}, such as {platform.base_url}/lti/register."
        ), 400
    token = dynreg.new_token(current_services().redis, platform)
    query = urlencode(
        {"openid_configuration": dynreg.configuration_url(platform), "registration_token": token}
    )
    return _lms_admin_page(registering=f"{tool_url}{'&' if parts.query else '?'}{query}")


def _token_refused() -> tuple[Response, int]:
    response = jsonify(
        {
            "error": "invalid_token",
            "error_description": "the registration token is unknown, expired or already used",
        }
    )
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response, 401


@bp.get("/registration/configuration")
def registration_configuration() -> Response | tuple[Response, int]:
    """The platform's OpenID configuration; like Canvas, only with the registration token."""
    platform = demo_platform()
    token = dynreg.bearer(request.headers.get("Authorization"))
    if not dynreg.token_is_valid(current_services().redis, platform, token, consume=False):
        return _token_refused()
    return jsonify(dynreg.configuration(platform))


@bp.post("/registration/register")
def registration_register() -> tuple[Response, int]:
    platform = demo_platform()
    token = dynreg.bearer(request.headers.get("Authorization"))
    if not dynreg.token_is_valid(current_services().redis, platform, token, consume=True):
        return _token_refused()
    if (request.content_length or 0) > dynreg.MAX_BODY:
        return jsonify({"error": "invalid_client_metadata", "error_description": "too large"}), 400
    try:
        answer = dynreg.register_tool(
            current_services().redis, platform, request.get_json(silent=True)
        )
    except dynreg.RegistrationRefused as exc:
        return jsonify({"error": "invalid_client_metadata", "error_description": str(exc)}), 400
    return jsonify(answer), 200
