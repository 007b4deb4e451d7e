"""LMS platforms that support LTI Dynamic Registration, served over real HTTP on 127.0.0.1.

Each ``RegistrationPlatform`` lives under its own path (``/<name>/...``) of one
``RegistrationServer`` and serves what a real platform serves during a registration: its
OpenID configuration, its registration endpoint, and its JWKS (so that a launch signed with
``tests.platform``'s key verifies after registering). Its fields reproduce the quirks of real
LMSs (Canvas's Bearer-protected configuration, Moodle's string messages, Brightspace's token
audience, Blackboard's one issuer for many client ids) and the ways a registration fails.
"""

from __future__ import annotations

import html
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlencode, urlsplit

from tests.platform import _KEY, jwk_of

PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
AGS_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
AGS_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
AGS_RESULT = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
KID = "lms-key-1"  # tests.platform.TestPlatform's default kid, signing with _KEY


@dataclass
class Seen:
    """One request the platform received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class RegistrationPlatform:
    name: str
    server: RegistrationServer
    family: str = "moodle"
    version: str = "4.3"
    token: str | None = None  # the registration token this platform hands out and expects
    require_bearer: bool = False  # Canvas: the configuration GET needs the token
    messages_as_strings: bool = False  # Moodle
    authorization_server: str | None = None  # Brightspace: a token audience of its own
    scopes_supported: list[str] | None = None
    placements: dict[str, list[str]] | None = None  # per message type, as the LMS lists them
    variables: list[str] = field(default_factory=lambda: ["Context.id.history"])
    issuer_override: str | None = None
    config_overrides: dict[str, Any] = field(default_factory=dict)  # None deletes a key
    platform_overrides: dict[str, Any] = field(default_factory=dict)
    config_status: int = 200
    config_body: bytes | None = None
    config_delay: float = 0.0
    register_status: int = 200
    register_body: bytes | None = None  # raw answer instead of the normal one
    register_delay: float = 0.0
    expired_token: bool = False  # answers 401 on the registration (and config if bearer)
    omit_client_id: bool = False
    deployment_id: str | None = "deployment-1"
    client_prefix: str = ""
    tool_base: str | None = None  # where the LMS page's iframe opens the tool's /lti/register
    seen: list[Seen] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def base(self) -> str:
        return f"{self.server.base}/{self.name}"

    @property
    def issuer(self) -> str:
        return self.issuer_override or self.base

    @property
    def config_url(self) -> str:
        return self.base + "/.well-known/openid-configuration"

    def start_url(self, token: str | None = "default") -> str:
        """What the LMS opens: /lti/register with openid_configuration (and the token)."""
        params = {"openid_configuration": self.config_url}
        value = self.token if token == "default" else token
        if value:
            params["registration_token"] = value
        return "/lti/register?" + urlencode(params)

    def registrations(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def configuration(self) -> dict[str, Any]:
        messages: list[Any]
        types = ["LtiResourceLinkRequest", "LtiDeepLinkingRequest"]
        if self.messages_as_strings:
            messages = list(types)
        else:
            messages = []
            for message_type in types:
                entry: dict[str, Any] = {"type": message_type}
                if self.placements and message_type in self.placements:
                    entry["placements"] = self.placements[message_type]
                messages.append(entry)
        platform: dict[str, Any] = {
            "product_family_code": self.family,
            "version": self.version,
            "messages_supported": messages,
            "variables": self.variables,
        }
        platform.update(self.platform_overrides)
        document: dict[str, Any] = {
            "issuer": self.issuer,
            "authorization_endpoint": self.base + "/auth",
            "token_endpoint": self.base + "/token",
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
            "jwks_uri": self.base + "/jwks",
            "registration_endpoint": self.base + "/register",
            "response_types_supported": ["id_token"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "claims_supported": ["sub", "iss", "name", "email"],
            "subject_types_supported": ["public"],
            PLATFORM_CONFIGURATION: {k: v for k, v in platform.items() if v is not None},
        }
        if self.scopes_supported is not None:
            document["scopes_supported"] = self.scopes_supported
        if self.authorization_server:
            document["authorization_server"] = self.authorization_server
        document.update(self.config_overrides)
        return {k: v for k, v in document.items() if v is not None}

    # -- answers ------------------------------------------------------------------------------

    def _bearer_ok(self, headers: dict[str, str]) -> bool:
        if self.expired_token:
            return False
        if self.token is None:
            return "authorization" not in headers
        return headers.get("authorization") == f"Bearer {self.token}"

    def answer(self, method: str, rest: str, headers: dict[str, str], body: bytes) -> Answer:
        if method == "GET" and rest == "/.well-known/openid-configuration":
            if self.config_delay:
                time.sleep(self.config_delay)
            if self.require_bearer and not self._bearer_ok(headers):
                return Answer(401, b'{"errors":[{"message":"Invalid access token"}]}')
            if self.config_body is not None:
                return Answer(self.config_status, self.config_body)
            return Answer(self.config_status, json.dumps(self.configuration()).encode())
        if method == "GET" and rest == "/lms" and self.tool_base:
            page = LMS_PAGE.format(src=html.escape(self.tool_base + self.start_url(), quote=True))
            return Answer(200, page.encode(), "text/html; charset=utf-8")
        if method == "GET" and rest == "/jwks":
            return Answer(200, json.dumps({"keys": [jwk_of(_KEY, KID)]}).encode())
        if method == "POST" and rest == "/register":
            if self.register_delay:
                time.sleep(self.register_delay)
            if not self._bearer_ok(headers):
                return Answer(401, b'{"error":"invalid_token"}')
            if self.register_body is not None:
                return Answer(self.register_status, self.register_body)
            request = json.loads(body)
            client_id = f"{self.client_prefix or self.name}-client-{next(self._counter)}"
            answer = dict(request)
            if not self.omit_client_id:
                answer["client_id"] = client_id
            lti = dict(request.get(TOOL_CONFIGURATION, {}))
            if self.deployment_id:
                lti["deployment_id"] = self.deployment_id
            answer[TOOL_CONFIGURATION] = lti
            return Answer(self.register_status, json.dumps(answer).encode())
        return Answer(404, b'{"error":"not found"}')


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"


# The LMS's own page during a registration: the tool in an iframe, and a listener for the
# tool's close message (as Canvas and Moodle do: they close the dialog on it).
LMS_PAGE = """<!doctype html><html><head><title>LMS: register a tool</title></head><body>
<h1>Register a tool by URL</h1>
<iframe id="tool" title="tool" style="width:100%;height:80vh" src="{src}"></iframe>
<script>
  window.lmsMessages = [];
  window.addEventListener("message", function (event) {{
    window.lmsMessages.push({{origin: event.origin, data: event.data}});
    if (event.data && event.data.subject === "org.imsglobal.lti.close") {{
      document.getElementById("tool").remove();
      document.body.insertAdjacentHTML("beforeend", "<p id=closed>Dialog closed</p>");
    }}
  }});
