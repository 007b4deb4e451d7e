"""Validation of the LTI 1.3 launch (the id_token POSTed to /lti/launch).

Closes the gaps the 1EdTech Security Framework requires and pylti1p3 2.0 leaves open:
exp and iat required with a leeway, a single-use nonce consumed atomically in Redis, state
bound to the browser, strict aud/azp, target_link_uri checked against the login, deployment
known, message type and version checked, roles and resource link required, sub length limited.
pylti1p3's own message validators run last, as a second opinion.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import redis
from pylti1p3.exception import LtiException
from pylti1p3.message_validators import get_validators
from sqlalchemy.orm import Session

from .custom import safe_custom
from .custom import value as custom_param
from .errors import ADMIN_HINT, RELAUNCH_HINT, LaunchError, bad_request, forbidden, unauthorized
from .login import STATE_COOKIE_PREFIX, nonce_key, state_key
from .platform_keys import PlatformKeys
from .registry import RegistrationCache, RegistrationInfo
from .roles import Audience, audience_for
from .tokens import check_algorithm, parse_token, verify_signature

CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DL_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/"
RESOURCE_LINK_REQUEST = "LtiResourceLinkRequest"
DEEP_LINKING_REQUEST = "LtiDeepLinkingRequest"
SUPPORTED_MESSAGES = (RESOURCE_LINK_REQUEST, DEEP_LINKING_REQUEST)
MAX_SUB = 255


class AnonymousLaunch(LaunchError):
    """A valid launch without ``sub`` (a public preview): shown an explicit page."""


class PlatformReportedError(LaunchError):
    """The platform's auth endpoint answered with ``error`` instead of an id_token."""


@dataclass(frozen=True)
class Launch:
    """A validated launch: the one object the rest of Lifeline reads ids and roles from."""

    launch_id: str
    registration_id: int
    issuer: str
    client_id: str
    deployment_id: str
    message_type: str
    sub: str
    roles: tuple[str, ...]
    audience: Audience
    name: str
    email: str
    context_id: str
    context_title: str
    context_label: str
    resource_link_id: str
    resource_link_title: str
    target_link_uri: str
    return_url: str
    custom: dict[str, str] = field(default_factory=dict)
    deep_linking: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    # A deployment id the registration had not seen, accepted because it trusts new ones:
    # the launch view records it.
    new_deployment: bool = False

    @property
    def is_deep_linking(self) -> bool:
        return self.message_type == DEEP_LINKING_REQUEST

    def custom_value(self, name: str) -> str | None:
        """A custom parameter (``lti/custom.py``): None if absent or an unresolved "$Var"."""
        return custom_param(self.custom, name)

    def to_json(self) -> str:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["audience"] = self.audience.value
        data["roles"] = list(self.roles)
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Launch:
        data = json.loads(raw)
        data["audience"] = Audience(data["audience"])
        data["roles"] = tuple(data["roles"])
        return cls(**data)


