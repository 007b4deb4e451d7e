"""Cookies fit for an LMS iframe: SameSite=None; Secure; Partitioned over https, Lax over http.

The decision follows ``request.is_secure``: the request's own scheme, or X-Forwarded-Proto
when (and only when) the app trusts a proxy (LIFELINE_PROXY_COUNT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from lti_tool import create_app
from lti_tool.config import Settings
from tests.platform import CLAIM, TestPlatform

SESSION = "lifeline_session"
STATE = "lifeline-state-"
IFRAME = {"secure": True, "samesite": "None", "partitioned": True, "httponly": True}
FIRST_PARTY = {"secure": False, "samesite": "Lax", "partitioned": False, "httponly": True}


class HttpsClient(FlaskClient):
    """A browser that reaches the app at https://lifeline.test."""

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        kwargs.setdefault("base_url", "https://lifeline.test")
        return super().open(*args, **kwargs)


def set_cookies(response: TestResponse) -> dict[str, dict[str, Any]]:
    """Set-Cookie headers by cookie name, with their attributes (flags as True)."""
    found: dict[str, dict[str, Any]] = {}
    for header in response.headers.getlist("Set-Cookie"):
        first, *params = (p.strip() for p in header.split(";"))
        name, _, value = first.partition("=")
        attrs: dict[str, Any] = {"value": value}
        for param in params:
            key, eq, val = param.partition("=")
            attrs[key.lower()] = val if eq else True
        found[name] = attrs
    return found


def state_cookie(response: TestResponse) -> dict[str, Any]:
    (name,) = [n for n in set_cookies(response) if n.startswith(STATE)]
    return set_cookies(response)[name]


def flags(attrs: dict[str, Any]) -> dict[str, Any]:
    return {
        "secure": attrs.get("secure", False),
        "samesite": attrs.get("samesite"),
        "partitioned": attrs.get("partitioned", False),
        "httponly": attrs.get("httponly", False),
    }


def launch(
    platform: TestPlatform, client: FlaskClient, target: str = "https://lifeline.test/lti/launch"
) -> tuple[TestResponse, TestResponse]:
    """Login and launch; returns both responses."""
    login = platform.login(client, target_link_uri=target)
    token = platform.sign(platform.claims(login.nonce, **{CLAIM + "target_link_uri": target}))
    response = platform.post_launch(client, token, login.state)
    assert response.status_code == 200, response.get_data(as_text=True)
    return login.response, response


@pytest.fixture
def make_app(settings: Settings, app: Flask) -> Iterator[Callable[..., Flask]]:
    """Another app on the same database and Redis, with some settings changed."""
    made: list[Flask] = []

    def make(**changes: Any) -> Flask:
        made.append(create_app(settings.with_overrides(**changes)))
        return made[-1]

    yield make
    for other in made:
        other.extensions["lifeline"].db.dispose()


def test_https_cookies_are_fit_for_a_third_party_iframe(app: Flask, platform: TestPlatform) -> None:
    app.test_client_class = HttpsClient
    client = app.test_client()
    login_response, launch_response = launch(platform, client)

    state = state_cookie(login_response)
    assert flags(state) == IFRAME
    assert state["path"] == "/lti/"
    assert state["max-age"] == "600"

    cookies = set_cookies(launch_response)
    assert flags(cookies[SESSION]) == IFRAME
    assert cookies[SESSION]["path"] == "/"
    # The used state cookie is deleted with the same attributes, or a browser would keep it.
    deleted = state_cookie(launch_response)
    assert deleted["value"] == "" and deleted["max-age"] == "0"
    assert flags(deleted) == IFRAME
    # The browser really holds the session: the launch page can be reloaded.
    with client.session_transaction(base_url="https://lifeline.test") as session:
        launch_id = session["launches"][-1]
    assert client.get(f"/app/{launch_id}").status_code == 200


def test_behind_a_trusted_proxy_forwarded_https_gives_iframe_cookies(
    make_app: Callable[..., Flask], platform: TestPlatform
) -> None:
    proxied = make_app(proxy_count=1)
    client = proxied.test_client()
    client.environ_base.update(
        {"HTTP_X_FORWARDED_PROTO": "https", "HTTP_X_FORWARDED_HOST": "lifeline.test"}
    )
    login_response, launch_response = launch(platform, client)
    assert login_response.request.scheme == "http"  # the hop from the proxy is plain http
    assert flags(state_cookie(login_response)) == IFRAME
    assert flags(set_cookies(launch_response)[SESSION]) == IFRAME
    assert flags(state_cookie(launch_response)) == IFRAME


def test_behind_a_proxy_plain_http_gives_lax_cookies(
    make_app: Callable[..., Flask], platform: TestPlatform
) -> None:
    proxied = make_app(proxy_count=1)
    client = proxied.test_client()
    response = platform.login(client).response
    assert flags(state_cookie(response)) == FIRST_PARTY


def test_plain_http_gives_lax_cookies_without_secure(
    make_app: Callable[..., Flask], platform: TestPlatform
) -> None:
    local = make_app(base_url="http://127.0.0.1:5000")
    client = local.test_client()
    login_response, launch_response = launch(
        platform, client, target="http://127.0.0.1:5000/lti/launch"
    )
    assert flags(state_cookie(login_response)) == FIRST_PARTY
    session = set_cookies(launch_response)[SESSION]
    assert flags(session) == FIRST_PARTY
    assert "secure" not in session and "partitioned" not in session
    assert flags(state_cookie(launch_response)) == FIRST_PARTY


def test_forwarded_proto_is_ignored_without_a_trusted_proxy(
    app: Flask, platform: TestPlatform
) -> None:
    client = app.test_client()
    response = platform.login(client)
    assert flags(state_cookie(response.response)) == FIRST_PARTY
    spoofed = app.test_client()
    spoofed.environ_base["HTTP_X_FORWARDED_PROTO"] = "https"
    assert flags(state_cookie(platform.login(spoofed).response)) == FIRST_PARTY
