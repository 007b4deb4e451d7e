"""LTI Dynamic Registration 1.0, the tool's side: read the platform's OpenID configuration,
describe Lifeline in the platform's terms, post the registration, read the client id back.

The flow (https://www.imsglobal.org/spec/lti-dr/v1p0): the LMS opens ``/lti/register`` with
``openid_configuration`` (a URL) and usually ``registration_token``; the tool GETs the
configuration, POSTs its registration to the ``registration_endpoint`` with the token as a
Bearer header, and gets back a ``client_id`` (and, from some platforms, a ``deployment_id``).

Everything here is plain functions over values; ``web/registration.py`` keeps the state
between the confirmation page and the Register button, and stores the result.

What real platforms do, and what this module therefore accepts:
- Canvas refuses the configuration GET without the token as a Bearer header, answers the
  registration without a deployment id (the deployment appears when the admin installs the
  app), and understands ``https://canvas.instructure.com/lti/...`` extensions (placements,
  privacy level) that make the tool usable without editing the developer key by hand.
- Moodle lists ``messages_supported`` as plain strings, not objects.
- Brightspace (product family ``desire2learn``) names a token audience of its own in
  ``authorization_server`` and creates the tool disabled, so its admin must enable it.
  It may also send no registration token at all (the token is optional in the spec).
- Blackboard's developer portal uses one issuer (``https://blackboard.com``) for every
  customer and serves its configuration from ``developer.blackboard.com``; every
  registration there is another client id under the same issuer. The spec asks for the
  configuration URL to be on the issuer's host; a subdomain of it is accepted too, for this.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from . import tool_config
from .registry import RegistrationError, check_url
from .tool_config import ToolUrls

log = logging.getLogger(__name__)

PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
CANVAS_EXTENSION = "https://canvas.instructure.com/lti/"
MAX_DOCUMENT_BYTES = 256 * 1024  # a platform configuration is a few kB; Canvas's is ~20 kB
MAX_URL = 2000
MAX_TOKEN = 8192
ERROR_EXCERPT = 300  # characters of a platform's error body shown to the admin
_TOKEN = re.compile(r"[\x21-\x7e]+")  # a Bearer token: visible ASCII, nothing to split a header
_TAG = re.compile(r"<[^>]{0,500}>")
_SPACE = re.compile(r"\s+")

# Product family codes as platforms send them (lowercased) -> what an admin calls the LMS.
PRODUCTS = {
    "canvas": "Canvas",
    "moodle": "Moodle",
    "desire2learn": "Brightspace",
    "brightspace": "Brightspace",
    "d2l": "Brightspace",
    "blackboardlearn": "Blackboard Learn",
    "blackboard": "Blackboard Learn",
    "sakai": "Sakai",
    "schoology": "Schoology",
    "openedx": "Open edX",
    "open_edx": "Open edX",
}

# Where Lifeline asks to appear. Canvas: its own placement names, from ``tool_config`` (the
# same list the manual Canvas configuration uses). Every other platform: the spec's names
# (ContentArea, RichTextEditor). Only placements the platform lists are asked for, when it
# lists any.
PLACEMENTS: dict[str, tuple[str, ...]] = {
    tool_config.MESSAGE_RESOURCE_LINK: (),
    tool_config.MESSAGE_DEEP_LINKING: ("ContentArea",),
}
CANVAS_PLACEMENTS: dict[str, tuple[str, ...]] = {
    message_type: tuple(p.name for p in tool_config.PLACEMENTS if p.message_type == message_type)
    for message_type in (tool_config.MESSAGE_RESOURCE_LINK, tool_config.MESSAGE_DEEP_LINKING)
}

# The words an admin reads for each scope on the confirmation page.
SCOPE_PURPOSES = {
    tool_config.SCOPE_NRPS: "read the course roster (tutors and learners by role)",
    tool_config.SCOPE_AGS_LINEITEM: "create a gradebook column for tutoring participation",
    tool_config.SCOPE_AGS_RESULT: "read that column's results",
    tool_config.SCOPE_AGS_SCORE: "report completed tutoring sessions to that column",
}


class RegistrationProblem(Exception):
    """Why a dynamic registration stopped, in words for the LMS admin in front of it.

    Always a 4xx: the admin (or the platform behind their request) can fix it, Lifeline
    cannot. ``retry`` says whether pressing Register again may help (the token still holds).
    """

    def __init__(
        self, code: str, title: str, detail: str, hint: str = "", *, retry: bool = False
    ) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = 400
        self.code = code
        self.title = title
        self.detail = detail
        self.hint = hint
        self.retry = retry


CONFIG_TITLE = "Lifeline could not use the LMS's configuration"
REFUSED_TITLE = "The LMS refused Lifeline's registration"
EXPIRED_TITLE = "The registration token has expired"
ANSWER_TITLE = "The LMS's answer to the registration is unusable"
UNREACHABLE_TITLE = "Lifeline could not reach the LMS to register"
START_AGAIN = "Start the registration again from the LMS (the registration token is valid once)."


def _config_problem(code: str, detail: str, hint: str = "") -> RegistrationProblem:
    return RegistrationProblem(
        code,
        CONFIG_TITLE,
        detail,
        hint
        or "Check that the LMS supports LTI Dynamic Registration 1.0 and that Lifeline can "
        "reach it, then start again from the LMS.",
    )


def _network_problem(what: str, code: str, detail: str, hint: str) -> RegistrationProblem:
    """A failed exchange: reading the configuration, or posting the registration (after
    which the token may still hold, so pressing Register again can work)."""
    if what == "registration":
        return RegistrationProblem(
            code,
            UNREACHABLE_TITLE,
            detail + " Nothing was stored.",
            "Press Register again in a moment. If the LMS then lists Lifeline twice, remove "
            "the extra registration there.",
            retry=True,
        )
    return _config_problem(code, detail, hint)


# -- the request from the LMS -------------------------------------------------------------------


def check_start(openid_configuration: str, registration_token: str) -> tuple[str, str | None]:
    """The two query parameters the LMS opens ``/lti/register`` with, checked."""
    url = openid_configuration.strip()
    if not url:
        raise _config_problem(
            "missing_openid_configuration",
            "The registration link has no openid_configuration parameter.",
            'Open this page from the LMS\'s "register a tool by URL" screen (Dynamic '
            "Registration); it adds the parameters Lifeline needs.",
        )
    if len(url) > MAX_URL or "\x00" in url:
        raise _config_problem(
            "invalid_openid_configuration", "The openid_configuration parameter is too long."
        )
    try:
        check_url("openid_configuration", url)
    except RegistrationError as exc:
        raise _config_problem("invalid_openid_configuration", str(exc)) from None
    if urlsplit(url).fragment:
        raise _config_problem(
            "invalid_openid_configuration", "The openid_configuration URL carries a #fragment."
        )
    token = registration_token.strip()
    if token and (len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token)):
        raise _config_problem(
            "invalid_registration_token",
            "The registration_token parameter is not a token (too long, or it contains spaces "
            "or control characters).",
            START_AGAIN,
        )
    return url, token or None


# -- HTTP ---------------------------------------------------------------------------------------


def new_http() -> requests.Session:
    http = requests.Session()
    http.headers["User-Agent"] = "Lifeline-LTI/1.0 (dynamic registration)"
    http.trust_env = False  # the platform's address, not a proxy from the environment
    return http


def _check_address(url: str, what: str) -> None:
    """Refuse hosts that resolve to link-local, multicast or reserved addresses.

    Anyone who can open /lti/register chooses the URL Lifeline fetches; link-local is where
    cloud metadata services live (169.254.169.254). Loopback and private addresses stay
    allowed: a campus LMS on the same network is a real installation (and tests use 127.0.0.1).
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise _config_problem(
            f"{what}_unreachable", f"The host {host!r} of {shown(url)} does not resolve."
        ) from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if (
            address.is_link_local
            or address.is_multicast
            or address.is_unspecified
            or address.is_reserved
        ):
            raise _config_problem(
                f"{what}_forbidden_address",
                f"{shown(url)} points at {address}, an address Lifeline does not contact.",
            )


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    content_type: str


