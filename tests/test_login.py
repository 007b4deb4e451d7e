"""OIDC third-party login initiation (/lti/login): what it accepts, refuses and sends back."""

from __future__ import annotations

import html
import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from lti_tool.lti.login import STATE_COOKIE_PREFIX, nonce_key, state_key
from tests.platform import TestPlatform

JSON = {"Accept": "application/json"}
HTTPS = "https://lifeline.test"


def login_request(
    client: FlaskClient, params: dict[str, str], method: str = "POST", **kwargs: Any
) -> TestResponse:
    if method == "GET":
        return client.get("/lti/login", query_string=params, **kwargs)
    return client.post("/lti/login", data=params, **kwargs)


def refused(response: TestResponse, status: int, code: str, detail: str | None = None) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict), response.get_data(as_text=True)
    assert body["error"] == code, body
    assert body["status"] == status
    assert body["title"] and body["detail"]
    if detail is not None:
        assert detail in body["detail"], body["detail"]
    assert "Location" not in response.headers
    assert response.headers.getlist("Set-Cookie") == []
    return str(body["detail"])


def redirect_query(response: TestResponse) -> dict[str, str]:
    assert response.status_code == 302, response.get_data(as_text=True)
    query = parse_qs(urlsplit(response.headers["Location"]).query, keep_blank_values=True)
    assert all(len(values) == 1 for values in query.values()), query
    return {name: values[0] for name, values in query.items()}


@pytest.fixture
def second(app: Flask, platform: TestPlatform) -> TestPlatform:
    """A second registration of the same issuer (Canvas-style: one client_id per tool install)."""
    lms = TestPlatform(
        platform.jwks_server, client_id="lifeline-client-2", deployment_id="deployment-2"
    )
    lms.register(app, name="Test LMS, second install")
    assert lms.platform_id != platform.platform_id
    return lms


