"""Every way a launch can be wrong, each refused with its exact status and error code.

A rejected launch writes nothing to people/courses/exercises, never answers 500, and (once the
registration is known) records its reason in ``platforms.last_error`` for the admin page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from lti_tool.lti.login import STATE_COOKIE_PREFIX, nonce_key, state_key
from lti_tool.web import lti as lti_views
from tests.platform import CLAIM, ROLE_INSTRUCTOR, TestPlatform, drop, jwk_of, new_key

JSON = {"Accept": "application/json"}

# Refused before the token names a registration: no platform's last_error may change.
BEFORE_REGISTRATION = {
    "missing_id_token",
    "missing_state",
    "id_token_too_large",
    "id_token_malformed",
    "algorithm_not_allowed",
    "missing_iss",
    "missing_aud",
    "unknown_issuer",
    "wrong_audience",
    "platform_error",
    "request_entity_too_large",
    "method_not_allowed",
}


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


# -- helpers ------------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64json(value: Any) -> str:
    return b64(json.dumps(value))


def page_field(body: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}">(.*?)</(?:h1|p)>', body, re.DOTALL)
    assert match is not None, f"no {testid} in page: {body[:500]}"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


class Expect:
    """Checks a response and what it left behind in the database."""

    def __init__(self, app: Flask) -> None:
        self.db = app.extensions["lifeline"].db
        self.baseline = (0, 0, 0)
        assert self.counts() == self.baseline

    def counts(self) -> tuple[int, int, int]:
        with self.db.engine.connect() as conn:
            people, courses, exercises = (
                conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("people", "courses", "exercises")
            )
        return people, courses, exercises

    def last_errors(self) -> dict[int, str | None]:
        with self.db.engine.connect() as conn:
            return dict(conn.execute(text("SELECT id, last_error FROM platforms")).all())

    def rejected(
        self, response: TestResponse, status: int, code: str, detail: str | None = None
    ) -> dict[str, Any]:
        assert response.status_code == status, response.get_data(as_text=True)
        body = response.get_json()
        assert isinstance(body, dict), response.get_data(as_text=True)
        assert body["error"] == code, body
        assert body["status"] == status
        assert body["title"] and body["detail"]
        if detail is not None:
            assert detail in body["detail"], body["detail"]
        assert self.counts() == self.baseline, "a rejected launch wrote people/courses/exercises"
        errors = self.last_errors()
        if code in BEFORE_REGISTRATION:
            assert set(errors.values()) <= {None}, errors
        else:
            noted = [e for e in errors.values() if e is not None]
            assert len(noted) == 1, errors
            assert noted[0].startswith(f"{code}: "), noted
        # Start the next check from a clean slate (and past the 30 s note throttle).
        with self.db.engine.begin() as conn:
            conn.execute(text("UPDATE platforms SET last_error = NULL, last_error_at = NULL"))
        lti_views._last_noted.clear()
        return body

    def accepted(self, response: TestResponse, testid: str = "learner-home") -> None:
        assert response.status_code == 200, response.get_data(as_text=True)
        assert f'data-testid="{testid}"' in response.get_data(as_text=True)
        counts = self.counts()
        assert counts[0] >= 1
        self.baseline = counts


@pytest.fixture
def expect(app: Flask) -> Expect:
    return Expect(app)


def post(
    platform: TestPlatform, client: FlaskClient, id_token: str | None, state: str | None
) -> TestResponse:
    return platform.post_launch(client, id_token, state, headers=JSON)


def launch_with(platform: TestPlatform, client: FlaskClient, **overrides: Any) -> TestResponse:
    """A real login, then an id_token for it with ``overrides`` (``drop()`` removes a claim)."""
    login = platform.login(client)
    claims = platform.claims(login.nonce)
    for name, value in overrides.items():
        if value is drop():
            claims.pop(name, None)
        else:
            claims[name] = value
    return post(platform, client, platform.sign(claims), login.state)


def state_cookie(client: FlaskClient, state: str) -> str | None:
    cookie = client.get_cookie(STATE_COOKIE_PREFIX + state, path="/lti/")
    return None if cookie is None else cookie.value


# -- claims -------------------------------------------------------------------------------

Claims = Callable[[int, TestPlatform], dict[str, Any]]

REJECTED_CLAIMS: list[Any] = [
    # times
    pytest.param(
        lambda now, p: {"exp": now - 120, "iat": now - 420},
        401,
        "expired",
        "seconds ago",
        id="expired-beyond-leeway",
    ),
    pytest.param(lambda now, p: {"exp": drop()}, 401, "missing_exp", "'exp'", id="missing-exp"),
    pytest.param(
        lambda now, p: {"exp": str(now + 300)}, 401, "missing_exp", None, id="exp-is-a-string"
    ),
    pytest.param(lambda now, p: {"exp": True}, 401, "missing_exp", None, id="exp-is-a-boolean"),
    pytest.param(lambda now, p: {"exp": float("nan")}, 401, "missing_exp", None, id="exp-is-nan"),
    pytest.param(
        lambda now, p: {"exp": float("inf")}, 401, "missing_exp", None, id="exp-is-infinity"
    ),
    pytest.param(lambda now, p: {"exp": -(10**400)}, 401, "missing_exp", None, id="exp-absurd"),
    pytest.param(lambda now, p: {"iat": drop()}, 401, "missing_iat", "'iat'", id="missing-iat"),
    pytest.param(lambda now, p: {"iat": 10**400}, 401, "missing_iat", None, id="iat-absurd"),
    pytest.param(
        lambda now, p: {"iat": now + 300},
        401,
        "issued_in_future",
        "in the future",
        id="iat-5-minutes-in-future",
    ),
    # issuer, audience, authorized party
    pytest.param(
        lambda now, p: {"iss": "https://evil.example"},
        401,
        "unknown_issuer",
        "'https://evil.example'",
        id="wrong-iss",
    ),
    pytest.param(lambda now, p: {"iss": drop()}, 401, "missing_iss", None, id="missing-iss"),
    pytest.param(
        lambda now, p: {"aud": "someone-else"},
        401,
        "wrong_audience",
        "'someone-else'",
        id="wrong-aud",
    ),
    pytest.param(lambda now, p: {"aud": drop()}, 401, "missing_aud", None, id="missing-aud"),
    pytest.param(lambda now, p: {"aud": []}, 401, "missing_aud", None, id="aud-empty-list"),
    pytest.param(
        lambda now, p: {"aud": [p.client_id, "other-tool"]},
        401,
        "wrong_azp",
        "None",
        id="aud-list-without-azp",
    ),
    pytest.param(
        lambda now, p: {"aud": [p.client_id, "other-tool"], "azp": "other-tool"},
        401,
        "wrong_azp",
        "'other-tool'",
        id="aud-list-wrong-azp",
    ),
    pytest.param(
        lambda now, p: {"azp": "other-tool"}, 401, "wrong_azp", None, id="single-aud-wrong-azp"
    ),
    # deployment
    pytest.param(
        lambda now, p: {CLAIM + "deployment_id": drop()},
        400,
        "missing_deployment_id",
        None,
        id="missing-deployment-id",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "deployment_id": "deployment-99"},
        403,
        "unknown_deployment",
        "'deployment-99'",
        id="unknown-deployment-id",
    ),
    # nonce
    pytest.param(lambda now, p: {"nonce": drop()}, 401, "missing_nonce", None, id="missing-nonce"),
    pytest.param(
        lambda now, p: {"nonce": "a-nonce-lifeline-never-issued"},
        401,
        "nonce_invalid",
        None,
        id="nonce-never-issued",
    ),
    # message type and version
    pytest.param(
        lambda now, p: {CLAIM + "message_type": drop()},
        400,
        "missing_message_type",
        None,
        id="missing-message-type",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "message_type": "ltiresourcelinkrequest"},
        400,
        "unsupported_message_type",
        "'ltiresourcelinkrequest'",
        id="wrong-message-type",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "message_type": "LtiSubmissionReviewRequest"},
        400,
        "unsupported_message_type",
        "'LtiSubmissionReviewRequest'",
        id="unsupported-message-type",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "version": drop()},
        400,
        "wrong_version",
        "None",
        id="missing-version",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "version": "1.1.0"},
        400,
        "wrong_version",
        "'1.1.0'",
        id="wrong-version",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "version": 1.3}, 400, "wrong_version", None, id="version-number"
    ),
    # roles, resource link, sub, target_link_uri, context
    pytest.param(
        lambda now, p: {CLAIM + "roles": drop()}, 400, "missing_roles", None, id="missing-roles"
    ),
    pytest.param(
        lambda now, p: {CLAIM + "roles": "Learner"},
        400,
        "missing_roles",
        None,
        id="roles-not-a-list",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "resource_link": drop()},
        400,
        "missing_resource_link",
        None,
        id="missing-resource-link",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "resource_link": {"title": "No id"}},
        400,
        "missing_resource_link",
        None,
        id="missing-resource-link-id",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "resource_link": {"id": "x" * 256}},
        400,
        "missing_resource_link",
        None,
        id="resource-link-id-too-long",
    ),
    pytest.param(
        lambda now, p: {"sub": "s" * 256}, 400, "invalid_sub", "255", id="sub-longer-than-255"
    ),
    pytest.param(lambda now, p: {"sub": 42}, 400, "invalid_sub", None, id="sub-not-a-string"),
    pytest.param(lambda now, p: {"sub": drop()}, 403, "anonymous_launch", None, id="no-sub"),
    pytest.param(lambda now, p: {"sub": ""}, 403, "anonymous_launch", None, id="empty-sub"),
    pytest.param(
        lambda now, p: {CLAIM + "target_link_uri": "https://lifeline.test/lti/launch?x=1"},
        400,
        "target_link_uri_mismatch",
        "'https://lifeline.test/lti/launch?x=1'",
        id="target-link-uri-differs-from-login",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "target_link_uri": drop()},
        400,
        "target_link_uri_mismatch",
        None,
        id="missing-target-link-uri",
    ),
    pytest.param(
        lambda now, p: {CLAIM + "context": {"id": "c" * 256, "title": "Too long"}},
        400,
        "invalid_context",
        "255",
        id="context-id-too-long",
    ),
    pytest.param(
        lambda now, p: {
            CLAIM + "message_type": "LtiDeepLinkingRequest",
            CLAIM + "roles": [ROLE_INSTRUCTOR],
        },
        400,
        "missing_deep_linking_settings",
        None,
        id="deep-linking-without-settings",
    ),
]


@pytest.mark.parametrize(("claims", "status", "code", "detail"), REJECTED_CLAIMS)
def test_launch_with_bad_claims_is_rejected(
    client: FlaskClient,
    platform: TestPlatform,
    expect: Expect,
    claims: Claims,
    status: int,
    code: str,
    detail: str | None,
) -> None:
    response = launch_with(platform, client, **claims(int(time.time()), platform))
    expect.rejected(response, status, code, detail)


ACCEPTED_CLAIMS: list[Any] = [
    pytest.param(
        lambda now, p: {"exp": now - 30, "iat": now - 330}, id="expired-30s-ago-within-leeway"
    ),
    pytest.param(lambda now, p: {"iat": now + 2}, id="iat-2s-in-future"),
    pytest.param(
        lambda now, p: {"aud": ["other-tool", p.client_id], "azp": p.client_id},
        id="aud-list-with-correct-azp",
    ),
    pytest.param(lambda now, p: {"azp": p.client_id}, id="single-aud-with-azp"),
    pytest.param(lambda now, p: {CLAIM + "roles": []}, id="empty-roles-list"),
    pytest.param(lambda now, p: {"sub": "s" * 255}, id="sub-of-exactly-255"),
]


@pytest.mark.parametrize("claims", ACCEPTED_CLAIMS)
def test_launch_at_the_edge_is_accepted(
    client: FlaskClient, platform: TestPlatform, expect: Expect, claims: Claims
) -> None:
    expect.accepted(launch_with(platform, client, **claims(int(time.time()), platform)))


# -- signature, key and algorithm ---------------------------------------------------------


def test_signature_by_another_key_under_the_registered_kid(
    client: FlaskClient, platform: TestPlatform, expect: Expect, other_key: rsa.RSAPrivateKey
) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), key=other_key)
    expect.rejected(post(platform, client, token, login.state), 401, "bad_signature")


def test_tampered_claims_break_the_signature(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    header, _, signature = platform.sign(platform.claims(login.nonce)).split(".")
    forged = b64json(platform.claims(login.nonce, **{CLAIM + "roles": [ROLE_INSTRUCTOR]}))
    token = f"{header}.{forged}.{signature}"
    expect.rejected(post(platform, client, token, login.state), 401, "bad_signature")


def test_empty_signature_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    header, payload, _ = platform.sign(platform.claims(login.nonce)).split(".")
    token = f"{header}.{payload}."
    expect.rejected(post(platform, client, token, login.state), 401, "bad_signature")


def test_unknown_kid(client: FlaskClient, platform: TestPlatform, expect: Expect) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), kid="not-in-the-keyset")
    expect.rejected(
        post(platform, client, token, login.state), 401, "unknown_kid", "'not-in-the-keyset'"
    )
    assert platform.route is not None
    assert platform.route.hits == 2  # the first fetch, then one re-fetch for the unknown kid


def test_missing_kid(client: FlaskClient, platform: TestPlatform, expect: Expect) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), kid=None)
    assert "kid" not in json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    expect.rejected(post(platform, client, token, login.state), 401, "missing_kid")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect, alg: str
) -> None:
    login = platform.login(client)
    header = {"typ": "JWT", "alg": alg, "kid": platform.kid}
    token = f"{b64json(header)}.{b64json(platform.claims(login.nonce))}."
    expect.rejected(post(platform, client, token, login.state), 401, "algorithm_not_allowed")


def test_alg_missing_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    valid = platform.sign(platform.claims(login.nonce)).split(".")
    token = f"{b64json({'kid': platform.kid})}.{valid[1]}.{valid[2]}"
    expect.rejected(
        post(platform, client, token, login.state), 401, "algorithm_not_allowed", "no algorithm"
    )


def test_hs256_signed_with_the_public_key_pem_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    """The classic key-confusion attack: the public key is no secret."""
    login = platform.login(client)
    pem = platform.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = (
        f"{b64json({'typ': 'JWT', 'alg': 'HS256', 'kid': platform.kid})}."
        f"{b64json(platform.claims(login.nonce))}"
    )
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    expect.rejected(
        post(platform, client, token, login.state), 401, "algorithm_not_allowed", "'HS256'"
    )


def test_algorithm_other_than_the_key_declares_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), alg="RS512")
    expect.rejected(post(platform, client, token, login.state), 401, "algorithm_mismatch", "RS256")


def test_rs512_is_accepted_when_the_key_declares_no_algorithm(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    assert platform.route is not None and platform.route.hits == 0
    platform.route.document = {"keys": [jwk_of(platform.key, platform.kid, alg=None)]}
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), alg="RS512")
    expect.accepted(post(platform, client, token, login.state))


# -- state, nonce and replay --------------------------------------------------------------


def test_exact_replay_of_a_successful_launch_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect, redis_client: redis.Redis
) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce))
    expect.accepted(post(platform, client, token, login.state))
    assert state_cookie(client, login.state) is None  # the launch cleared its cookie
    assert not redis_client.exists(state_key(login.state), nonce_key(login.nonce))
    # An attacker replays the very same POST, cookie included.
    client.set_cookie(STATE_COOKIE_PREFIX + login.state, login.state, path="/lti/")
    expect.rejected(post(platform, client, token, login.state), 401, "state_unknown")


def test_old_id_token_with_a_fresh_valid_state_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect, redis_client: redis.Redis
) -> None:
    first = platform.login(client)
    old_token = platform.sign(platform.claims(first.nonce))
    expect.accepted(post(platform, client, old_token, first.state))
    fresh = platform.login(client)
    assert state_cookie(client, fresh.state) == fresh.state
    expect.rejected(post(platform, client, old_token, fresh.state), 401, "nonce_invalid")
    # The fresh state was spent by the attempt: it cannot be tried again.
    assert not redis_client.exists(state_key(fresh.state))


def test_a_token_for_another_login_is_rejected(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    """Two logins in flight: the id_token of one posted with the state of the other."""
    one, two = platform.login(client), platform.login(client)
    token_for_one = platform.sign(platform.claims(one.nonce))
    expect.rejected(post(platform, client, token_for_one, two.state), 401, "nonce_invalid")


def test_missing_state(client: FlaskClient, platform: TestPlatform, expect: Expect) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce))
    expect.rejected(post(platform, client, token, None), 400, "missing_state")


def test_wrong_state(client: FlaskClient, platform: TestPlatform, expect: Expect) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce))
    expect.rejected(post(platform, client, token, "w" * 43), 401, "state_not_bound")


def test_state_cookie_lost_in_a_fresh_browser(
    app: Flask, client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce))
    other_browser = app.test_client()
    expect.rejected(post(platform, other_browser, token, login.state), 401, "state_not_bound")


def test_state_cookie_deleted_before_the_post_explains_third_party_cookies(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    client.delete_cookie(STATE_COOKIE_PREFIX + login.state, path="/lti/")
    assert state_cookie(client, login.state) is None
    token = platform.sign(platform.claims(login.nonce))
    response = platform.post_launch(client, token, login.state)
    assert response.status_code == 401
    page = response.get_data(as_text=True)
    assert page_field(page, "error-title") == "Lifeline could not match this launch to your browser"
    assert "did not come back with the launch" in page_field(page, "error-detail")
    assert "third-party cookies" in page_field(page, "error-hint")
    assert expect.counts() == (0, 0, 0)


def test_rejected_launch_clears_its_state_cookie(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    assert state_cookie(client, login.state) == login.state
    token = platform.sign(platform.claims(login.nonce, **{CLAIM + "version": "1.1.0"}))
    response = post(platform, client, token, login.state)
    expect.rejected(response, 400, "wrong_version")
    assert state_cookie(client, login.state) is None
    (deleted,) = response.headers.getlist("Set-Cookie")
    assert deleted.startswith(f"{STATE_COOKIE_PREFIX}{login.state}=;")
    assert "Max-Age=0" in deleted and "Path=/lti/" in deleted


# -- malformed requests -------------------------------------------------------------------

GARBAGE_TOKENS: list[Any] = [
    pytest.param("abc", id="one-word"),
    pytest.param("a.b.c", id="three-letters"),
    pytest.param("a.b", id="two-parts"),
    pytest.param("a.b.c.d.e", id="five-parts-like-jwe"),
    pytest.param("!!!.@@@.###", id="not-base64"),
    pytest.param("e30=.e30=.e30=", id="base64-with-padding"),
    pytest.param(f"{b64('hello')}.{b64('world')}.{b64('sig')}", id="base64-but-not-json"),
    pytest.param(".".join([b64(b"\xff\xfe\xfd"), b64(b"\x00\x01"), "AA"]), id="base64-of-binary"),
    pytest.param(f"{b64json([1, 2])}.{b64json({})}.AA", id="header-not-an-object"),
    pytest.param(f"{b64json({'alg': 'RS256'})}.{b64json('claims')}.AA", id="body-not-an-object"),
    pytest.param(f"{b64json({'alg': 'RS256'})}.{b64json({})}.!!", id="signature-not-base64"),
]


@pytest.mark.parametrize("garbage", GARBAGE_TOKENS)
def test_garbage_instead_of_a_jwt(
    client: FlaskClient, platform: TestPlatform, expect: Expect, garbage: str
) -> None:
    login = platform.login(client)
    expect.rejected(post(platform, client, garbage, login.state), 400, "id_token_malformed")


def test_id_token_missing(client: FlaskClient, platform: TestPlatform, expect: Expect) -> None:
    login = platform.login(client)
    expect.rejected(post(platform, client, None, login.state), 400, "missing_id_token")
    expect.rejected(post(platform, client, "", login.state), 400, "missing_id_token")


def test_oidc_error_post_back_shows_the_platforms_words(
    client: FlaskClient, platform: TestPlatform, expect: Expect, redis_client: redis.Redis
) -> None:
    login = platform.login(client)
    assert redis_client.exists(state_key(login.state))
    form = {
        "error": "login_required",
        "error_description": "The user is not logged in to Moodle",
        "state": login.state,
    }
    response = client.post("/lti/launch", data=form)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert page_field(page, "error-title") == "The LMS reported an error"
    assert page_field(page, "error-detail") == (
        "The LMS refused to complete the launch: login_required "
        "(The user is not logged in to Moodle)"
    )
    assert "login_required means you are not logged in" in page_field(page, "error-hint")
    assert not redis_client.exists(state_key(login.state))  # the login is over
    body = expect.rejected(
        client.post("/lti/launch", data=form, headers=JSON), 400, "platform_error"
    )
    assert "The user is not logged in to Moodle" in body["detail"]


def test_oidc_error_text_is_escaped_and_bounded(
    client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    form = {"error": "<script>alert(1)</script>", "error_description": "<b>x</b>" + "d" * 5000}
    response = client.post("/lti/launch", data=form)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "<script>alert(1)" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    detail = page_field(page, "error-detail")
    assert detail.startswith("The LMS refused to complete the launch: <script>alert(1)</script>")
    assert len(detail) < 1100
    expect.rejected(client.post("/lti/launch", data=form, headers=JSON), 400, "platform_error")


def test_disabled_registration_is_refused(
    app: Flask, client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)  # logged in while still active
    services = app.extensions["lifeline"]
    with services.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE platforms SET status = 'disabled' WHERE id = :id"),
            {"id": platform.platform_id},
        )
    services.registrations.clear()
    token = platform.sign(platform.claims(login.nonce))
    expect.rejected(
        post(platform, client, token, login.state), 403, "registration_not_active", "disabled"
    )


# -- hostile input never gets a 500 -------------------------------------------------------

_HEADER = b64json({"alg": "RS256", "kid": "lms-key-1"})
HOSTILE_FORMS: list[Any] = [
    pytest.param(
        {"id_token": "x" * (64 * 1024 + 1), "state": "s"}, 413, "id_token_too_large", id="huge"
    ),
    pytest.param(
        {"id_token": "x" * (300 * 1024), "state": "s"},
        413,
        "request_entity_too_large",
        id="bigger-than-a-request-may-be",
    ),
    pytest.param(
        {"id_token": "ø∂ƒ.©˙∆.˚¬…", "state": "☃"}, 400, "id_token_malformed", id="unicode-junk"
    ),
    pytest.param({"id_token": "\x00.\x00.\x00", "state": "s"}, 400, "id_token_malformed", id="nul"),
    pytest.param(
        {"id_token": ["abc", "def"], "state": ["s1", "s2"]},
        400,
        "id_token_malformed",
        id="repeated-fields",
    ),
    pytest.param(
        {"id_token[]": "a.b.c", "state[]": "s"}, 400, "missing_id_token", id="php-style-arrays"
    ),
    pytest.param(
        {"id_token": '{"alg": "RS256", "iss": "x"}', "state": "s"},
        400,
        "id_token_malformed",
        id="json-looking-garbage",
    ),
    pytest.param(
        {"id_token": f"{b64json('RS256')}.{b64json({})}.AA", "state": "s"},
        400,
        "id_token_malformed",
        id="header-a-string",
    ),
    pytest.param(
        {"id_token": f"{b64json(None)}.{b64json(None)}.AA", "state": "s"},
        400,
        "id_token_malformed",
        id="header-null",
    ),
    pytest.param(
        {"id_token": f"{b64('[' * 30_000)}.{b64json({})}.AA", "state": "s"},
        400,
        "id_token_malformed",
        id="deeply-nested-header",
    ),
    pytest.param(
        {
            "id_token": ".".join([_HEADER, b64('{"a":' * 5_000 + "1" + "}" * 5_000), "AA"]),
            "state": "s",
        },
        400,
        "id_token_malformed",
        id="deeply-nested-claims",
    ),
    pytest.param(
        {"id_token": f"{b64json({'alg': {'RS256': True}})}.{b64json({})}.AA", "state": "s"},
        401,
        "algorithm_not_allowed",
        id="alg-an-object",
    ),
    pytest.param(
        {
            "id_token": ".".join([_HEADER, b64json({"iss": "a\x00b", "aud": "x"}), "AA"]),
            "state": "s",
        },
        400,
        "id_token_malformed",
        id="nul-in-iss",
    ),
    pytest.param(
        {
            "id_token": ".".join([_HEADER, b64(rb'{"iss": "\ud800", "aud": "x"}'), "AA"]),
            "state": "s",
        },
        400,
        "id_token_malformed",
        id="lone-surrogate-in-iss",
    ),
    pytest.param(
        {"id_token": f"{_HEADER}.{b64json({'iss': ['x'], 'aud': 'x'})}.AA", "state": "s"},
        401,
        "missing_iss",
        id="iss-a-list",
    ),
    pytest.param(
        {"id_token": f"{_HEADER}.{b64json({'iss': 'x' * 20_000, 'aud': 'x'})}.AA", "state": "s"},
        401,
        "unknown_issuer",
        id="iss-very-long",
    ),
    pytest.param(
        {
            "id_token": f"{_HEADER}.{b64json({'iss': 'https://lms.example.edu', 'aud': [1]})}.AA",
            "state": "s",
        },
        401,
        "missing_aud",
        id="aud-list-of-numbers",
    ),
    pytest.param(
        {
            "id_token": f"{_HEADER}.{b64json({'iss': 'https://lms.example.edu', 'aud': {}})}.AA",
            "state": "s",
        },
        401,
        "missing_aud",
        id="aud-an-object",
    ),
    pytest.param(
        {"id_token": "abc", "state": "a\r\nSet-Cookie: evil=1"},
        400,
        "id_token_malformed",
        id="header-injection-in-state",
    ),
    pytest.param(
        {"id_token": "abc", "state": "x; Domain=evil.example; Max-Age=9999"},
        400,
        "id_token_malformed",
        id="cookie-attributes-in-state",
    ),
    pytest.param(
        {"id_token": "abc", "state": "s" * 10_000}, 400, "id_token_malformed", id="huge-state"
    ),
    pytest.param({"state": "s"}, 400, "missing_id_token", id="no-id-token"),
    pytest.param({}, 400, "missing_id_token", id="empty-form"),
    pytest.param(
        {"error": ["a", "b"], "error_description": "\x00\ufffd"},
        400,
        "platform_error",
        id="error-post-back-junk",
    ),
]


@pytest.mark.parametrize(("form", "status", "code"), HOSTILE_FORMS)
def test_hostile_input_is_a_4xx_never_a_500(
    client: FlaskClient,
    platform: TestPlatform,
    expect: Expect,
    form: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = client.post("/lti/launch", data=form, headers=JSON)
    expect.rejected(response, status, code)
    for cookie in response.headers.getlist("Set-Cookie"):
        assert "evil" not in cookie and "\n" not in cookie
        assert re.match(r"lifeline-state-[A-Za-z0-9_-]+=;", cookie), cookie


@pytest.mark.parametrize(
    ("send", "status", "code"),
    [
        pytest.param(
            lambda c: c.post("/lti/launch", json={"id_token": "a.b.c", "state": "s"}),
            400,
            "missing_id_token",
            id="json-body",
        ),
        pytest.param(
            lambda c: c.post(
                "/lti/launch",
                data=b"id_token=%ff%fe.%00&state=%ff",
                content_type="application/x-www-form-urlencoded",
            ),
            400,
            "id_token_malformed",
            id="undecodable-bytes",
        ),
        pytest.param(
            lambda c: c.post(
                "/lti/launch",
                data=b"garbage",
                content_type="multipart/form-data; boundary=nope",
            ),
            400,
            "missing_id_token",
            id="broken-multipart",
        ),
        pytest.param(lambda c: c.get("/lti/launch"), 405, "method_not_allowed", id="get"),
    ],
)
def test_hostile_requests_are_a_4xx_never_a_500(
    client: FlaskClient,
    platform: TestPlatform,
    expect: Expect,
    send: Callable[[FlaskClient], TestResponse],
    status: int,
    code: str,
) -> None:
    client.environ_base["HTTP_ACCEPT"] = "application/json"
    expect.rejected(send(client), status, code)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"sub": "a\x00b"}, id="nul-in-sub"),
        pytest.param({"name": "Lin\x00"}, id="nul-in-name"),
        pytest.param({CLAIM + "context": {"id": "c\x00", "title": "T"}}, id="nul-in-context"),
        pytest.param({"sub": "a\ud800"}, id="surrogate-in-sub"),
        pytest.param({"name": "\udfff"}, id="surrogate-in-name"),
        pytest.param({CLAIM + "resource_link": {"id": "l\x00"}}, id="nul-in-resource-link"),
    ],
)
def test_signed_text_the_database_cannot_hold_is_a_400(
    client: FlaskClient, platform: TestPlatform, expect: Expect, claims: dict[str, Any]
) -> None:
    """Even a genuinely signed token: PostgreSQL cannot store NUL, UTF-8 no lone surrogate."""
    expect.rejected(launch_with(platform, client, **claims), 400, "id_token_malformed")


# -- what a rejection leaves behind -------------------------------------------------------


def test_last_error_records_the_reason_once_the_registration_is_known(
    app: Flask, client: FlaskClient, platform: TestPlatform, other_key: rsa.RSAPrivateKey
) -> None:
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), key=other_key)
    response = post(platform, client, token, login.state)
    assert response.status_code == 401
    with app.extensions["lifeline"].db.engine.connect() as conn:
        last_error, last_error_at, people = conn.execute(
            text(
                "SELECT last_error, last_error_at, (SELECT count(*) FROM people) "
                "FROM platforms WHERE id = :id"
            ),
            {"id": platform.platform_id},
        ).one()
    assert last_error == (
        "bad_signature: The id_token's signature does not match the platform's public key."
    )
    assert last_error_at is not None
    assert people == 0


def test_rejection_before_the_registration_is_known_touches_no_platform(
    app: Flask, client: FlaskClient, platform: TestPlatform, expect: Expect
) -> None:
    login = platform.login(client)
    response = launch_with(platform, client, iss="https://stranger.example")
    expect.rejected(response, 401, "unknown_issuer")
    with app.extensions["lifeline"].db.engine.connect() as conn:
        row = conn.execute(text("SELECT last_error, last_error_at FROM platforms")).one()
    assert tuple(row) == (None, None)
    assert login.state  # the unrelated login is untouched


@pytest.mark.parametrize(
    ("claims", "testid"),
    [
        pytest.param({}, "learner-home", id="learner"),
        pytest.param({CLAIM + "roles": [ROLE_INSTRUCTOR]}, "instructor-home", id="instructor"),
    ],
)
def test_a_good_launch_after_rejections_still_works(
    client: FlaskClient,
    platform: TestPlatform,
    expect: Expect,
    claims: dict[str, Any],
    testid: str,
) -> None:
    """The checks above are not vacuous: the same helpers accept a genuine launch."""
    expect.rejected(launch_with(platform, client, nonce=drop()), 401, "missing_nonce")
    expect.accepted(launch_with(platform, client, **claims), testid)
    people, courses, exercises = expect.counts()
    assert (people, courses, exercises) == (1, 1, 1)
