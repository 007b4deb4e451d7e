"""A small but real LTI 1.3 platform: it signs id_tokens with its own RSA key, publishes its
JWKS, answers the tool's OIDC auth redirect and verifies the tool's deep linking response.

The demo LMS is the only part outside ``lti/`` that uses a JWT library: it plays the LMS,
the other side of the protocol, and must never share code paths with the tool's checks.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .services import AGS_CLAIM, AGS_SCOPES, NRPS_CLAIM, DemoServices

LIS = "http://purl.imsglobal.org/vocab/lis/v2/"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DL_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/"
CLIENT_ID = "lifeline-demo-client"
DEPLOYMENT_ID = "demo-deployment-1"
STORAGE_FRAME = "demo_lms_storage"  # the frame of the LMS page that keeps platform storage
_LOOPBACK_TWIN = {"127.0.0.1": "localhost", "localhost": "127.0.0.1"}


@dataclass(frozen=True)
class DemoUser:
    key: str
    sub: str
    name: str
    given_name: str
    family_name: str
    email: str
    roles: tuple[str, ...]
    label: str


USERS = {
    "learner": DemoUser(
        "learner",
        "demo-learner-ada",
        "Ada Lovelace",
        "Ada",
        "Lovelace",
        "ada@example.edu",
        (LIS + "membership#Learner",),
        "Learner",
    ),
    "instructor": DemoUser(
        "instructor",
        "demo-instructor-grace",
        "Grace Hopper",
        "Grace",
        "Hopper",
        "grace@example.edu",
        (LIS + "membership#Instructor",),
        "Instructor",
    ),
    "tutor": DemoUser(
        "tutor",
        "demo-tutor-alan",
        "Alan Turing",
        "Alan",
        "Turing",
        "alan@example.edu",
        (LIS + "membership#Instructor", LIS + "membership/Instructor#TeachingAssistant"),
        "Tutor (teaching assistant)",
    ),
}

COURSE = {"id": "demo-course-py101", "label": "PY101", "title": "Python for Data (demo course)"}
EXERCISES = {
    "ex1": "Exercise 1: FizzBuzz",
    "ex2": "Exercise 2: Counting words in a file",
}


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return key


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class DemoPlatform:
    """One demo LMS: ``base_url`` is Lifeline's address, ``lms_url`` the LMS's own (by
    default the same). Its issuer, authorization endpoint and keys live at ``lms_url``."""

    def __init__(self, base_url: str, key: rsa.RSAPrivateKey, lms_url: str | None = None) -> None:
        self.base_url = base_url
        self.lms_url = lms_url or base_url
        self.issuer = self.lms_url + "/demo"
        self.key = key
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        self.kid = "demo-" + jwk["n"][:12]
        self.jwk = {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}
        self.services = DemoServices()  # tokens and gradebook, in memory

    @property
    def token_url(self) -> str:
        return self.issuer + "/token"

    @property
    def memberships_url(self) -> str:
        return f"{self.issuer}/nrps/{COURSE['id']}/memberships"

    @property
    def lineitems_url(self) -> str:
        return f"{self.issuer}/ags/{COURSE['id']}/lineitems"

    @property
    def launch_url(self) -> str:
        return self.base_url + "/lti/launch"

    @property
    def tool_origin(self) -> str:
        """The only origin whose postMessages the LMS's pages answer."""
        return origin_of(self.base_url)

    @property
    def cross_site(self) -> bool:
        return urlsplit(self.lms_url).hostname != urlsplit(self.base_url).hostname

    def registration(self) -> dict[str, Any]:
        host = urlsplit(self.lms_url).netloc
        return {
            "name": f"Demo LMS at {host}" if self.cross_site else "Demo LMS",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "auth_login_url": self.issuer + "/auth",
            "auth_token_url": self.token_url,
            "keyset_url": self.issuer + "/jwks",
            "deployment_ids": [DEPLOYMENT_ID],
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}

    def login_params(
        self,
        user: DemoUser,
        message_hint: str,
        storage: bool = True,
        client_id: str = CLIENT_ID,
        deployment_id: str = DEPLOYMENT_ID,
    ) -> dict[str, str]:
        """``client_id``/``deployment_id``: the registration to launch through (by default
        the one ``lifeline demo`` makes; a dynamically registered one otherwise)."""
        params = {
            "iss": self.issuer,
            "login_hint": user.key,
            "target_link_uri": self.launch_url,
            "lti_message_hint": message_hint,
            "client_id": client_id,
            "lti_deployment_id": deployment_id,
        }
        if storage:  # the course page keeps platform storage in its STORAGE_FRAME
            params["lti_storage_target"] = STORAGE_FRAME
        return params

    def id_token(
        self, user: DemoUser, nonce: str, hint: dict[str, Any], deep_link_data: str
    ) -> str:
        now = int(time.time())
        client_id = str(hint.get("client_id") or CLIENT_ID)
        deployment_id = str(hint.get("deployment_id") or DEPLOYMENT_ID)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "azp": client_id,
            "sub": user.sub,
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "name": user.name,
            "given_name": user.given_name,
            "family_name": user.family_name,
            "email": user.email,
            CLAIM + "deployment_id": deployment_id,
            CLAIM + "version": "1.3.0",
            CLAIM + "roles": list(user.roles),
            CLAIM + "target_link_uri": self.launch_url,
            CLAIM + "context": {**COURSE, "type": [LIS + "course#CourseOffering"]},
            CLAIM + "tool_platform": {
                "guid": "lifeline-demo-lms",
                "name": "Lifeline demo LMS",
                "product_family_code": "lifeline-demo",
            },
            CLAIM + "launch_presentation": {
                "document_target": "iframe",
                "return_url": self.issuer + "/",
                "locale": "en",
            },
        }
        if client_id == CLIENT_ID:  # the services are granted to the demo's own registration
            claims[NRPS_CLAIM] = {
                "context_memberships_url": self.memberships_url,
                "service_versions": ["2.0"],
            }
            claims[AGS_CLAIM] = {"scope": list(AGS_SCOPES), "lineitems": self.lineitems_url}
        if hint.get("deep_link"):
            claims[CLAIM + "message_type"] = "LtiDeepLinkingRequest"
            claims[DL_CLAIM + "deep_linking_settings"] = {
                "deep_link_return_url": self.issuer + "/deep-link-return",
                "accept_types": ["ltiResourceLink"],
                "accept_presentation_document_targets": ["iframe", "window"],
                "accept_multiple": False,
                "auto_create": True,
                "title": "Lifeline help",
                "data": deep_link_data,
            }
        else:
            exercise = str(hint.get("exercise", "ex1"))
            title = hint.get("title") or EXERCISES.get(exercise, exercise)
            claims[CLAIM + "message_type"] = "LtiResourceLinkRequest"
            claims[CLAIM + "resource_link"] = {"id": exercise, "title": title}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})

    @staticmethod
    def new_hint_id() -> str:
        return uuid.uuid4().hex

    @staticmethod
    def new_data() -> str:
        return secrets.token_urlsafe(16)

    def verify_deep_link_response(
        self, token: str, tool_jwks: dict[str, Any], expected_data: str | None
    ) -> dict[str, Any]:
        """Check the tool's LtiDeepLinkingResponse as an LMS would."""
        header = jwt.get_unverified_header(token)
        keys = {k.get("kid"): k for k in tool_jwks.get("keys", [])}
        if header.get("kid") not in keys:
            raise ValueError("the response is signed with a key the tool does not publish")
        public_key = jwt.PyJWK(keys[header["kid"]]).key
        claims: dict[str, Any] = jwt.decode(
            token,
            public_key,
            algorithms=["RS256"],
            audience=self.issuer,
            issuer=CLIENT_ID,
            options={"require": ["exp", "iat", "nonce"]},
        )
        if claims.get(CLAIM + "message_type") != "LtiDeepLinkingResponse":
            raise ValueError("not an LtiDeepLinkingResponse")
        if claims.get(CLAIM + "deployment_id") != DEPLOYMENT_ID:
            raise ValueError("wrong deployment_id")
        if claims.get(DL_CLAIM + "data") != expected_data:
            raise ValueError("the data claim was not echoed")
        return claims


