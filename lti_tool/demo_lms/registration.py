"""The demo LMS as an LTI Dynamic Registration 1.0 platform, so a demo user can watch Lifeline
install itself: the LMS's admin page opens Lifeline's ``/lti/register`` with
``openid_configuration`` and a ``registration_token``; Lifeline reads the configuration
(Bearer token required, as Canvas does), posts its registration here, and gets a client id and
a deployment id back. The course page can then launch Lifeline through that registration.

Like the rest of the demo LMS this plays the other side of the protocol and shares no code
with the tool's checks (``lti/dynamic_registration.py``). Registered tools live in the demo's
Redis (in-process, so they last as long as ``lifeline demo`` runs).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from redis import Redis

from .platform import DemoPlatform

PLATFORM_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-platform-configuration"
TOOL_CONFIGURATION = "https://purl.imsglobal.org/spec/lti-tool-configuration"
PRODUCT = "Demo LMS"
TOKEN_PREFIX = "demo-lms:registration-token:"  # noqa: S105 (a Redis key prefix)
TOKEN_TTL = 3600  # Canvas's registration tokens last an hour too
TOOLS_KEY = "demo-lms:registered-tools"  # hash: client_id -> RegisteredTool as JSON
MAX_BODY = 64 * 1024


class RegistrationRefused(ValueError):
    """The tool's registration is unusable; the message is the LMS's error_description."""


@dataclass(frozen=True)
class RegisteredTool:
    client_id: str
    deployment_id: str
    issuer: str
    name: str
    registered_at: int  # epoch seconds
    target_link_uri: str

    @property
    def registered(self) -> str:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.registered_at))


def configuration(platform: DemoPlatform) -> dict[str, Any]:
    """The OpenID configuration this LMS offers a tool that registers itself."""
    issuer = platform.issuer
    return {
        "issuer": issuer,
        "authorization_endpoint": issuer + "/auth",
        "token_endpoint": issuer + "/token",
        "jwks_uri": issuer + "/jwks",
        "registration_endpoint": issuer + "/registration/register",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        # The demo LMS grants its roster and gradebook only to the registration `lifeline
        # demo` makes (services.py): dynamically registered tools get no service scopes.
        "scopes_supported": ["openid"],
        "claims_supported": ["sub", "iss", "name", "given_name", "family_name", "email"],
        PLATFORM_CONFIGURATION: {
            "product_family_code": PRODUCT,
            "version": "1.0",
            "messages_supported": [{"type": "LtiResourceLinkRequest"}],
            "variables": [],
        },
    }


def configuration_url(platform: DemoPlatform) -> str:
    return platform.issuer + "/registration/configuration"


def new_token(redis: Redis, platform: DemoPlatform) -> str:
    """A registration token for one registration at ``platform`` (its issuer)."""
    token = secrets.token_urlsafe(24)
    redis.set(TOKEN_PREFIX + token, platform.issuer, ex=TOKEN_TTL)
    return token


def bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_is_valid(redis: Redis, platform: DemoPlatform, token: str, consume: bool) -> bool:
    """The token was handed out by ``platform`` and not used for a registration yet."""
    if not token:
        return False
    key = TOKEN_PREFIX + token
    issuer = redis.getdel(key) if consume else redis.get(key)
    if isinstance(issuer, bytes):
        issuer = issuer.decode()
    return issuer == platform.issuer


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise RegistrationRefused(f"{name} is missing")
    return value.strip()[:2000]


def _url(body: dict[str, Any], name: str) -> str:
    value = _text(body, name)
    if urlsplit(value).scheme not in {"http", "https"}:
        raise RegistrationRefused(f"{name} is not an http(s) URL")
    return value


def register_tool(redis: Redis, platform: DemoPlatform, body: Any) -> dict[str, Any]:
    """Check the tool's registration as an LMS would, store it, and answer with the client id
    and (in the tool configuration) the deployment id, echoing what was registered."""
    if not isinstance(body, dict):
        raise RegistrationRefused("the registration is not a JSON object")
    _url(body, "initiate_login_uri")
    _url(body, "jwks_uri")
    redirect_uris = body.get("redirect_uris")
    if not isinstance(redirect_uris, list) or not redirect_uris:
        raise RegistrationRefused("redirect_uris must list at least one URL")
    if platform.launch_url not in redirect_uris:
        raise RegistrationRefused(f"redirect_uris does not include {platform.launch_url}")
    if body.get("token_endpoint_auth_method") != "private_key_jwt":
        raise RegistrationRefused("token_endpoint_auth_method must be private_key_jwt")
    lti = body.get(TOOL_CONFIGURATION)
    if not isinstance(lti, dict):
        raise RegistrationRefused(f"{TOOL_CONFIGURATION} is missing")
    target = _url(lti, "target_link_uri")
    tool = RegisteredTool(
        client_id="demo-dynreg-" + secrets.token_hex(4),
        deployment_id="demo-dynreg-deployment-" + secrets.token_hex(3),
        issuer=platform.issuer,
        name=str(body.get("client_name") or "LTI tool")[:200],
        registered_at=int(time.time()),
        target_link_uri=target,
    )
    redis.hset(TOOLS_KEY, tool.client_id, json.dumps(asdict(tool)))
    return {
        **body,
        "client_id": tool.client_id,
        "scope": "",  # no service scopes: only `lifeline demo`'s registration gets them
        TOOL_CONFIGURATION: {**lti, "deployment_id": tool.deployment_id},
    }


def tools(redis: Redis, platform: DemoPlatform) -> list[RegisteredTool]:
    """The tools registered at ``platform``, oldest first."""
    found = []
    for raw in redis.hvals(TOOLS_KEY):
        tool = RegisteredTool(**json.loads(raw))
        if tool.issuer == platform.issuer:
            found.append(tool)
    return sorted(found, key=lambda t: (t.registered_at, t.client_id))


def find_tool(redis: Redis, platform: DemoPlatform, client_id: str) -> RegisteredTool | None:
    raw = redis.hget(TOOLS_KEY, client_id) if client_id else None
    if raw is None:
        return None
    tool = RegisteredTool(**json.loads(raw))
    return tool if tool.issuer == platform.issuer else None
