"""A test LMS: signs real RS256 id_tokens and serves its JWKS over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from lti_tool.lti.registry import add_platform

LIS = "http://purl.imsglobal.org/vocab/lis/v2/"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
DL_CLAIM = "https://purl.imsglobal.org/spec/lti-dl/claim/"
ROLE_LEARNER = LIS + "membership#Learner"
ROLE_INSTRUCTOR = LIS + "membership#Instructor"
ROLE_TA = LIS + "membership/Instructor#TeachingAssistant"


@dataclass
class KeysetRoute:
    document: dict[str, Any]
    cache_control: str | None = "max-age=300"
    status: int = 200
    hits: int = 0
    delay: float = 0.0  # seconds to wait before answering (a slow keyset server)
    body: bytes | None = None  # raw body served instead of ``document`` (e.g. not JSON)


class JwksServer:
    """Serves keysets at /<name>.json; each route's document, headers and status can change."""

    def __init__(self) -> None:
        self.routes: dict[str, KeysetRoute] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                route = server.routes.get(urlsplit(self.path).path)
                if route is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                route.hits += 1
                if route.delay:
                    time.sleep(route.delay)
                body = json.dumps(route.document).encode() if route.body is None else route.body
                try:
                    self.send_response(route.status)
                    self.send_header("Content-Type", "application/json")
                    if route.cache_control:
                        self.send_header("Cache-Control", route.cache_control)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(
        self, document: dict[str, Any], cache_control: str | None = "max-age=300"
    ) -> tuple[str, KeysetRoute]:
        path = f"/{uuid.uuid4().hex}.json"
        route = KeysetRoute(document, cache_control)
        self.routes[path] = route
        return self.base + path, route


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "use": "sig"})
    if alg:
        jwk["alg"] = alg
    return jwk


_KEY = new_key()  # generating RSA keys is slow: one for the whole run


@dataclass
class Login:
    response: TestResponse
    state: str
    nonce: str
    params: dict[str, str]


@dataclass
class TestPlatform:
    __test__ = False
    """One registered LMS. ``launch`` runs the real login + launch through the app."""

    jwks_server: JwksServer
    issuer: str = "https://lms.example.edu"
    client_id: str = "lifeline-client-1"
    deployment_id: str = "deployment-1"
    kid: str = "lms-key-1"
    key: rsa.RSAPrivateKey = field(default_factory=lambda: _KEY)
    keyset_url: str = ""
    route: KeysetRoute | None = None
    platform_id: int = 0

    def register(self, app: Flask, **overrides: Any) -> None:
        self.keyset_url, self.route = self.jwks_server.add({"keys": [jwk_of(self.key, self.kid)]})
        values = {
            "name": "Test LMS",
            "issuer": self.issuer,
            "client_id": self.client_id,
            "auth_login_url": "https://lms.example.edu/auth",
            "auth_token_url": "https://lms.example.edu/token",
            "keyset_url": self.keyset_url,
            "deployment_ids": [self.deployment_id],
        }
        values.update(overrides)
        services = app.extensions["lifeline"]
        with services.db.transaction() as session:
            self.platform_id = add_platform(session, **values).id
        services.registrations.clear()

    # -- login ---------------------------------------------------------------------------

    def login_params(self, **overrides: str | None) -> dict[str, str]:
        params: dict[str, str | None] = {
            "iss": self.issuer,
            "login_hint": "user-hint-1",
            "target_link_uri": "https://lifeline.test/lti/launch",
            "lti_message_hint": "message-hint-1",
            "client_id": self.client_id,
            "lti_deployment_id": self.deployment_id,
        }
        params.update(overrides)
        return {k: v for k, v in params.items() if v is not None}

    def login(self, client: FlaskClient, method: str = "POST", **overrides: str | None) -> Login:
        params = self.login_params(**overrides)
        if method == "GET":
            response = client.get("/lti/login", query_string=params)
        else:
            response = client.post("/lti/login", data=params)
        assert response.status_code == 302, response.get_data(as_text=True)
        query = parse_qs(urlsplit(response.headers["Location"]).query)
        return Login(response, query["state"][0], query["nonce"][0], params)

    # -- id_token ------------------------------------------------------------------------

    def claims(self, nonce: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.client_id,
            "sub": "learner-42",
            "iat": now,
            "exp": now + 300,
            "nonce": nonce,
            "name": "Lin Learner",
            "email": "lin@example.edu",
            CLAIM + "deployment_id": self.deployment_id,
            CLAIM + "message_type": "LtiResourceLinkRequest",
            CLAIM + "version": "1.3.0",
            CLAIM + "roles": [ROLE_LEARNER],
            CLAIM + "target_link_uri": "https://lifeline.test/lti/launch",
            CLAIM + "resource_link": {"id": "link-1", "title": "Lab 3: Recursion"},
            CLAIM + "context": {
                "id": "course-1",
                "label": "CS101",
                "title": "Intro to Programming",
            },
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def sign(
        self,
        claims: dict[str, Any],
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = "default",
        alg: str = "RS256",
    ) -> str:
        headers = {} if kid is None else {"kid": self.kid if kid == "default" else kid}
        return jwt.encode(claims, key or self.key, algorithm=alg, headers=headers)

    def post_launch(
        self,
        client: FlaskClient,
        id_token: str | None,
        state: str | None,
        headers: dict[str, str] | None = None,
        **extra: str,
    ) -> TestResponse:
        data = {k: v for k, v in {"id_token": id_token, "state": state}.items() if v is not None}
        data.update(extra)
        return client.post("/lti/launch", data=data, headers=headers or {})

    def launch(self, client: FlaskClient, **claim_overrides: Any) -> TestResponse:
        login = self.login(client)
        token = self.sign(self.claims(login.nonce, **claim_overrides))
        return self.post_launch(client, token, login.state)


_DROP = object()


def drop() -> Any:
    """Use as a claim override to remove that claim."""
    return _DROP
