"""Launches that survive blocked third-party cookies, at the HTTP level (the browser side runs
in tests/test_browser_platform_storage.py).

A "browser without cookies" here is a fresh test client for every request: whatever Lifeline
sets, nothing comes back. Every refusal is a 4xx that says why, writes no person, course or
exercise, and leaves no session behind.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from lti_tool.lti.login import STATE_COOKIE_PREFIX, nonce_key, platform_origin, state_key
from tests.platform import TestPlatform

JSON = {"Accept": "application/json"}
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin"}
TARGET = "post_message_forwarding"  # Canvas's name for its storage frame


# -- reading our pages --------------------------------------------------------------------


class _Page(HTMLParser):
    """Every element's attributes by data-testid, and the fields of every form by testid."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: dict[str, dict[str, str]] = {}
        self.forms: dict[str, dict[str, str]] = {}
        self._form: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        testid = values.get("data-testid")
        if testid:
            self.elements[testid] = values
        if tag == "form":
            self._form = testid or ""
            self.forms[self._form] = {}
        elif tag == "input" and self._form is not None and "name" in values:
            self.forms[self._form][values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def page(response: TestResponse) -> _Page:
    parsed = _Page()
    parsed.feed(response.get_data(as_text=True))
    return parsed


# -- the steps a browser takes ------------------------------------------------------------


def fresh(app: Flask) -> FlaskClient:
    """A browser that keeps no cookie: a new client for every request."""
    return app.test_client()


def storage_login(app: Flask, platform: TestPlatform, **overrides: str) -> tuple[str, str, _Page]:
    """A login with ``lti_storage_target``: the storage page, with its state and nonce."""
    params = platform.login_params(lti_storage_target=TARGET, **overrides)
    response = fresh(app).post("/lti/login", data=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    parsed = page(response)
    root = parsed.elements["storage-login"]
    query = parse_qs(urlsplit(root["data-next"]).query)
    return query["state"][0], query["nonce"][0], parsed


def plain_login(app: Flask, platform: TestPlatform) -> tuple[str, str]:
    login = platform.login(fresh(app))
    return login.state, login.nonce


def first_post(app: Flask, platform: TestPlatform, state: str, nonce: str) -> TestResponse:
    """The platform's post of the id_token, arriving without the state cookie."""
    token = platform.sign(platform.claims(nonce))
    return platform.post_launch(fresh(app), token, state)


def proof_of(response: TestResponse) -> dict[str, str]:
    """What the storage page posts once the platform handed back state and nonce."""
    assert response.status_code == 200, response.get_data(as_text=True)
    parsed = page(response)
    root = parsed.elements["storage-launch"]
    fields = dict(parsed.forms["storage-proof"])
    fields["lti_storage_state"] = root["data-state"]
    fields["lti_storage_nonce"] = root["data-nonce"]
    return fields


def continuation_of(response: TestResponse) -> dict[str, str]:
    return dict(page(response).forms["new-window-form"])


def post_launch(app: Flask, fields: dict[str, str], **headers: str) -> TestResponse:
    return fresh(app).post("/lti/launch", data=fields, headers={**SAME_ORIGIN, **headers})


def launch_id_of(response: TestResponse) -> str:
    body = response.get_data(as_text=True)
    match = re.search(r'href="/l/([A-Za-z0-9_-]+)/help/new"', body)
    assert match is not None, body[:800]
    return match.group(1)


def counts(app: Flask) -> tuple[int, int, int]:
    with app.extensions["lifeline"].db.engine.connect() as conn:
        people, courses, exercises = (
            int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            for table in ("people", "courses", "exercises")
        )
    return people, courses, exercises


def session_of(app: Flask, response: TestResponse) -> dict[str, Any]:
    """The session this response sets (an error page may keep a CSRF token in it)."""
    for cookie in response.headers.getlist("Set-Cookie"):
        if cookie.startswith("lifeline_session="):
            value = cookie.split(";", 1)[0].split("=", 1)[1]
            serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
            loaded: dict[str, Any] = serializer.loads(value)
            return loaded
    return {}


def no_launch_in_session(app: Flask, response: TestResponse) -> None:
    assert "launches" not in session_of(app, response)


def refused(app: Flask, response: TestResponse, status: int, code: str) -> None:
    """A 4xx naming ``code`` that wrote nothing and opened no session."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_data(as_text=True)
    assert code in body, body[:800]
    assert counts(app) == (0, 0, 0)
    no_launch_in_session(app, response)


def refused_json(app: Flask, response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body, dict) and body["error"] == code, body
    assert body["title"] and body["detail"]
    assert counts(app) == (0, 0, 0)
    no_launch_in_session(app, response)
    return body


# -- login ----------------------------------------------------------------------------------


def test_login_with_a_storage_target_puts_state_and_nonce_through_a_page(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    params = platform.login_params(lti_storage_target=TARGET)
    response = fresh(app).post("/lti/login", data=params)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    assert "Location" not in response.headers
    root = page(response).elements["storage-login"]
    # Data goes only to the origin of the platform's OIDC authorization endpoint.
    assert root["data-platform-origin"] == "https://lms.example.edu"
    assert root["data-storage-target"] == TARGET
    assert root["data-storage-mode"] == "login"
    next_url = urlsplit(root["data-next"])
    assert (next_url.scheme, next_url.netloc, next_url.path) == (
        "https",
        "lms.example.edu",
        "/auth",
    )
    query = {k: v[0] for k, v in parse_qs(next_url.query).items()}
    state, nonce = query["state"], query["nonce"]
    assert query["redirect_uri"] == "https://lifeline.test/lti/launch"
    assert query["lti_message_hint"] == "message-hint-1"
    assert "lti_storage_target" not in query  # a login parameter, not an auth one
    # The key names of 1EdTech's reference library, holding the values themselves.
    assert (root["data-state-key"], root["data-state"]) == ("lti_state_" + state, state)
    assert (root["data-nonce-key"], root["data-nonce"]) == ("lti_nonce_" + nonce, nonce)
    assert "/static/platform-storage.js" in response.get_data(as_text=True)
    # The cookie is still set: browsers that keep it need nothing else.
    assert any(
        c.startswith(f"{STATE_COOKIE_PREFIX}{state}={state}")
        for c in response.headers.getlist("Set-Cookie")
    )
    # The login remembers that it used platform storage, and where.
    record = redis_client.get(state_key(state))
    assert record is not None and b'"storage_target": "post_message_forwarding"' in record
    assert b'"storage_origin": "https://lms.example.edu"' in record
    assert redis_client.get(nonce_key(nonce)) == state.encode()


@pytest.mark.parametrize("target", [None, "", "   "])
def test_login_without_a_storage_target_still_redirects(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis, target: str | None
) -> None:
    login = platform.login(fresh(app), lti_storage_target=target)  # asserts the 302
    record = redis_client.get(state_key(login.state))
    assert record is not None and b"storage" not in record


@pytest.mark.parametrize(
    "target",
    ["two words", "x" * 65, "<script>alert(1)</script>", "frame\x00", "fr/ame", "naïve"],
)
def test_a_malformed_storage_target_is_refused(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis, target: str
) -> None:
    params = platform.login_params(lti_storage_target=target)
    response = fresh(app).post("/lti/login", data=params, headers=JSON)
    body = refused_json(app, response, 400, "invalid_lti_storage_target")
    assert "lti_storage_target" in body["detail"]
    assert "<script>" not in response.get_data(as_text=True)
    assert redis_client.keys("lifeline:state:*") == []
    assert response.headers.getlist("Set-Cookie") == []


@pytest.mark.parametrize(
    ("auth_url", "origin"),
    [
        ("https://lms.example.edu/auth", "https://lms.example.edu"),
        ("https://sso.example.edu:8443/api/authorize?x=1", "https://sso.example.edu:8443"),
        ("https://SSO.Example.edu:443/authorize", "https://sso.example.edu"),
        ("http://localhost:8000/demo/auth", "http://localhost:8000"),
        ("http://[::1]:8000/auth", "http://[::1]:8000"),
        ("ftp://lms.example.edu/auth", None),
        ("https:///auth", None),
        ("https://lms.example.edu:99999/auth", None),
    ],
)
def test_the_storage_origin_is_the_auth_endpoint_origin(auth_url: str, origin: str | None) -> None:
    assert platform_origin(auth_url) == origin


def test_the_storage_origin_follows_the_registered_auth_endpoint(
    app: Flask, platform: TestPlatform
) -> None:
    other = TestPlatform(platform.jwks_server, issuer="https://canvas.example.edu")
    other.register(app, auth_login_url="https://sso.example.edu:8443/api/lti/authorize")
    params = other.login_params(lti_storage_target="_parent")
    response = fresh(app).post("/lti/login", data=params)
    root = page(response).elements["storage-login"]
    assert root["data-platform-origin"] == "https://sso.example.edu:8443"
    assert root["data-storage-target"] == "_parent"


# -- launch through platform storage --------------------------------------------------------


def test_a_launch_without_its_cookie_asks_platform_storage_first(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    state, nonce, _ = storage_login(app, platform)
    response = first_post(app, platform, state, nonce)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    parsed = page(response)
    root = parsed.elements["storage-launch"]
    assert root["data-storage-mode"] == "launch"
    assert root["data-platform-origin"] == "https://lms.example.edu"
    assert root["data-storage-target"] == TARGET
    assert (root["data-state-key"], root["data-nonce-key"]) == (
        "lti_state_" + state,
        "lti_nonce_" + nonce,
    )
    form = parsed.forms["storage-proof"]
    assert form["state"] == state and form["id_token"]
    assert len(form["lti_storage_check"]) >= 40
    assert form["lti_storage_state"] == form["lti_storage_nonce"] == ""  # the page fills them
    assert parsed.elements["storage-proof"]["action"] == "/lti/launch"
    # If storage fails, the page offers the new window instead.
    assert parsed.forms["new-window-form"]["state"] == state
    assert "open-new-window" in parsed.elements
    # Nothing is accepted yet: the login is still waiting, and nobody was written.
    assert redis_client.exists(state_key(state)) and redis_client.exists(nonce_key(nonce))
    assert counts(app) == (0, 0, 0)
    assert session_of(app, response) == {}


def test_the_storage_proof_completes_the_launch_and_the_learner_asks_without_cookies(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    state, nonce, _ = storage_login(app, platform)
    proof = proof_of(first_post(app, platform, state, nonce))
    landing = post_launch(app, proof)
    assert landing.status_code == 200, landing.get_data(as_text=True)[:800]
    assert 'data-testid="learner-home"' in landing.get_data(as_text=True)
    assert not redis_client.exists(state_key(state))  # state and nonce were consumed
    assert not redis_client.exists(nonce_key(nonce))
    launch_id = launch_id_of(landing)
    # The landing's CSRF token works without a session: it belongs to the launch.
    landing_token = re.search(
        r'name="csrf-token" content="([^"]+)"', landing.get_data(as_text=True)
    )
    assert landing_token is not None

    # Every later request comes from a browser that sends no cookie at all.
    form_page = fresh(app).get(f"/l/{launch_id}/help/new")
    assert form_page.status_code == 200, form_page.get_data(as_text=True)[:800]
    parsed = page(form_page)
    assert "help-submit" in parsed.elements
    token = parsed.forms["help-form"]["csrf_token"]
    assert token == landing_token.group(1)
    created = fresh(app).post(
        f"/l/{launch_id}/help",
        data={"csrf_token": token, "question": "My loop stops at 9, I need 10."},
    )
    assert created.status_code == 303, created.get_data(as_text=True)[:800]
    status_url = created.headers["Location"]
    assert status_url.startswith(f"/l/{launch_id}/help/")
    status = fresh(app).get(status_url)
    assert status.status_code == 200
    assert "My loop stops at 9" in status.get_data(as_text=True)
    with app.extensions["lifeline"].db.engine.connect() as conn:
        questions = conn.execute(text("SELECT question FROM help_requests")).scalars().all()
    assert questions == ["My loop stops at 9, I need 10."]


def test_a_url_bound_launch_still_checks_csrf(app: Flask, platform: TestPlatform) -> None:
    state, nonce, _ = storage_login(app, platform)
    launch_id = launch_id_of(post_launch(app, proof_of(first_post(app, platform, state, nonce))))
    other_state, other_nonce, _ = storage_login(app, platform)
    other_id = launch_id_of(
        post_launch(app, proof_of(first_post(app, platform, other_state, other_nonce)))
    )
    other_token = page(fresh(app).get(f"/l/{other_id}/help/new")).forms["help-form"]["csrf_token"]
    for token in ("", "forged", other_token, "é" * 43):
        response = fresh(app).post(
            f"/l/{launch_id}/help", data={"csrf_token": token, "question": "Forged question"}
        )
        assert response.status_code == 400, (token, response.get_data(as_text=True)[:500])
        assert "CSRF" in response.get_data(as_text=True)
    with app.extensions["lifeline"].db.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM help_requests")).scalar_one() == 0


def test_a_cookie_launch_is_not_opened_by_its_url_alone(
    app: Flask, client: FlaskClient, platform: TestPlatform
) -> None:
    landing = platform.launch(client)  # the cookie path
    assert landing.status_code == 200
    launch_id = launch_id_of(landing)
    assert client.get(f"/l/{launch_id}/help/new").status_code == 200
    elsewhere = fresh(app).get(f"/l/{launch_id}/help/new")
    assert elsewhere.status_code == 403
    assert "another browser" in elsewhere.get_data(as_text=True)


# -- refusals -------------------------------------------------------------------------------


def test_no_cookie_and_no_storage_is_refused_with_a_new_window_offer(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    state, nonce = plain_login(app, platform)
    response = first_post(app, platform, state, nonce)
    refused(app, response, 401, "state_not_bound")
    parsed = page(response)
    assert parsed.elements["error"]["data-error"] == "state_not_bound"
    assert "third-party cookies" in response.get_data(as_text=True)
    button = parsed.elements["open-new-window"]
    assert button["type"] == "submit"
    form = parsed.elements["new-window-form"]
    assert (form["action"], form["target"], form["method"]) == (
        "/lti/launch/continue",
        "_blank",
        "post",
    )
    assert parsed.forms["new-window-form"]["state"] == state
    assert redis_client.exists(state_key(state))  # the new window may still use it
    # A browser that blocks cookies is routine: not the platform's "last error" on /admin.
    from lti_tool.lti.models import Platform

    with app.extensions["lifeline"].db.transaction() as session:
        stored = session.get(Platform, platform.platform_id)
        assert stored is not None and stored.last_error is None
    # A client asking for JSON gets the plain refusal.
    json_response = platform.post_launch(
        fresh(app), platform.sign(platform.claims(nonce)), state, headers=JSON
    )
    refused_json(app, json_response, 401, "state_not_bound")


def test_no_cookie_and_no_proof_is_refused_as_json(app: Flask, platform: TestPlatform) -> None:
    state, nonce, _ = storage_login(app, platform)
    token = platform.sign(platform.claims(nonce))
    response = platform.post_launch(fresh(app), token, state, headers=JSON)
    refused_json(app, response, 401, "state_not_bound")


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"lti_storage_check": "A" * 43}, 401, "storage_check_invalid"),
        ({"lti_storage_check": ""}, 400, "invalid_storage_check"),
        ({"lti_storage_check": "short"}, 400, "invalid_storage_check"),
        ({"lti_storage_check": "\x00" * 43}, 400, "invalid_storage_check"),
        ({"lti_storage_check": "é" * 43}, 400, "invalid_storage_check"),
        ({"lti_storage_state": "someone-elses-state"}, 401, "storage_value_mismatch"),
        ({"lti_storage_state": ""}, 401, "storage_value_mismatch"),
        ({"lti_storage_nonce": "a-guessed-nonce"}, 401, "storage_value_mismatch"),
        ({"lti_storage_nonce": "é\x00"}, 401, "storage_value_mismatch"),
    ],
)
def test_a_forged_storage_proof_is_refused(
    app: Flask,
    platform: TestPlatform,
    redis_client: redis.Redis,
    change: dict[str, str],
    status: int,
    code: str,
) -> None:
    state, nonce, _ = storage_login(app, platform)
    proof = proof_of(first_post(app, platform, state, nonce))
    response = post_launch(app, {**proof, **change}, Accept="application/json")
    refused_json(app, response, status, code)
    assert redis_client.exists(state_key(state))  # the forgery consumed no login
    genuine = post_launch(app, proof, Accept="application/json")
    if status == 400:  # a malformed token is no attempt: the genuine proof still works
        assert genuine.status_code == 200, genuine.get_data(as_text=True)[:500]
    else:  # a wrong one spends the check token: one try, then the page must ask again
        refused_json(app, genuine, 401, "storage_check_invalid")


def test_a_proof_posted_from_another_site_is_refused(app: Flask, platform: TestPlatform) -> None:
    state, nonce, _ = storage_login(app, platform)
    proof = proof_of(first_post(app, platform, state, nonce))
    response = post_launch(
        app, proof, **{"Sec-Fetch-Site": "cross-site", "Accept": "application/json"}
    )
    body = refused_json(app, response, 403, "storage_check_cross_site")
    assert "another site" in body["detail"]


def test_a_used_proof_is_refused(app: Flask, platform: TestPlatform) -> None:
    state, nonce, _ = storage_login(app, platform)
    proof = proof_of(first_post(app, platform, state, nonce))
    accepted = post_launch(app, proof)
    assert accepted.status_code == 200
    baseline = counts(app)
    replay = post_launch(app, proof, Accept="application/json")
    assert replay.status_code == 401
    assert replay.get_json()["error"] == "storage_check_invalid"
    assert counts(app) == baseline


def test_a_proof_for_one_login_does_not_bind_another(app: Flask, platform: TestPlatform) -> None:
    state_a, nonce_a, _ = storage_login(app, platform)
    state_b, nonce_b, _ = storage_login(app, platform)
    proof_a = proof_of(first_post(app, platform, state_a, nonce_a))
    first_post(app, platform, state_b, nonce_b)  # B's check token exists too
    token_b = platform.sign(platform.claims(nonce_b))
    mixed = {
        **proof_a,
        "id_token": token_b,
        "state": state_b,
        "lti_storage_state": state_b,
        "lti_storage_nonce": nonce_b,
    }
    response = post_launch(app, mixed, Accept="application/json")
    refused_json(app, response, 401, "storage_check_invalid")


def test_a_proof_cannot_replace_a_valid_id_token(app: Flask, platform: TestPlatform) -> None:
    state, nonce, _ = storage_login(app, platform)
    proof = proof_of(first_post(app, platform, state, nonce))
    expired = platform.sign(platform.claims(nonce, exp=1_000_000, iat=999_000))
    response = post_launch(app, {**proof, "id_token": expired}, Accept="application/json")
    refused_json(app, response, 401, "expired")


def test_a_storage_login_whose_state_expired_is_refused(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    state, nonce, _ = storage_login(app, platform)
    redis_client.delete(state_key(state))  # what the login TTL does
    response = first_post(app, platform, state, nonce)
    assert response.status_code == 401
    parsed = page(response)
    assert parsed.elements["error"]["data-status"] == "401"
    assert "open-new-window" not in parsed.elements  # no login left to continue
    assert "storage-launch" not in parsed.elements
    assert counts(app) == (0, 0, 0)
    no_launch_in_session(app, response)


# -- continuing in a new window -------------------------------------------------------------


def test_continuing_in_a_new_window_launches_there_with_cookies(
    app: Flask, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    state, nonce = plain_login(app, platform)
    fields = continuation_of(first_post(app, platform, state, nonce))
    window = app.test_client()  # the new window: a first-party context, cookies kept
    landing = window.post("/lti/launch/continue", data=fields, headers=SAME_ORIGIN)
    assert landing.status_code == 200, landing.get_data(as_text=True)[:800]
    assert 'data-testid="learner-home"' in landing.get_data(as_text=True)
    assert session_of(app, landing)["launches"] == [launch_id_of(landing)]
    assert not redis_client.exists(state_key(state))
    launch_id = launch_id_of(landing)
    assert window.get(f"/l/{launch_id}/help/new").status_code == 200
    # Bound by the new window's cookie, not by its URL.
    assert fresh(app).get(f"/l/{launch_id}/help/new").status_code == 403
    # The continuation token is good once.
    baseline = counts(app)
    again = fresh(app).post("/lti/launch/continue", data=fields, headers={**SAME_ORIGIN, **JSON})
    assert again.status_code == 401 and again.get_json()["error"] == "continuation_invalid"
    assert counts(app) == baseline


def test_a_storage_page_can_also_continue_in_a_new_window(
    app: Flask, platform: TestPlatform
) -> None:
    state, nonce, _ = storage_login(app, platform)
    fields = continuation_of(first_post(app, platform, state, nonce))
    landing = app.test_client().post("/lti/launch/continue", data=fields, headers=SAME_ORIGIN)
    assert landing.status_code == 200
    assert 'data-testid="learner-home"' in landing.get_data(as_text=True)


@pytest.mark.parametrize(
    ("change", "headers", "status", "code"),
    [
        ({"lti_continue": "B" * 43}, {}, 401, "continuation_invalid"),
        ({"lti_continue": ""}, {}, 400, "invalid_continuation"),
        ({"lti_continue": "é" * 43}, {}, 400, "invalid_continuation"),
        ({"state": "not a state!"}, {}, 400, "invalid_state"),
        ({"state": ""}, {}, 400, "invalid_state"),
        ({}, {"Sec-Fetch-Site": "cross-site"}, 403, "continuation_cross_site"),
        ({}, {"Sec-Fetch-Site": "same-site"}, 403, "continuation_cross_site"),
        ({"id_token": ""}, {}, 400, "missing_id_token"),
        ({"id_token": "not.a.jwt"}, {}, 400, "id_token_malformed"),
    ],
)
def test_a_bad_continuation_is_refused(
    app: Flask,
    platform: TestPlatform,
    change: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    state, nonce = plain_login(app, platform)
    fields = {**continuation_of(first_post(app, platform, state, nonce)), **change}
    response = fresh(app).post(
        "/lti/launch/continue", data=fields, headers={**SAME_ORIGIN, **JSON, **headers}
    )
    refused_json(app, response, status, code)


def test_a_continuation_cannot_carry_another_users_token(
    app: Flask, platform: TestPlatform
) -> None:
    """The token binds the state; the id_token must still be the one issued for it."""
    state, nonce = plain_login(app, platform)
    fields = continuation_of(first_post(app, platform, state, nonce))
    _, other_nonce = plain_login(app, platform)
    someone_else = platform.sign(platform.claims(other_nonce, sub="someone-else"))
    response = fresh(app).post(
        "/lti/launch/continue",
        data={**fields, "id_token": someone_else},
        headers={**SAME_ORIGIN, **JSON},
    )
    refused_json(app, response, 401, "nonce_invalid")


def test_the_continue_endpoint_takes_only_posts(app: Flask) -> None:
    response = fresh(app).get("/lti/launch/continue", headers=JSON)
    assert response.status_code == 405


@pytest.mark.parametrize(
    "launch_id", ["%ED%A0%80", "%FF%FE", "a" * 500, "%00", "x%C3%A9", "lifeline:url-bound:x"]
)
def test_odd_launch_ids_without_cookies_are_refused_not_crashed(
    app: Flask, platform: TestPlatform, launch_id: str
) -> None:
    """A URL-bound lookup and a launch-bound CSRF token for any text in the URL: a 4xx."""
    posted = fresh(app).post(
        f"/l/{launch_id}/help", data={"csrf_token": "é\x00", "question": "Forged question"}
    )
    assert posted.status_code in (400, 403, 404), posted.get_data(as_text=True)[:300]
    shown = fresh(app).get(f"/l/{launch_id}/help/new")
    assert shown.status_code in (403, 404), shown.get_data(as_text=True)[:300]