</script></body></html>"""


class RegistrationServer:
    """One HTTP server on 127.0.0.1 for any number of platforms, each under /<name>."""

    def __init__(self) -> None:
        self.platforms: dict[str, RegistrationPlatform] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self, method: str) -> None:
                path = urlsplit(self.path).path
                name, _, rest = path.lstrip("/").partition("/")
                platform = server.platforms.get(name)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                if platform is None:
                    answer = Answer(404, b"{}")
                else:
                    try:
                        body: Any = json.loads(raw) if raw else None
                    except ValueError:
                        body = raw
                    platform.seen.append(Seen(method, "/" + rest, headers, body))
                    answer = platform.answer(method, "/" + rest, headers, raw)
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.content_type)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, name: str, **options: Any) -> RegistrationPlatform:
        platform = RegistrationPlatform(name=name, server=self, **options)
        self.platforms[name] = platform
        return platform

    # The LMSs as they behave (see lti_tool/lti/dynamic_registration.py for the sources).

    def canvas(self, name: str = "canvas", **changes: Any) -> RegistrationPlatform:
        types = ("LtiResourceLinkRequest", "LtiDeepLinkingRequest")
        return self.add(
            name,
            family="canvas",
            version="vCloud",
            token="canvas-registration-token",
            require_bearer=True,
            scopes_supported=[
                AGS_LINEITEM,
                AGS_RESULT,
                AGS_SCORE,
                NRPS,
                "https://canvas.instructure.com/lti/public_jwk/scope/update",
            ],
            placements=dict(
                zip(
                    types,
                    (
                        ["account_navigation", "course_navigation", "global_navigation"],
                        ["assignment_selection", "editor_button", "link_selection"],
                    ),
                    strict=True,
                )
            ),
            variables=["Canvas.course.id", "Canvas.user.id", "Context.id.history"],
            platform_overrides={
                "https://canvas.instructure.com/lti/account_name": "Test University"
            },
            deployment_id=None,  # Canvas creates the deployment when the admin installs the app
            **changes,
        )

    def moodle(self, name: str = "moodle", **changes: Any) -> RegistrationPlatform:
        return self.add(
            name,
            family="moodle",
            token="moodle-registration-token",
            messages_as_strings=True,
            scopes_supported=[AGS_LINEITEM, AGS_RESULT, AGS_SCORE, NRPS, "openid"],
            deployment_id="7",
            **changes,
        )

    def brightspace(self, name: str = "brightspace", **changes: Any) -> RegistrationPlatform:
        return self.add(
            name,
            family="desire2learn",
            version="20.24.11",
            token=None,  # Brightspace sends no registration token
            authorization_server="https://api.brightspace.com/auth/token",
            deployment_id="d2l-deployment-1",
            **changes,
        )

    def blackboard(self, name: str = "blackboard", **changes: Any) -> RegistrationPlatform:
        return self.add(
            name,
            family="BlackboardLearn",
            version="3900.112.0",
            token="blackboard-registration-token",
            deployment_id=None,  # the deployment id comes when a Learn admin deploys the tool
            client_prefix="bb",
            **changes,
        )


def closed_port_url() -> str:
    """A configuration URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/lms/.well-known/openid-configuration"
