"""The demo LMS's LTI Advantage services: an OAuth 2 token endpoint (client credentials with a
signed client assertion), Names and Role Provisioning (the demo course's people) and
Assignment and Grade Services (line items and scores, kept in memory: a restart empties the
gradebook).

Like ``platform.py``, this plays the LMS: it checks Lifeline's assertions with its own JWT
calls, against the keys Lifeline publishes, and shares no code with the tool's checks.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

SCOPE_NRPS = "https://purl.imsglobal.org/spec/lti-nrps/scope/contextmembership.readonly"
SCOPE_LINEITEM = "https://purl.imsglobal.org/spec/lti-ags/scope/lineitem"
SCOPE_RESULT = "https://purl.imsglobal.org/spec/lti-ags/scope/result.readonly"
SCOPE_SCORE = "https://purl.imsglobal.org/spec/lti-ags/scope/score"
AGS_SCOPES = (SCOPE_LINEITEM, SCOPE_RESULT, SCOPE_SCORE)
OFFERED_SCOPES = frozenset((SCOPE_NRPS, *AGS_SCOPES))
NRPS_CLAIM = "https://purl.imsglobal.org/spec/lti-nrps/claim/namesroleservice"
AGS_CLAIM = "https://purl.imsglobal.org/spec/lti-ags/claim/endpoint"
NRPS_MEDIA = "application/vnd.ims.lti-nrps.v2.membershipcontainer+json"
LINEITEM_MEDIA = "application/vnd.ims.lis.v2.lineitem+json"
LINEITEMS_MEDIA = "application/vnd.ims.lis.v2.lineitemcontainer+json"
SCORE_MEDIA = "application/vnd.ims.lis.v1.score+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME = 3600
MAX_ASSERTION_LIFETIME = 600  # seconds between iat and exp
CLOCK_SKEW = 60
MAX_LINEITEMS = 200
MAX_SCORES = 2000


class Refused(Exception):
    """A service request the demo LMS refuses: an HTTP status and an OAuth error code."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class Issued:
    scopes: frozenset[str]
    expires_at: float