@dataclass
class LaunchValidator:
    cache: RegistrationCache
    platform_keys: PlatformKeys
    redis: redis.Redis
    leeway: int = 60

    def validate(
        self, form: Mapping[str, str], cookies: Mapping[str, str], session: Session
    ) -> Launch:
        state = form.get("state", "")
        if form.get("error"):
            raise self._platform_error(form, state)
        id_token = form.get("id_token", "")
        if not id_token:
            raise bad_request(
                "missing_id_token",
                "The launch request carries no id_token.",
                "The LMS must POST the id_token it issued to Lifeline's launch URL.",
            )
        if not state:
            raise bad_request("missing_state", "The launch request carries no state.")

        token = parse_token(id_token)
        alg = check_algorithm(token)
        claims = token.claims
        registration = self._registration(claims, session)
        try:
            kid = token.kid
            if kid is None:
                raise unauthorized(
                    "missing_kid",
                    "The id_token header names no key (kid), so its signature cannot be checked.",
                )
            key, key_alg = self.platform_keys.key_for(registration.keyset_url, kid)
            if key_alg is not None and key_alg != alg:
                raise unauthorized(
                    "algorithm_mismatch",
                    f"Key {kid!r} is declared for {key_alg}, but the id_token uses {alg}.",
                )
            verify_signature(token, key, alg)
            self._check_times(claims)
            record = self._consume_state_and_nonce(state, claims, cookies, registration)
            return self._build(claims, record, registration)
        except LaunchError as exc:
            exc.platform_id = registration.id
            raise

    # -- steps --------------------------------------------------------------------------

    def _platform_error(self, form: Mapping[str, str], state: str) -> PlatformReportedError:
        if state:
            self.redis.delete(state_key(state))
        error = form.get("error", "")[:200]
        description = form.get("error_description", "")[:1000]
        detail = f"The LMS refused to complete the launch: {error}"
        if description:
            detail += f" ({description})"
        return PlatformReportedError(
            400,
            "platform_error",
            "The LMS reported an error",
            detail,
            "login_required means you are not logged in to the LMS in this browser; "
            "otherwise ask your LMS administrator.",
        )

    def _registration(self, claims: Mapping[str, Any], session: Session) -> RegistrationInfo:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise unauthorized("missing_iss", "The id_token has no issuer (iss).")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if (
            not isinstance(audiences, list)
            or not audiences
            or not all(isinstance(a, str) for a in audiences)
        ):
            raise unauthorized("missing_aud", "The id_token has no audience (aud).")
        candidates = self.cache.by_issuer(session, issuer)
        if not candidates:
            raise unauthorized(
                "unknown_issuer",
                f"The id_token comes from issuer {issuer!r}, which is not registered with "
                "Lifeline.",
                ADMIN_HINT,
            )
        registration = next((r for r in candidates if r.client_id in audiences), None)
        if registration is None:
            raise unauthorized(
                "wrong_audience",
                f"The id_token is addressed to {', '.join(map(repr, audiences))}, not to a "
                f"client id Lifeline has registered for {issuer!r}.",
                ADMIN_HINT,
            )
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != registration.client_id:
            exc = unauthorized(
                "wrong_azp",
                "The id_token has several audiences, and its authorized party (azp) "
                f"{azp!r} is not Lifeline's client id {registration.client_id!r}.",
            )
            exc.platform_id = registration.id
            raise exc
        if not registration.active:
            exc = forbidden(
                "registration_not_active",
                f"The registration of {registration.name!r} is {registration.status}.",
                "An administrator must approve it on Lifeline's admin page.",
            )
            exc.platform_id = registration.id
            raise exc
        return registration

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = time.time()
        exp, iat = claims.get("exp"), claims.get("iat")
        for name, value in (("exp", exp), ("iat", iat)):
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not 0 <= value < 2**53  # NaN, infinity and absurd numbers too
            ):
                raise unauthorized(
                    f"missing_{name}",
                    f"The id_token has no valid {name!r} time; LTI 1.3 requires it.",
                )
        assert isinstance(exp, int | float) and isinstance(iat, int | float)
        if exp + self.leeway < now:
            raise unauthorized(
                "expired",
                f"The id_token expired {int(now - exp)} seconds ago.",
                "Check that the LMS server's clock is right, then launch again.",
            )
        if iat - self.leeway > now:
            raise unauthorized(
                "issued_in_future",
                f"The id_token says it was issued {int(iat - now)} seconds in the future.",
                "The LMS server's clock is ahead; it must be synchronised (NTP).",
            )

    def _consume_state_and_nonce(
        self,
        state: str,
        claims: Mapping[str, Any],
        cookies: Mapping[str, str],
        registration: RegistrationInfo,
    ) -> dict[str, Any]:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise unauthorized("missing_nonce", "The id_token carries no nonce.")
        if len(state) > 100 or cookies.get(STATE_COOKIE_PREFIX + state) != state:
            raise LaunchError(
                401,
                "state_not_bound",
                "Lifeline could not match this launch to your browser",
                "The login cookie Lifeline set a moment ago did not come back with the launch "
                "(or the state does not belong to this browser).",
                "Your browser may block third-party cookies in the LMS frame: open Lifeline "
                "in a new window, or allow cookies for this site, then launch again.",
            )
        # One round trip, and both keys gone at once: a replay finds neither.
        pipe = self.redis.pipeline(transaction=True)
        pipe.getdel(state_key(state))
        pipe.getdel(nonce_key(nonce))
        raw_record, nonce_state = pipe.execute()
        if raw_record is None:
            raise LaunchError(
                401,
                "state_unknown",
                "This launch has expired or was already used",
                "The login that started this launch is unknown, expired or already used.",
                RELAUNCH_HINT,
            )
        record: dict[str, Any] = json.loads(raw_record)
        if nonce_state is None or _text(nonce_state) != state or record["nonce"] != nonce:
            raise unauthorized(
                "nonce_invalid",
                "The id_token's nonce was not issued for this login or was already used "
                "(a replayed launch).",
                RELAUNCH_HINT,
            )
        if record["registration_id"] != registration.id:
            raise unauthorized(
                "state_registration_mismatch",
                "The id_token comes from a different registration than the login that began it.",
            )
        return record

    def _build(
        self, claims: dict[str, Any], record: Mapping[str, Any], registration: RegistrationInfo
    ) -> Launch:
        message_type = claims.get(CLAIM + "message_type")
        if not message_type:
            raise bad_request("missing_message_type", "The id_token has no LTI message type.")
        if message_type not in SUPPORTED_MESSAGES:
            raise bad_request(
                "unsupported_message_type",
                f"Lifeline does not handle LTI messages of type {str(message_type)[:80]!r}; it "
                f"handles {' and '.join(SUPPORTED_MESSAGES)}.",
            )
        version = claims.get(CLAIM + "version")
        if version != "1.3.0":
            raise bad_request(
                "wrong_version",
                f"The launch says LTI version {version!r}; Lifeline speaks LTI 1.3.0.",
            )
        target = claims.get(CLAIM + "target_link_uri")
        if target != record["target_link_uri"]:
            raise bad_request(
                "target_link_uri_mismatch",
                f"The id_token's target_link_uri {target!r} differs from the one in the login "
                f"request ({record['target_link_uri']!r}).",
            )
        deployment_id = claims.get(CLAIM + "deployment_id")
        if not isinstance(deployment_id, str) or not deployment_id:
            raise bad_request("missing_deployment_id", "The id_token has no deployment_id.")
        if len(deployment_id) > 255:  # what a deployment (and a course) row holds
            raise bad_request(
                "invalid_deployment_id",
                "The id_token's deployment_id is longer than 255 characters.",
            )
        if not registration.knows_deployment(deployment_id):
            raise forbidden(
                "unknown_deployment",
                f"Deployment {deployment_id!r} of {registration.name!r} is not registered with "
                "Lifeline.",
                "An administrator can add it: lifeline platform add-deployment.",
            )
        roles = claims.get(CLAIM + "roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise bad_request(
                "missing_roles",
                "The id_token has no roles claim (it may be an empty list, but it must be there).",
            )
        sub = claims.get("sub")
        if sub is None or sub == "":
            raise AnonymousLaunch(
                403,
                "anonymous_launch",
                "Lifeline needs to know who you are",
                "The LMS opened Lifeline without identifying you (an anonymous or public "
                "launch), so there is nobody to connect to a tutor.",
                "Log in to the course in your LMS and open Lifeline from there.",
            )
        if not isinstance(sub, str) or len(sub) > MAX_SUB:
            raise bad_request(
                "invalid_sub",
                f"The user id (sub) must be a string of at most {MAX_SUB} characters.",
            )
        resource_link = _obj(claims.get(CLAIM + "resource_link"))
        deep_linking = _obj(claims.get(DL_CLAIM + "deep_linking_settings"))
        if message_type == RESOURCE_LINK_REQUEST:
            link_id = resource_link.get("id")
            if not isinstance(link_id, str) or not link_id or len(link_id) > 255:
                raise bad_request(
                    "missing_resource_link",
                    "A resource link launch must name its resource link (resource_link.id).",
                )
        else:
            return_url = deep_linking.get("deep_link_return_url")
            if not isinstance(return_url, str) or not return_url.startswith(("https:", "http:")):
                raise bad_request(
                    "missing_deep_linking_settings",
                    "A deep linking request must carry deep_linking_settings with a "
                    "deep_link_return_url.",
                )
        for validator in get_validators():  # type: ignore[no-untyped-call]
            if validator.can_validate(claims):
                try:
                    validator.validate(claims)
                except LtiException as exc:
                    raise bad_request("invalid_message", str(exc)) from None
        context = _obj(claims.get(CLAIM + "context"))
        if len(_str(context.get("id"))) > 255:
            raise bad_request(
                "invalid_context", "The course id (context.id) is longer than 255 characters."
            )
        presentation = _obj(claims.get(CLAIM + "launch_presentation"))
        custom = safe_custom(claims.get(CLAIM + "custom"))  # strings only, "$Var" dropped
        return Launch(
            launch_id=secrets.token_urlsafe(24),
            registration_id=registration.id,
            issuer=registration.issuer,
            client_id=registration.client_id,
            deployment_id=deployment_id,
            message_type=message_type,
            sub=sub,
            roles=tuple(roles),
            audience=audience_for(roles),
            name=_str(claims.get("name"))
            or " ".join(
                filter(None, [_str(claims.get("given_name")), _str(claims.get("family_name"))])
            ),
            email=_str(claims.get("email")),
            context_id=_str(context.get("id")),
            context_title=_str(context.get("title")),
            context_label=_str(context.get("label")),
            resource_link_id=_str(resource_link.get("id")),
            resource_link_title=_str(resource_link.get("title")),
            target_link_uri=str(target),
            return_url=_str(presentation.get("return_url"), 2000),
            custom=custom,
            deep_linking=deep_linking,
            claims=claims,
            new_deployment=deployment_id not in registration.deployment_ids,
        )


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any, limit: int = 500) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
