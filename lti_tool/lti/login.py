"""OIDC third-party login initiation: the first leg of every LTI 1.3 launch.

The platform sends iss, login_hint and target_link_uri (and often client_id,
lti_message_hint, lti_deployment_id). We answer with a redirect to the platform's auth URL
carrying a fresh ``state`` and ``nonce``. Both are kept in Redis for ``login_ttl`` seconds and
consumed atomically by the launch; ``state`` is also set as a cookie, which binds the launch
to the browser that started the login.

When the platform offers LTI Platform Storage (``lti_storage_target``), the login also asks
the browser to keep state and nonce in the platform's page, for browsers that refuse the
cookie in the LMS's iframe: see ``platform_storage.py``, which this module only prepares.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import redis
from sqlalchemy.orm import Session

from .errors import ADMIN_HINT, bad_request, forbidden
from .registry import RegistrationCache, RegistrationInfo

STATE_COOKIE_PREFIX = "lifeline-state-"
STORAGE_TARGET_PARAM = "lti_storage_target"

_FRAME_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def state_key(state: str) -> str:
    return "lifeline:state:" + state


def nonce_key(nonce: str) -> str:
    return "lifeline:nonce:" + nonce


def state_storage_key(state: str) -> str:
    """The platform storage key of a login's state (the name 1EdTech's reference uses)."""
    return "lti_state_" + state


def nonce_storage_key(nonce: str) -> str:
    return "lti_nonce_" + nonce


def platform_origin(auth_login_url: str) -> str | None:
    """The origin that holds the platform's storage: that of its OIDC authorization endpoint
    (the spec's rule), written as a browser writes ``MessageEvent.origin``."""
    parts = urlsplit(auth_login_url)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        host += f":{port}"
    return f"{parts.scheme}://{host}"


@dataclass(frozen=True)
class StorageTarget:
    """Where a platform keeps its storage: a frame name (``_parent``: the window embedding
    the tool) and the origin serving it, to which alone the tool posts data."""

    frame: str
    origin: str

    def record(self) -> dict[str, str]:
        return {"storage_target": self.frame, "storage_origin": self.origin}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StorageTarget | None:
        frame, origin = record.get("storage_target"), record.get("storage_origin")
        if isinstance(frame, str) and isinstance(origin, str):
            return cls(frame, origin)
        return None


@dataclass(frozen=True)
class StorageLogin:
    """What the login page puts into platform storage before it goes on to the platform."""

    target: StorageTarget
    state: str
    nonce: str

    @property
    def state_key(self) -> str:
        return state_storage_key(self.state)

    @property
    def nonce_key(self) -> str:
        return nonce_storage_key(self.nonce)


@dataclass(frozen=True)
class LoginRedirect:
    url: str
    state: str
    cookie_name: str
    registration: RegistrationInfo
    storage: StorageLogin | None = None  # set when the platform offers platform storage


def _storage_target(params: Mapping[str, str], auth_login_url: str) -> StorageTarget | None:
    frame = _param(params, STORAGE_TARGET_PARAM, required=False)
    if not frame:
        return None
    if not _FRAME_NAME.fullmatch(frame):
        raise bad_request(
            "invalid_lti_storage_target",
            f"The login request's {STORAGE_TARGET_PARAM!r} must be a frame name of at most 64 "
            "letters, digits, '.', '_' or '-' (or '_parent').",
            "This comes from the LMS's platform storage support; ask its administrator.",
        )
    origin = platform_origin(auth_login_url)
    return None if origin is None else StorageTarget(frame, origin)


def _param(params: Mapping[str, str], name: str, required: bool = True) -> str:
    value = params.get(name, "").strip()
    if required and not value:
        raise bad_request(
            f"missing_{name}",
            f"The login request has no {name!r} parameter.",
            "The LMS must start the launch with an OIDC login request carrying iss, "
            "login_hint and target_link_uri.",
        )
    if len(value) > 4096:
        raise bad_request(f"invalid_{name}", f"The {name!r} parameter is too long.")
    if "\x00" in value:  # PostgreSQL cannot even compare a string holding NUL
        raise bad_request(f"invalid_{name}", f"The {name!r} parameter contains a NUL character.")
    return value


def _same_site(url: str, base_url: str) -> bool:
    try:
        target, base = urlsplit(url), urlsplit(base_url)
    except ValueError:  # "http://[::1": not a URL at all, so not ours
        return False
    return (target.scheme, target.netloc) == (base.scheme, base.netloc) and (
        target.path + "/"
    ).startswith(base.path.rstrip("/") + "/")


def pick_registration(
    session: Session, cache: RegistrationCache, issuer: str, client_id: str
) -> RegistrationInfo:
    candidates = cache.by_issuer(session, issuer)
    if not candidates:
        raise forbidden(
            "unknown_issuer",
            f"No platform with issuer {issuer!r} is registered with Lifeline.",
            ADMIN_HINT,
        )
    if client_id:
        for info in candidates:
            if info.client_id == client_id:
                return info
        raise forbidden(
            "unknown_client_id",
            f"The platform {issuer!r} is registered, but not with client id {client_id!r}.",
            ADMIN_HINT,
        )
    if len(candidates) > 1:
        raise bad_request(
            "missing_client_id",
            f"Lifeline has several registrations for {issuer!r}, and the login request does "
            "not say which one (no client_id).",
            "Configure the LMS to send client_id with the login request.",
        )
    return candidates[0]


def begin_login(
    params: Mapping[str, str],
    *,
    session: Session,
    cache: RegistrationCache,
    redis_client: redis.Redis,
    base_url: str,
    login_ttl: int,
) -> LoginRedirect:
    issuer = _param(params, "iss")
    login_hint = _param(params, "login_hint")
    target_link_uri = _param(params, "target_link_uri")
    client_id = _param(params, "client_id", required=False)
    message_hint = _param(params, "lti_message_hint", required=False)
    deployment_id = _param(params, "lti_deployment_id", required=False)

    if not _same_site(target_link_uri, base_url):
        raise bad_request(
            "invalid_target_link_uri",
            f"target_link_uri {target_link_uri!r} does not point at this Lifeline ({base_url}).",
            "Set the tool's target link URI in the LMS to Lifeline's launch URL.",
        )
    registration = pick_registration(session, cache, issuer, client_id)
    if not registration.active:
        raise forbidden(
            "registration_not_active",
            f"The registration of {registration.name!r} is {registration.status}.",
            "An administrator must approve it on Lifeline's admin page.",
        )
    if deployment_id and not registration.knows_deployment(deployment_id):
        raise forbidden(
            "unknown_deployment",
            f"Deployment {deployment_id!r} of {registration.name!r} is not registered.",
            ADMIN_HINT,
        )

    storage = _storage_target(params, registration.auth_login_url)

    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    fields: dict[str, Any] = {
        "nonce": nonce,
        "registration_id": registration.id,
        "target_link_uri": target_link_uri,
    }
    if storage is not None:  # the launch may then be bound through platform storage
        fields.update(storage.record())
    record = json.dumps(fields)
    pipe = redis_client.pipeline(transaction=False)
    pipe.set(state_key(state), record, ex=login_ttl)
    pipe.set(nonce_key(nonce), state, ex=login_ttl)
    pipe.execute()

    query = {
        "scope": "openid",
        "response_type": "id_token",
        "response_mode": "form_post",
        "prompt": "none",
        "client_id": registration.client_id,
        "redirect_uri": base_url + "/lti/launch",
        "login_hint": login_hint,
        "state": state,
        "nonce": nonce,
    }
    if message_hint:
        query["lti_message_hint"] = message_hint
    separator = "&" if urlsplit(registration.auth_login_url).query else "?"
    return LoginRedirect(
        url=registration.auth_login_url + separator + urlencode(query),
        state=state,
        cookie_name=STATE_COOKIE_PREFIX + state,
        registration=registration,
        storage=None if storage is None else StorageLogin(storage, state, nonce),
    )