# -- the redirect -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_login_redirects_to_the_platform_with_every_oidc_parameter(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis, method: str
) -> None:
    response = login_request(client, platform.login_params(), method)
    location = urlsplit(response.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == (
        "https",
        "lms.example.edu",
        "/auth",
    )
    query = redirect_query(response)
    state, nonce = query.pop("state"), query.pop("nonce")
    assert query == {
        "scope": "openid",
        "response_type": "id_token",
        "response_mode": "form_post",
        "prompt": "none",
        "client_id": platform.client_id,
        "redirect_uri": "https://lifeline.test/lti/launch",
        "login_hint": "user-hint-1",
        "lti_message_hint": "message-hint-1",
    }
    assert len(state) >= 40 and len(nonce) >= 40 and state != nonce
    # Both are kept in Redis, for the login's lifetime, tied to this registration.
    record = json.loads(redis_client.get(state_key(state)) or "null")
    assert record == {
        "nonce": nonce,
        "registration_id": platform.platform_id,
        "target_link_uri": "https://lifeline.test/lti/launch",
    }
    assert redis_client.get(nonce_key(nonce)) == state.encode()
    assert 590 <= redis_client.ttl(state_key(state)) <= 600
    assert 590 <= redis_client.ttl(nonce_key(nonce)) <= 600


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_launch_after_a_get_or_post_login_works(
    client: FlaskClient, platform: TestPlatform, method: str
) -> None:
    login = platform.login(client, method=method)
    response = platform.post_launch(
        client, platform.sign(platform.claims(login.nonce)), login.state
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert 'data-testid="learner-home"' in response.get_data(as_text=True)


def test_every_login_gets_a_fresh_state_and_nonce(
    client: FlaskClient, platform: TestPlatform
) -> None:
    logins = [platform.login(client) for _ in range(3)]
    assert len({x.state for x in logins}) == 3
    assert len({x.nonce for x in logins}) == 3
    # Two tabs of the same browser: each login's launch works, in any order.
    for login in reversed(logins[1:]):
        token = platform.sign(platform.claims(login.nonce))
        assert platform.post_launch(client, token, login.state).status_code == 200


def test_lti_message_hint_is_only_passed_on_when_sent(
    client: FlaskClient, platform: TestPlatform
) -> None:
    query = redirect_query(login_request(client, platform.login_params(lti_message_hint=None)))
    assert "lti_message_hint" not in query
    assert query["login_hint"] == "user-hint-1"


def test_client_id_and_deployment_id_are_optional_with_one_registration(
    client: FlaskClient, platform: TestPlatform
) -> None:
    params = platform.login_params(client_id=None, lti_deployment_id=None)
    assert redirect_query(login_request(client, params))["client_id"] == platform.client_id


def test_auth_url_with_its_own_query_keeps_it(app: Flask, jwks_server: Any) -> None:
    lms = TestPlatform(jwks_server)
    lms.register(app, auth_login_url="https://lms.example.edu/auth?tenant=7")
    response = login_request(app.test_client(), lms.login_params())
    assert response.headers["Location"].startswith("https://lms.example.edu/auth?tenant=7&")
    query = redirect_query(response)
    assert query["tenant"] == "7" and query["scope"] == "openid"


# -- the state cookie ---------------------------------------------------------------------


def _state_cookie(response: TestResponse) -> list[str]:
    query = redirect_query(response)
    (cookie,) = response.headers.getlist("Set-Cookie")
    name_value, *attributes = [part.strip() for part in cookie.split(";")]
    assert name_value == f"{STATE_COOKIE_PREFIX}{query['state']}={query['state']}"
    return attributes


def test_state_cookie_over_https_is_fit_for_an_lms_iframe(
    client: FlaskClient, platform: TestPlatform
) -> None:
    response = login_request(client, platform.login_params(), base_url=HTTPS)
    attributes = _state_cookie(response)
    assert "Path=/lti/" in attributes
    assert "Max-Age=600" in attributes
    assert "SameSite=None" in attributes
    assert "Secure" in attributes
    assert "Partitioned" in attributes
    assert "HttpOnly" in attributes


def test_state_cookie_over_plain_http_is_lax(client: FlaskClient, platform: TestPlatform) -> None:
    attributes = _state_cookie(login_request(client, platform.login_params()))
    assert "Path=/lti/" in attributes and "HttpOnly" in attributes
    assert "SameSite=Lax" in attributes
    assert "Secure" not in attributes and "Partitioned" not in attributes


def test_full_launch_over_https_and_the_cookie_is_cleared_the_same_way(
    client: FlaskClient, platform: TestPlatform
) -> None:
    response = login_request(client, platform.login_params(), base_url=HTTPS)
    query = redirect_query(response)
    token = platform.sign(platform.claims(query["nonce"]))
    launched = client.post(
        "/lti/launch", data={"id_token": token, "state": query["state"]}, base_url=HTTPS
    )
    assert launched.status_code == 200, launched.get_data(as_text=True)
    cleared = [
        c
        for c in launched.headers.getlist("Set-Cookie")
        if c.startswith(f"{STATE_COOKIE_PREFIX}{query['state']}=;")
    ]
    assert len(cleared) == 1
    for attribute in ("Max-Age=0", "Path=/lti/", "SameSite=None", "Secure", "Partitioned"):
        assert attribute in cleared[0]


def test_a_secure_state_cookie_is_not_sent_over_plain_http(
    client: FlaskClient, platform: TestPlatform
) -> None:
    response = login_request(client, platform.login_params(), base_url=HTTPS)
    query = redirect_query(response)
    token = platform.sign(platform.claims(query["nonce"]))
    launched = platform.post_launch(client, token, query["state"], headers=JSON)
    assert launched.status_code == 401
    assert launched.get_json()["error"] == "state_not_bound"


# -- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("name", ["iss", "login_hint", "target_link_uri"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_missing_required_parameter_is_a_400_naming_it(
    client: FlaskClient,
    platform: TestPlatform,
    redis_client: redis.Redis,
    method: str,
    name: str,
    value: str | None,
) -> None:
    response = login_request(client, platform.login_params(**{name: value}), method, headers=JSON)
    refused(response, 400, f"missing_{name}", f"no {name!r} parameter")
    assert redis_client.keys("lifeline:*") == []


def test_missing_parameter_page_for_a_person(client: FlaskClient, platform: TestPlatform) -> None:
    response = login_request(client, platform.login_params(iss=None), "GET")
    assert response.status_code == 400
    page = response.get_data(as_text=True)

    def field(testid: str) -> str:
        match = re.search(rf'data-testid="{testid}">(.*?)</(?:h1|p)>', page, re.DOTALL)
        assert match is not None, page
        return html.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()

    assert field("error-title") == "The LMS sent an incomplete or malformed launch"
    assert field("error-detail") == "The login request has no 'iss' parameter."
    assert "iss, login_hint and target_link_uri" in field("error-hint")


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        pytest.param({"login_hint": "h" * 4097}, "invalid_login_hint", id="login-hint-too-long"),
        pytest.param({"iss": "https://lms.example.edu\x00"}, "invalid_iss", id="nul-in-iss"),
        pytest.param({"client_id": "c\x00"}, "invalid_client_id", id="nul-in-client-id"),
    ],
)
def test_unusable_parameter_is_a_400(
    client: FlaskClient, platform: TestPlatform, overrides: dict[str, str], code: str
) -> None:
    response = login_request(client, platform.login_params(**overrides), headers=JSON)
    refused(response, 400, code)


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/lti/launch",
        "http://lifeline.test/lti/launch",
        "https://lifeline.test.evil.example/lti/launch",
        "https://lifeline.test@evil.example/lti/launch",
        "https://lifeline.test:8443/lti/launch",
        "//evil.example/lti/launch",
        "/lti/launch",
        "javascript:alert(1)",
    ],
)
def test_target_link_uri_pointing_at_another_site_is_a_400(
    client: FlaskClient, platform: TestPlatform, target: str
) -> None:
    response = login_request(client, platform.login_params(target_link_uri=target), headers=JSON)
    refused(response, 400, "invalid_target_link_uri", repr(target))


