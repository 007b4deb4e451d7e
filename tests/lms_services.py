"""A fake LMS's LTI Advantage services over real HTTP on 127.0.0.1, for tests.

* ``/token``: OAuth 2 client credentials with a client assertion. The assertion is checked the
  way a platform checks it: RS256 signature against the tool's own JWKS (read from the app's
  ``/lti/jwks``), ``kid`` in the header, ``iss`` = ``sub`` = client id, ``aud``, ``exp``,
  ``iat``, and a ``jti`` never seen before. Tokens expire (``token_expires_in``) and can be
  revoked early (``expire_tokens``).
* ``/nrps/<context>/memberships``: the roster, ``limit`` members per page with
  ``Link: rel="next"``, and on the last page a ``rel="differences"`` link that later returns
  only the members who changed (removed ones with status ``Deleted``).
* ``/ags/<context>/lineitems`` and ``.../lineitems/<n>/scores``: line items (``?tag=``) and
  the scores posted, recorded as received.
* Fault modes: ``reject_next`` answers the next N service calls with 401, ``hang`` makes
  paths sleep past any timeout, ``fail_next`` answers with a given status (and headers).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import redis
from flask import Flask
from rq import Queue, SimpleWorker

from lti_tool import jobs
from lti_tool.config import Settings
from lti_tool.db import Database
from lti_tool.lti.tool_config import (
    SCOPE_AGS_LINEITEM,
    SCOPE_AGS_RESULT,
    SCOPE_AGS_SCORE,
    SCOPE_NRPS,
)
from lti_tool.notify import notifiers_from_settings
from tests.platform import JwksServer, TestPlatform

NRPS_MEDIA = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA = "application/vnd.ims.lis.v2.lineitemcontainer+json"
SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
ALL_SCOPES = (SCOPE_NRPS, SCOPE_AGS_LINEITEM, SCOPE_AGS_RESULT, SCOPE_AGS_SCORE)
LIS = "http://purl.imsglobal.org/vocab/lis/v2/membership"
LEARNER = LIS + "#Learner"
INSTRUCTOR = LIS + "#Instructor"
TA = LIS + "/Instructor#TeachingAssistant"
MENTOR = LIS + "#Mentor"


@dataclass
class Seen:
    """One request the fake LMS received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class Issued:
    token: str
    scopes: set[str]
    expires_at: float


@dataclass
class Change:
    version: int
    context: str
    user_id: str