def _exchange(
    http: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float,
    what: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> HttpAnswer:
    """One request with a connect/read timeout, an overall deadline, a size limit and no
    redirects (a redirect could lead anywhere; platforms give the final URL)."""
    _check_address(url, what)
    deadline = time.monotonic() + timeout * 2
    try:
        with http.request(
            method,
            url,
            headers=headers,
            data=body,
            timeout=(timeout, timeout),
            stream=True,
            allow_redirects=False,
        ) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_DOCUMENT_BYTES:
                raise _too_large(url, what)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_content(16384):
                size += len(chunk)
                if size > MAX_DOCUMENT_BYTES:
                    raise _too_large(url, what)
                if time.monotonic() > deadline:
                    raise requests.Timeout()
                chunks.append(chunk)
            return HttpAnswer(
                response.status_code, b"".join(chunks), response.headers.get("Content-Type", "")
            )
    except requests.Timeout:
        raise _network_problem(
            what,
            f"{what}_timeout",
            f"{shown(url)} did not answer within {timeout:g} seconds.",
            "The LMS may be busy or unreachable from Lifeline's network; try again in a "
            "moment from the LMS.",
        ) from None
    except requests.RequestException as exc:
        reason = type(exc).__name__
        raise _network_problem(
            what,
            f"{what}_unreachable",
            f"Lifeline could not connect to {shown(url)} ({reason}).",
            "Check that the LMS is reachable from the server Lifeline runs on (firewall, "
            "DNS, TLS certificate), then start again from the LMS.",
        ) from None


def _too_large(url: str, what: str) -> RegistrationProblem:
    return _network_problem(
        what,
        f"{what}_too_large",
        f"{shown(url)} answered with more than {MAX_DOCUMENT_BYTES} bytes.",
        "",
    )


def _loads(body: bytes) -> Any:
    """The JSON document in ``body``. Raises ValueError if it is not JSON, or if it escapes
    an unpaired surrogate ("\\ud800"): no page, log line or database row can hold that
    text, and a valid JSON text (RFC 8259) has none. RecursionError: nested too deep."""
    document = json.loads(body.decode("utf-8"))
    json.dumps(document, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: ValueError
    return document


def _json(answer: HttpAnswer, url: str, what: str) -> Any:
    try:
        return _loads(answer.body)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise _config_problem(
            f"{what}_not_json",
            f"{shown(url)} did not answer with JSON "
            f"(Content-Type {answer.content_type[:80] or 'none'!r}).",
        ) from None


def shown(url: str) -> str:
    """``url`` without its query, for pages and logs: platforms put tokens there (Canvas's
    configuration URL, Blackboard's registration endpoint carry the registration token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?…" if parts.query else "")


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": "Bearer " + token} if token else {}


# -- the platform's configuration ---------------------------------------------------------------


@dataclass(frozen=True)
class PlatformConfiguration:
    """What Lifeline needs from the platform's OpenID configuration, validated."""

    url: str
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    registration_endpoint: str
    token_audience: str | None
    product_family_code: str
    version: str
    messages: Mapping[str, tuple[str, ...] | None]  # type -> placements (None: not listed)
    variables: frozenset[str]
    scopes_supported: frozenset[str] | None  # None: the platform does not say
    account_name: str | None

    @property
    def family(self) -> str:
        return self.product_family_code.strip().lower()

    @property
    def product(self) -> str:
        return PRODUCTS.get(self.family, self.product_family_code[:60] or "LMS")

    @property
    def is_canvas(self) -> bool:
        return self.family == "canvas"

    @property
    def is_brightspace(self) -> bool:
        return PRODUCTS.get(self.family) == "Brightspace"

    @property
    def is_blackboard(self) -> bool:
        return PRODUCTS.get(self.family) == "Blackboard Learn"

    @property
    def suggested_name(self) -> str:
        where = self.account_name or urlsplit(self.issuer).netloc
        return f"{self.product} ({where})"[:200]

    def supports(self, message_type: str) -> bool:
        return message_type in self.messages


def _on_issuer_site(url: str, issuer: str) -> bool:
    """``url``'s host is the issuer's host or a subdomain of it."""
    host = (urlsplit(url).hostname or "").lower()
    issuer_host = (urlsplit(issuer).hostname or "").lower()
    return bool(issuer_host) and (host == issuer_host or host.endswith("." + issuer_host))


def _field(document: Mapping[str, Any], name: str, where: str = "") -> str:
    value = document.get(name)
    label = f"{where}{name}"
    if value is None or value == "":
        raise _config_problem(
            f"configuration_missing_{name}", f"The LMS's configuration has no {label!r}."
        )
    if not isinstance(value, str):
        raise _config_problem(
            f"configuration_invalid_{name}", f"The LMS's configuration field {label!r} is not text."
        )
    if len(value) > MAX_URL or "\x00" in value:
        raise _config_problem(
            f"configuration_invalid_{name}",
            f"The LMS's configuration field {label!r} is too long.",
        )
    return value


def _url_field(document: Mapping[str, Any], name: str) -> str:
    value = _field(document, name)
    try:
        return check_url(name, value)
    except RegistrationError as exc:
        raise _config_problem(f"configuration_invalid_{name}", str(exc)) from None


def _strings(value: Any, name: str, limit: int = 500) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _config_problem(
            f"configuration_invalid_{name}",
            f"The LMS's configuration field {name!r} is not a list of text values.",
        )
    return [v for v in value[:limit] if len(v) <= 500]


def _messages(value: Any) -> dict[str, tuple[str, ...] | None]:
    where = f"{PLATFORM_CONFIGURATION} messages_supported"
    if not isinstance(value, list) or not value:
        raise _config_problem(
            "configuration_missing_messages_supported",
            f"The LMS's configuration has no {where!r} list.",
        )
    messages: dict[str, tuple[str, ...] | None] = {}
    for number, entry in enumerate(value[:100], start=1):
        if isinstance(entry, str) and entry:  # Moodle: ["LtiResourceLinkRequest", ...]
            messages.setdefault(entry[:100], None)
        elif isinstance(entry, dict) and isinstance(entry.get("type"), str) and entry["type"]:
            placements = entry.get("placements")
            messages[entry["type"][:100]] = (
                tuple(p for p in placements[:200] if isinstance(p, str) and len(p) <= 200)
                if isinstance(placements, list)
                else None
            )
        else:
            raise _config_problem(
                "configuration_invalid_messages_supported",
                f"Entry {number} of {where!r} is neither a message type nor an object with a "
                "'type'.",
            )
    return messages


def parse_configuration(document: Any, url: str) -> PlatformConfiguration:
    """Validate the platform's OpenID configuration document read from ``url``."""
    if not isinstance(document, dict):
        raise _config_problem(
            "configuration_not_object", f"{shown(url)} did not answer with a JSON object."
        )
    issuer = _field(document, "issuer")
    try:
        check_url("issuer", issuer)
    except RegistrationError as exc:
        raise _config_problem("configuration_invalid_issuer", str(exc)) from None
    parts = urlsplit(issuer)
    if parts.query or parts.fragment:
        raise _config_problem(
            "configuration_invalid_issuer",
            f"The issuer {issuer!r} carries a query or fragment, which an issuer must not.",
        )
    if not _on_issuer_site(url, issuer):
        raise _config_problem(
            "issuer_mismatch",
            f"The configuration was read from {urlsplit(url).hostname}, but names the issuer "
            f"{issuer!r}: the configuration URL must be on the issuer's host.",
            "This protects against a page that impersonates another LMS. If the LMS is yours, "
            "check its configured issuer (e.g. Canvas's lti_iss) and start again.",
        )
    endpoints = {
        name: _url_field(document, name)
        for name in (
            "authorization_endpoint",
            "token_endpoint",
            "jwks_uri",
            "registration_endpoint",
        )
    }
    if not _on_issuer_site(endpoints["registration_endpoint"], issuer):
        raise _config_problem(
            "configuration_invalid_registration_endpoint",
            f"The registration endpoint {shown(endpoints['registration_endpoint'])!r} is not "
            f"on the issuer's host ({parts.hostname}).",
        )
    methods = _strings(document.get("token_endpoint_auth_methods_supported"), "auth methods")
    if methods and "private_key_jwt" not in methods:
        raise _config_problem(
            "configuration_no_private_key_jwt",
            "The LMS does not accept private_key_jwt at its token endpoint, which LTI 1.3 "
            f"requires (it lists {', '.join(methods[:5])}).",
        )
    algorithms = _strings(document.get("id_token_signing_alg_values_supported"), "algorithms")
    if algorithms and "RS256" not in algorithms:
        raise _config_problem(
            "configuration_no_rs256",
            f"The LMS does not sign with RS256, which LTI 1.3 requires (it lists "
            f"{', '.join(algorithms[:5])}).",
        )
    platform = document.get(PLATFORM_CONFIGURATION)
    if not isinstance(platform, dict):
        raise _config_problem(
            "configuration_missing_platform_configuration",
            f"The LMS's configuration has no {PLATFORM_CONFIGURATION!r} object, so it is not an "
            "LTI platform configuration.",
        )
    family = _field(platform, "product_family_code", "lti-platform-configuration ")
    version = platform.get("version")
    scopes = document.get("scopes_supported")
    audience = document.get("authorization_server")
    account_name = platform.get(CANVAS_EXTENSION + "account_name")
    token_endpoint = endpoints["token_endpoint"]
    return PlatformConfiguration(
        url=url,
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=token_endpoint,
        jwks_uri=endpoints["jwks_uri"],
        registration_endpoint=endpoints["registration_endpoint"],
        # The spec: the audience of token requests is authorization_server when given,
        # else the token endpoint. Brightspace's differs; most platforms send none.
        token_audience=(
            audience[:1000]
            if isinstance(audience, str) and audience and audience != token_endpoint
            else None
        ),
        product_family_code=family[:100],
        version=version[:100] if isinstance(version, str) else "",
        messages=_messages(platform.get("messages_supported")),
        variables=frozenset(_strings(platform.get("variables"), "variables", 2000)),
        scopes_supported=(
            frozenset(_strings(scopes, "scopes_supported")) if scopes is not None else None
        ),
        account_name=(
            account_name[:120] if isinstance(account_name, str) and account_name.strip() else None
        ),
    )


def fetch_configuration(
    url: str, token: str | None, timeout: float, http: requests.Session | None = None
) -> tuple[PlatformConfiguration, dict[str, Any]]:
    """GET and validate the configuration; also returns the document, to keep until the
    admin presses Register (so the platform is asked once, and the token is not re-sent)."""
    answer = _exchange(
        http or new_http(),
        "GET",
        url,
        timeout=timeout,
        what="configuration",
        headers={"Accept": "application/json", **_bearer(token)},
    )
    if answer.status in (401, 403):
        raise RegistrationProblem(
            "registration_token_rejected",
            EXPIRED_TITLE,
            f"The LMS refused to show its configuration (HTTP {answer.status}): "
            + (
                "the registration token has expired or was already used."
                if token
                else "it expects a registration token, and the link carried none."
            ),
            START_AGAIN,
        )
    if answer.status != 200:
        raise _config_problem(
            "configuration_http_error",
            f"{shown(url)} answered HTTP {answer.status}"
            + (
                " (a redirect; Lifeline needs the final URL)."
                if 300 <= answer.status < 400
                else "."
            ),
        )
    document = _json(answer, url, "configuration")
    return parse_configuration(document, url), document


# -- what Lifeline asks for ---------------------------------------------------------------------


def requested_scopes(config: PlatformConfiguration) -> tuple[str, ...]:
    """Lifeline's scopes, limited to those the platform offers when it lists them."""
    if config.scopes_supported is None:
        return tool_config.SCOPES
    return tuple(s for s in tool_config.SCOPES if s in config.scopes_supported)


def custom_parameters(config: PlatformConfiguration) -> dict[str, str]:
    """Custom parameters, without substitution variables the platform says it lacks."""
    wanted = (
        tool_config.CANVAS_CUSTOM_PARAMETERS if config.is_canvas else tool_config.CUSTOM_PARAMETERS
    )
    if not config.variables:
        return dict(wanted)
    return {
        name: value
        for name, value in wanted.items()
        if not value.startswith("$") or value[1:] in config.variables
    }


def message_types(config: PlatformConfiguration) -> tuple[str, ...]:
    """Resource link launches always (every platform has them, even if it forgets to list
    them); deep linking only where the platform offers it."""
    types = [tool_config.MESSAGE_RESOURCE_LINK]
    if config.supports(tool_config.MESSAGE_DEEP_LINKING):
        types.append(tool_config.MESSAGE_DEEP_LINKING)
    return tuple(types)


def placements(config: PlatformConfiguration, message_type: str) -> tuple[str, ...]:
    wanted = (CANVAS_PLACEMENTS if config.is_canvas else PLACEMENTS).get(message_type, ())
    offered = config.messages.get(message_type)
    if offered is None:  # the platform lists no placements for it: ask for ours
        return wanted
    return tuple(p for p in wanted if p in offered)


def registration_request(config: PlatformConfiguration, urls: ToolUrls) -> dict[str, Any]:
    """The client registration Lifeline posts (OpenID Connect Dynamic Client Registration
    with the LTI tool configuration), built from ``tool_config`` like every install path."""
    messages: list[dict[str, Any]] = []
    for message_type in message_types(config):
        message: dict[str, Any] = {
            "type": message_type,
            "target_link_uri": urls.launch,
            "label": tool_config.TOOL_NAME,
            "icon_uri": urls.icon,
        }
        where = placements(config, message_type)
        if where:
            message["placements"] = list(where)
        if config.is_canvas and "course_navigation" in where:
            course_menu = next(p for p in tool_config.PLACEMENTS if p.name == "course_navigation")
            message[CANVAS_EXTENSION + "course_navigation/default_enabled"] = (
                course_menu.enabled_by_default
            )
            message[CANVAS_EXTENSION + "visibility"] = "members"
        messages.append(message)
    lti: dict[str, Any] = {
        "domain": urls.domain,
        "description": tool_config.TOOL_DESCRIPTION,
        "target_link_uri": urls.launch,
        "custom_parameters": custom_parameters(config),
        "claims": list(tool_config.CLAIMS),
        "messages": messages,
    }
    if config.is_canvas:
        # Without "public" Canvas sends neither name nor email, and tutors see only ids.
        lti[CANVAS_EXTENSION + "privacy_level"] = "public"
        lti[CANVAS_EXTENSION + "tool_id"] = "lifeline"
    return {
        "application_type": "web",
        "response_types": ["id_token"],
        "grant_types": ["implicit", "client_credentials"],
        "initiate_login_uri": urls.login,
        "redirect_uris": list(urls.redirect_uris),
        "client_name": tool_config.TOOL_NAME,
        "client_uri": urls.base_url,
        "jwks_uri": urls.jwks,
        "logo_uri": urls.icon,
        "token_endpoint_auth_method": "private_key_jwt",
        "scope": " ".join(requested_scopes(config)),
        TOOL_CONFIGURATION: lti,
    }


# -- registering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registered:
    """The platform's answer: who Lifeline is there, and where it is deployed (if it says)."""

    client_id: str
    deployment_id: str | None
    granted_scopes: tuple[str, ...] | None  # None: the platform did not echo the scopes


def error_excerpt(body: bytes) -> str:
    """A short, single-line excerpt of a platform's error answer, for the admin to read.
    Jinja escapes it on the page; markup is dropped here only so that it reads as text."""
    text = body[:20_000].decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json goes
        data = None
    if isinstance(data, dict):
        parts = [
            leaf
            for key in ("error", "error_description", "errorMessage", "message", "errors")
            for leaf in _leaves(data.get(key))
        ]
        if parts:
            text = " — ".join(parts)
    text = _SPACE.sub(" ", _TAG.sub(" ", text))
    text = "".join(c for c in text if c.isprintable()).strip()
    return text[:ERROR_EXCERPT] + ("…" if len(text) > ERROR_EXCERPT else "")


def _leaves(value: Any, depth: int = 0) -> list[str]:
    """The texts in an error value, however the platform nests them (Canvas: ``{"errors":
    {"redirect_uris": [{"message": "..."}]}}``)."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return [str(value)] if str(value) else []
    if depth > 4:
        return []
    if isinstance(value, list):
        return [leaf for item in value[:10] for leaf in _leaves(item, depth + 1)]
    if isinstance(value, dict):
        for key in ("message", "error_description", "description"):
            if isinstance(value.get(key), str) and value[key]:
                return [value[key]]
        return [
            (f"{key}: {leaf}" if isinstance(item, list) and not isinstance(key, int) else leaf)
            for key, item in list(value.items())[:10]
            for leaf in _leaves(item, depth + 1)
        ]
    return []


def _text_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, str) and value.strip() and len(value) <= 255 and "\x00" not in value:
        return value.strip()
    return None


def parse_registration(document: Any) -> Registered:
    if not isinstance(document, dict):
        raise RegistrationProblem(
            "registration_not_object",
            ANSWER_TITLE,
            "The LMS answered the registration, but not with a JSON object.",
            START_AGAIN,
        )
    client_id = _text_id(document.get("client_id"))
    if client_id is None:
        raise RegistrationProblem(
            "registration_without_client_id",
            ANSWER_TITLE,
            "The LMS accepted the registration but its answer has no usable client_id, so "
            "Lifeline cannot recognise its launches. Nothing was stored.",
            "Remove the half-made registration in the LMS, then start again from the LMS.",
        )
    lti = document.get(TOOL_CONFIGURATION)
    deployment_id = _text_id(lti.get("deployment_id")) if isinstance(lti, dict) else None
    scope = document.get("scope")
    return Registered(
        client_id=client_id,
        deployment_id=deployment_id,
        granted_scopes=tuple(scope.split()) if isinstance(scope, str) else None,
    )


def register(
    config: PlatformConfiguration,
    token: str | None,
    request_body: Mapping[str, Any],
    timeout: float,
    http: requests.Session | None = None,
) -> Registered:
    """POST the registration; the platform's refusal comes back as a RegistrationProblem."""
    url = config.registration_endpoint
    answer = _exchange(
        http or new_http(),
        "POST",
        url,
        timeout=timeout,
        what="registration",
        headers={
            "Accept": "application/json",
            "Content-Type": "application/json",
            **_bearer(token),
        },
        body=json.dumps(request_body).encode(),
    )
    if answer.status in (401, 403):
        log.info("dynamic registration at %s: token refused (HTTP %s)", shown(url), answer.status)
        raise RegistrationProblem(
            "registration_token_expired",
            EXPIRED_TITLE,
            f"The LMS did not accept the registration token (HTTP {answer.status}): it has "
            "expired or was already used. Nothing was stored.",
            START_AGAIN,
        )
    if not 200 <= answer.status < 300:
        excerpt = error_excerpt(answer.body)
        log.warning(
            "dynamic registration at %s refused: HTTP %s %s", shown(url), answer.status, excerpt
        )
        raise RegistrationProblem(
            "registration_refused",
            REFUSED_TITLE,
            f"The LMS answered HTTP {answer.status}"
            + (f": {excerpt}" if excerpt else " without saying why.")
            + " Nothing was stored.",
            "Press Register again if the LMS had a passing problem; otherwise show this "
            "message to the LMS's administrators.",
            retry=answer.status >= 500 or answer.status == 429,
        )
    try:
        document = _loads(answer.body)
    except (ValueError, RecursionError):
        raise RegistrationProblem(
            "registration_not_json",
            ANSWER_TITLE,
            "The LMS answered the registration, but not with JSON. Nothing was stored.",
            START_AGAIN,
        ) from None
    registered = parse_registration(document)
    log.info(
        "dynamic registration at %s: client %s, deployment %s",
        config.issuer,
        registered.client_id,
        registered.deployment_id,
    )
    return registered