def test_target_link_uri_elsewhere_on_this_site_is_accepted_and_must_match_the_launch(
    client: FlaskClient, platform: TestPlatform
) -> None:
    target = "https://lifeline.test/lti/launch?exercise=7"
    login = platform.login(client, target_link_uri=target)
    claims = platform.claims(login.nonce)
    mismatched = platform.post_launch(client, platform.sign(claims), login.state, headers=JSON)
    assert mismatched.status_code == 400
    assert mismatched.get_json()["error"] == "target_link_uri_mismatch"

    login = platform.login(client, target_link_uri=target)
    claims = platform.claims(
        login.nonce, **{"https://purl.imsglobal.org/spec/lti/claim/target_link_uri": target}
    )
    matched = platform.post_launch(client, platform.sign(claims), login.state)
    assert matched.status_code == 200, matched.get_data(as_text=True)


def test_unknown_issuer_is_a_403(client: FlaskClient, platform: TestPlatform) -> None:
    response = login_request(
        client, platform.login_params(iss="https://unknown.example"), headers=JSON
    )
    refused(response, 403, "unknown_issuer", "'https://unknown.example'")


def test_unknown_client_id_is_a_403(client: FlaskClient, platform: TestPlatform) -> None:
    response = login_request(client, platform.login_params(client_id="not-ours"), headers=JSON)
    refused(response, 403, "unknown_client_id", "'not-ours'")


def test_unknown_deployment_is_a_403(client: FlaskClient, platform: TestPlatform) -> None:
    params = platform.login_params(lti_deployment_id="deployment-99")
    refused(
        login_request(client, params, headers=JSON), 403, "unknown_deployment", "'deployment-99'"
    )


@pytest.mark.parametrize("status", ["disabled", "pending"])
def test_registration_not_active_is_a_403(
    app: Flask, client: FlaskClient, platform: TestPlatform, status: str
) -> None:
    services = app.extensions["lifeline"]
    with services.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE platforms SET status = :status WHERE id = :id"),
            {"status": status, "id": platform.platform_id},
        )
    services.registrations.clear()
    response = login_request(client, platform.login_params(), headers=JSON)
    refused(response, 403, "registration_not_active", status)