@dataclass
class LmsServices:
    """One LMS (issuer + client id) whose token endpoint and services tests talk to."""

    __test__ = False
    jwks: Callable[[], dict[str, Any]]  # the tool's public keys (the app's /lti/jwks)
    client_id: str = "lifeline-client-1"
    audience: str | None = None  # the token audience; default: the token URL
    token_expires_in: int = 3600
    granted_scopes: tuple[str, ...] = ALL_SCOPES
    reject_next: int = 0  # answer the next N service calls with 401
    hang: dict[str, float] = field(default_factory=dict)  # path prefix -> seconds to stall
    fail_next: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    next_override: str | None = None  # a roster page's rel="next" link, whatever it should be
    seen: list[Seen] = field(default_factory=list)
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # accepted assertions
    refused_assertions: list[str] = field(default_factory=list)
    issued: dict[str, Issued] = field(default_factory=dict)
    members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    version: int = 0
    lineitems: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    scores: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _jtis: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        lms = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                lms._handle(self, "GET")

            def do_POST(self) -> None:
                lms._handle(self, "POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    # -- addresses ------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def token_url(self) -> str:
        return self.base + "/token"

    def nrps_url(self, context: str) -> str:
        return f"{self.base}/nrps/{context}/memberships"

    def lineitems_url(self, context: str) -> str:
        return f"{self.base}/ags/{context}/lineitems"

    def stop(self) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- the roster -----------------------------------------------------------------------

    def member(
        self,
        context: str,
        user_id: str,
        name: str = "",
        roles: tuple[str, ...] = (LEARNER,),
        status: str = "Active",
        email: str = "",
        **extra: Any,
    ) -> None:
        """Add or change a member (recorded as a change for the differences link)."""
        record = {"user_id": user_id, "roles": list(roles), "status": status, **extra}
        if name:
            record["name"] = name
            given, _, family = name.partition(" ")
            record.update({"given_name": given, "family_name": family})
        if email:
            record["email"] = email
        with self._lock:
            self.members.setdefault(context, {})[user_id] = record
            self.version += 1
            self.changes.append(Change(self.version, context, user_id))

    def remove(self, context: str, user_id: str) -> None:
        """Drop a member: the full roster no longer lists them; differences say Deleted."""
        with self._lock:
            self.members.get(context, {}).pop(user_id, None)
            self.version += 1
            self.changes.append(Change(self.version, context, user_id))

    def expire_tokens(self) -> None:
        """Revoke every issued token (the tool's cache still holds them)."""
        with self._lock:
            for issued in self.issued.values():
                issued.expires_at = 0

    def calls(self, prefix: str, method: str | None = None, exact: bool = False) -> list[Seen]:
        """The requests received on paths starting with ``prefix`` (or equal, ``exact``)."""
        return [
            s
            for s in self.seen
            if (s.path == prefix if exact else s.path.startswith(prefix))
            and (method is None or s.method == method)
        ]

    # -- HTTP -----------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        seen = Seen(
            method,
            parts.path,
            parse_qs(parts.query),
            {k: v for k, v in handler.headers.items()},
            body,
        )
        with self._lock:
            self.seen.append(seen)
        for prefix, seconds in self.hang.items():
            if handler.path.startswith(prefix):  # path and query: one page may hang
                self._stop.wait(seconds)
        status, headers, payload = self._answer(seen)
        seen.status = status
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            handler.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the tool gave up waiting (a timeout test)

    def _answer(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        for prefix, queue in self.fail_next.items():
            if seen.path.startswith(prefix) and queue:
                status, headers = queue.pop(0)
                return status, headers, {"error": "injected failure"}
        if seen.path == "/token" and seen.method == "POST":
            return self._token(seen)
        if seen.path.startswith(("/nrps/", "/ags/")):
            with self._lock:
                if self.reject_next > 0:
                    self.reject_next -= 1
                    return 401, {"WWW-Authenticate": "Bearer"}, {"error": "invalid_token"}
            if seen.path.startswith("/nrps/"):
                scope_needed = SCOPE_NRPS
            elif seen.path.endswith("/scores"):
                scope_needed = SCOPE_AGS_SCORE
            else:
                scope_needed = SCOPE_AGS_LINEITEM
            problem = self._check_bearer(seen, scope_needed)
            if problem is not None:
                return problem
            if seen.path.startswith("/nrps/"):
                return self._memberships(seen)
            return self._ags(seen)
        return 404, {}, {"error": "not found"}

    # -- token endpoint -------------------------------------------------------------------

    def _token(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        form = {k: v[0] for k, v in parse_qs(seen.body.decode()).items()}

        def refuse(status: int, error: str, why: str) -> tuple[int, dict[str, str], Any]:
            self.refused_assertions.append(why)
            return status, {}, {"error": error, "error_description": why}

        if form.get("grant_type") != "client_credentials":
            return refuse(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return refuse(400, "invalid_request", "wrong client_assertion_type")
        assertion = form.get("client_assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return refuse(401, "invalid_client", "the assertion is not a JWT")
        keys = {k["kid"]: k for k in self.jwks()["keys"]}
        if header.get("alg") != "RS256" or header.get("kid") not in keys:
            return refuse(401, "invalid_client", "unknown kid or algorithm")
        key = jwt.PyJWK(keys[header["kid"]]).key
        try:
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                audience=self.audience or self.token_url,
                issuer=self.client_id,
                options={"require": ["exp", "iat", "jti", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            return refuse(401, "invalid_client", f"assertion refused: {exc}")
        if claims["sub"] != self.client_id or claims["exp"] - claims["iat"] > 600:
            return refuse(401, "invalid_client", "bad sub or lifetime")
        with self._lock:
            if claims["jti"] in self._jtis:
                return refuse(401, "invalid_client", "jti replayed")
            self._jtis.add(claims["jti"])
        scopes = set(form.get("scope", "").split())
        if not scopes or not scopes <= set(self.granted_scopes):
            return refuse(400, "invalid_scope", "scope not granted")
        token = "tok-" + secrets.token_urlsafe(16)
        with self._lock:
            self.issued[token] = Issued(token, scopes, time.time() + self.token_expires_in)
            self.token_requests.append({"claims": claims, "header": header, "scopes": scopes})
        return (
            200,
            {"Cache-Control": "no-store"},
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.token_expires_in,
                "scope": " ".join(sorted(scopes)),
            },
        )

    def _check_bearer(self, seen: Seen, scope: str) -> tuple[int, dict[str, str], Any] | None:
        auth = seen.headers.get("Authorization", "")
        token = auth[len("Bearer ") :] if auth.startswith("Bearer ") else ""
        issued = self.issued.get(token)
        if issued is None or issued.expires_at <= time.time():
            return 401, {"WWW-Authenticate": "Bearer"}, {"error": "invalid_token"}
        if scope is not None and scope not in issued.scopes:
            return 403, {}, {"error": "insufficient_scope"}
        return None

    # -- NRPS -----------------------------------------------------------------------------

    def _memberships(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        context = seen.path.split("/")[2]
        if seen.headers.get("Accept") != NRPS_MEDIA:
            return 406, {}, {"error": "wrong Accept"}
        if context not in self.members:
            return 404, {}, {"error": "no such context"}
        limit = int(seen.query.get("limit", ["1000"])[0])
        page = int(seen.query.get("p", ["0"])[0])
        since = seen.query.get("since", [None])[0]
        with self._lock:
            current = self.members[context]
            if since is None:
                listed = list(current.values())
            else:
                changed = dict.fromkeys(
                    c.user_id
                    for c in self.changes
                    if c.context == context and c.version > int(since)
                )
                listed = [
                    current.get(uid) or {"user_id": uid, "status": "Deleted", "roles": []}
                    for uid in changed
                ]
            version = self.version
        chunk = listed[page * limit : (page + 1) * limit]
        links = []
        query = {"limit": limit, **({"since": since} if since is not None else {})}
        if self.next_override is not None:
            links.append(f'<{self.next_override}>; rel="next"')
        elif (page + 1) * limit < len(listed):
            next_query = urlencode({**query, "p": page + 1})
            links.append(f'<{self.base}{seen.path}?{next_query}>; rel="next"')
        else:
            diff = urlencode({"since": version})
            links.append(f'<{self.base}{seen.path}?{diff}>; rel="differences"')
        body = {
            "id": self.base + seen.path,
            "context": {"id": context, "label": context, "title": context},
            "members": chunk,
        }
        return 200, {"Content-Type": NRPS_MEDIA, "Link": ", ".join(links)}, body

    # -- AGS ------------------------------------------------------------------------------

    def _ags(self, seen: Seen) -> tuple[int, dict[str, str], Any]:
        parts = seen.path.split("/")  # ["", "ags", context, "lineitems", n?, "scores"?]
        context = parts[2]
        items = self.lineitems.setdefault(context, [])
        if len(parts) == 4 and seen.method == "GET":
            if seen.headers.get("Accept") != LINEITEMS_MEDIA:
                return 406, {}, {"error": "wrong Accept"}
            tag = seen.query.get("tag", [None])[0]
            found = [i for i in items if tag is None or i.get("tag") == tag]
            return 200, {"Content-Type": LINEITEMS_MEDIA}, found
        if len(parts) == 4 and seen.method == "POST":
            if seen.headers.get("Content-Type") != LINEITEM_MEDIA:
                return 415, {}, {"error": "wrong Content-Type"}
            item = json.loads(seen.body)
            with self._lock:
                item["id"] = f"{self.base}/ags/{context}/lineitems/{len(items) + 1}"
                items.append(item)
            return 201, {"Content-Type": LINEITEM_MEDIA}, item
        if len(parts) == 6 and parts[5] == "scores" and seen.method == "POST":
            if seen.headers.get("Content-Type") != SCORE_MEDIA:
                return 415, {}, {"error": "wrong Content-Type"}
            item_url = f"{self.base}/ags/{context}/lineitems/{parts[4]}"
            if not any(i["id"] == item_url for i in items):
                return 404, {}, {"error": "no such line item"}
            with self._lock:
                self.scores.append((item_url, json.loads(seen.body)))
            return 204, {}, b""
        return 404, {}, {"error": "not found"}


# -- wiring for tests ----------------------------------------------------------------------------

NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"


def start_lms(app: Flask, **options: Any) -> LmsServices:
    """A fake LMS that checks client assertions against ``app``'s real /lti/jwks."""

    def tool_jwks() -> dict[str, Any]:
        document: dict[str, Any] = app.test_client().get("/lti/jwks").get_json()
        return document

    return LmsServices(jwks=tool_jwks, **options)


def register_platform(
    app: Flask, jwks_server: JwksServer, lms: LmsServices, **overrides: Any
) -> TestPlatform:
    """A TestPlatform (launches) whose token endpoint is ``lms``'s."""
    platform = TestPlatform(jwks_server, client_id=lms.client_id)
    platform.register(app, auth_token_url=lms.token_url, **overrides)
    return platform


def service_claims(
    lms: LmsServices,
    context: str = "course-1",
    *,
    nrps: bool = True,
    ags: bool = False,
    scopes: tuple[str, ...] = (SCOPE_AGS_LINEITEM, SCOPE_AGS_RESULT, SCOPE_AGS_SCORE),
) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    if nrps:
        claims[NRPS_CLAIM] = {
            "context_memberships_url": lms.nrps_url(context),
            "service_versions": ["2.0"],
        }
    if ags:
        claims[AGS_CLAIM] = {"scope": list(scopes), "lineitems": lms.lineitems_url(context)}
    return claims


def worker_context(settings: Settings, db: Database, connection: redis.Redis) -> jobs.JobContext:
    """What a worker process has: the queue on ``connection``, the app's database."""
    return jobs.JobContext(
        settings,
        db,
        notifiers_from_settings(settings),
        Queue(jobs.QUEUE_NAME, connection=connection),
    )


def run_worker(context: jobs.JobContext) -> None:
    """A real RQ worker (in this process) works the queue until it is empty."""
    assert context.queue is not None
    with jobs.bound(context):
        SimpleWorker([context.queue], connection=context.queue.connection).work(
            burst=True, logging_level="WARNING"
        )