class DemoPlatforms:
    """The demo LMS where the browser reaches it: on Lifeline's own address, or on the other
    loopback name at the same port (``localhost`` for ``127.0.0.1`` and back), which is
    another site. There Lifeline is a third-party frame, as in a real LMS, so launches with
    third-party cookies blocked (and platform storage) can be seen and tested. Each address is
    its own platform (issuer, authorization endpoint) with the same key; any other Host
    header gets the first."""

    def __init__(self, base_url: str, key: rsa.RSAPrivateKey) -> None:
        self.home = DemoPlatform(base_url, key)
        parts = urlsplit(base_url)
        twin = _LOOPBACK_TWIN.get(parts.hostname or "")
        self.twin: DemoPlatform | None = None
        if twin is not None:
            netloc = twin if parts.port is None else f"{twin}:{parts.port}"
            self.twin = DemoPlatform(base_url, key, f"{parts.scheme}://{netloc}")

    def at(self, host: str | None) -> DemoPlatform:
        """The platform answering on ``host`` (a request's Host header)."""
        if self.twin is not None and host == urlsplit(self.twin.lms_url).netloc:
            return self.twin
        return self.home

    def other(self, platform: DemoPlatform) -> DemoPlatform | None:
        """The same course on the other site, if there is one."""
        return self.twin if platform is self.home else self.home