@dataclass
class DemoServices:
    """One demo platform's issued tokens, seen assertion ids and gradebook (in memory)."""

    tokens: dict[str, Issued] = field(default_factory=dict)
    jtis: dict[str, float] = field(default_factory=dict)  # jti -> when it may be forgotten
    lineitems: list[dict[str, Any]] = field(default_factory=list)
    scores: list[dict[str, Any]] = field(default_factory=list)  # each with its "lineitem"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the token endpoint -----------------------------------------------------------------

    def issue(
        self,
        form: dict[str, str],
        tool_jwks: dict[str, Any],
        client_id: str,
        token_url: str,
    ) -> dict[str, Any]:
        """Check a client credentials request (RFC 7523 client assertion) and issue a token."""
        if form.get("grant_type") != "client_credentials":
            raise Refused(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise Refused(400, "invalid_request", "client_assertion_type must be jwt-bearer")
        claims = self._verify_assertion(form.get("client_assertion", ""), tool_jwks)
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            raise Refused(401, "invalid_client", "iss and sub must be the client id")
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if token_url not in audiences:
            raise Refused(401, "invalid_client", "aud must be the token endpoint")
        if claims["exp"] - claims["iat"] > MAX_ASSERTION_LIFETIME:
            raise Refused(401, "invalid_client", "the assertion lives too long")
        if claims["iat"] > time.time() + CLOCK_SKEW:
            raise Refused(401, "invalid_client", "the assertion is issued in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Refused(401, "invalid_client", "jti is required")
        scopes = frozenset(form.get("scope", "").split())
        if not scopes or not scopes <= OFFERED_SCOPES:
            raise Refused(400, "invalid_scope", "the demo LMS grants only NRPS and AGS scopes")
        now = time.time()
        with self._lock:
            self.jtis = {k: v for k, v in self.jtis.items() if v > now}
            if jti in self.jtis:
                raise Refused(401, "invalid_client", "the assertion's jti was used already")
            self.jtis[jti] = float(claims["exp"]) + CLOCK_SKEW
            self.tokens = {k: v for k, v in self.tokens.items() if v.expires_at > now}
            token = secrets.token_urlsafe(24)
            self.tokens[token] = Issued(scopes, now + TOKEN_LIFETIME)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_LIFETIME,
            "scope": " ".join(sorted(scopes)),
        }

    @staticmethod
    def _verify_assertion(assertion: str, tool_jwks: dict[str, Any]) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise Refused(401, "invalid_client", "the client assertion is not a JWT") from None
        keys = {k.get("kid"): k for k in tool_jwks.get("keys", []) if isinstance(k, dict)}
        if header.get("alg") != "RS256" or header.get("kid") not in keys:
            raise Refused(401, "invalid_client", "the assertion's key is not in the tool's JWKS")
        try:
            claims: dict[str, Any] = jwt.decode(
                assertion,
                jwt.PyJWK(keys[header["kid"]]).key,
                algorithms=["RS256"],
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat", "jti"],
                    "verify_aud": False,  # checked by the caller against the token URL
                },
                leeway=CLOCK_SKEW,
            )
        except jwt.PyJWTError as exc:
            raise Refused(401, "invalid_client", f"assertion refused: {exc}") from None
        return claims

    def check_bearer(self, authorization: str | None, scope: str) -> None:
        """A service call's ``Authorization`` header: a live token with ``scope``."""
        value = authorization or ""
        token = value[7:].strip() if value[:7].lower() == "bearer " else ""
        with self._lock:
            issued = self.tokens.get(token) if token else None
        if issued is None or issued.expires_at <= time.time():
            raise Refused(401, "invalid_token", "a valid bearer token is required")
        if scope not in issued.scopes:
            raise Refused(403, "insufficient_scope", f"the token lacks {scope}")

    # -- Assignment and Grade Services --------------------------------------------------------

    def find_lineitems(self, tag: str | None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(i) for i in self.lineitems if tag is None or i.get("tag") == tag]

    def add_lineitem(self, body: Any, base_url: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Refused(400, "invalid_request", "a line item is a JSON object")
        label = body.get("label")
        maximum = body.get("scoreMaximum")
        if not isinstance(label, str) or not label.strip():
            raise Refused(400, "invalid_request", "label is required")
        if isinstance(maximum, bool) or not isinstance(maximum, int | float) or maximum <= 0:
            raise Refused(400, "invalid_request", "scoreMaximum must be a positive number")
        item: dict[str, Any] = {"label": label[:200], "scoreMaximum": maximum}
        for name in ("tag", "resourceId", "resourceLinkId"):
            if isinstance(body.get(name), str):
                item[name] = body[name][:200]
        with self._lock:
            if len(self.lineitems) >= MAX_LINEITEMS:
                raise Refused(400, "invalid_request", "the demo gradebook is full")
            item["id"] = f"{base_url}/{len(self.lineitems) + 1}"
            self.lineitems.append(item)
        return dict(item)

    def add_score(self, item_id: str, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("userId"), str):
            raise Refused(400, "invalid_request", "a score names its userId")
        for name in ("activityProgress", "gradingProgress", "timestamp"):
            if not isinstance(body.get(name), str):
                raise Refused(400, "invalid_request", f"{name} is required")
        with self._lock:
            if not any(i["id"] == item_id for i in self.lineitems):
                raise Refused(404, "not_found", "no such line item")
            if len(self.scores) >= MAX_SCORES:
                self.scores.pop(0)
            self.scores.append({**body, "lineitem": item_id, "received_at": time.time()})

    def gradebook(self) -> list[dict[str, Any]]:
        """Each line item with its latest score per user (the platform keeps the latest)."""
        with self._lock:
            items = [dict(i) for i in self.lineitems]
            scores = list(self.scores)
        for item in items:
            latest: dict[str, dict[str, Any]] = {}
            for score in scores:
                if score["lineitem"] == item["id"]:
                    latest[score["userId"]] = score
            item["scores"] = list(latest.values())
        return items