# -- one issuer, several client ids -------------------------------------------------------


def test_several_registrations_without_client_id_is_a_400(
    client: FlaskClient, platform: TestPlatform, second: TestPlatform
) -> None:
    params = platform.login_params(client_id=None)
    refused(login_request(client, params, headers=JSON), 400, "missing_client_id", "several")


def test_several_registrations_with_client_id_picks_the_right_one_and_each_launches(
    app: Flask,
    client: FlaskClient,
    platform: TestPlatform,
    second: TestPlatform,
    redis_client: redis.Redis,
) -> None:
    for lms, sub in ((platform, "first-user"), (second, "second-user")):
        login = lms.login(client)
        assert redirect_query(login.response)["client_id"] == lms.client_id
        record = json.loads(redis_client.get(state_key(login.state)) or "null")
        assert record["registration_id"] == lms.platform_id
        token = lms.sign(lms.claims(login.nonce, sub=sub))
        response = lms.post_launch(client, token, login.state)
        assert response.status_code == 200, response.get_data(as_text=True)
    with app.extensions["lifeline"].db.engine.connect() as conn:
        people = conn.execute(text("SELECT platform_id, sub FROM people ORDER BY sub")).all()
    assert [tuple(p) for p in people] == [
        (platform.platform_id, "first-user"),
        (second.platform_id, "second-user"),
    ]


def test_a_token_for_the_other_registration_is_rejected(
    client: FlaskClient, platform: TestPlatform, second: TestPlatform
) -> None:
    """Logged in through client 1, the id_token is addressed to client 2 of the same issuer."""
    login = platform.login(client)
    token = second.sign(second.claims(login.nonce))
    response = platform.post_launch(client, token, login.state, headers=JSON)
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "state_registration_mismatch"
    assert "different registration" in body["detail"]


def test_an_expired_login_cannot_be_completed(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    login = platform.login(client)
    redis_client.delete(state_key(login.state))  # what the login TTL does after 600 s
    token = platform.sign(platform.claims(login.nonce))
    response = platform.post_launch(client, token, login.state, headers=JSON)
    assert response.status_code == 401
    body = response.get_json()
    assert body["error"] == "state_unknown"
    assert body["title"] == "This launch has expired or was already used"


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        pytest.param({"iss": "☃" * 100}, 403, "unknown_issuer", id="unicode-issuer"),
        pytest.param({"iss": "x" * 4096}, 403, "unknown_issuer", id="longest-issuer"),
        pytest.param(
            {"login_hint": "x" * (300 * 1024)}, 413, "request_entity_too_large", id="huge"
        ),
        pytest.param(
            {"target_link_uri": "https://lifeline.test\r\n.evil.example/"},
            400,
            "invalid_target_link_uri",
            id="crlf-in-target",
        ),
        pytest.param({"client_id": "x" * 5000}, 400, "invalid_client_id", id="long-client-id"),
    ],
)
def test_hostile_login_is_a_4xx_never_a_500(
    client: FlaskClient, platform: TestPlatform, params: dict[str, str], status: int, code: str
) -> None:
    response = login_request(client, platform.login_params(**params), headers=JSON)
    refused(response, status, code)


def test_login_hint_with_line_breaks_cannot_inject_headers(
    client: FlaskClient, platform: TestPlatform
) -> None:
    hint = "user\r\nSet-Cookie: evil=1"
    response = login_request(client, platform.login_params(login_hint=hint))
    assert "%0D%0A" in response.headers["Location"]
    assert redirect_query(response)["login_hint"] == hint
    assert not any("evil" in c for c in response.headers.getlist("Set-Cookie"))
    assert [c.split("=", 1)[0] for c in response.headers.getlist("Set-Cookie")] == [
        STATE_COOKIE_PREFIX + redirect_query(response)["state"]
    ]


def test_repeated_parameters_use_the_first(client: FlaskClient, platform: TestPlatform) -> None:
    params: dict[str, Any] = platform.login_params()
    params["client_id"] = [platform.client_id, "someone-else"]
    query = redirect_query(client.post("/lti/login", data=params))
    assert query["client_id"] == platform.client_id
