"""Errors are friendly pages (or JSON when asked for), and launch pages belong to one browser."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from lti_tool import create_app
from lti_tool.config import Settings
from tests.platform import TestPlatform

JSON = {"Accept": "application/json"}


def launch_id_of(client: FlaskClient) -> str:
    with client.session_transaction() as session:
        launches: list[str] = session["launches"]
    return launches[-1]


@pytest.fixture
def make_app(settings: Settings, app: Flask) -> Iterator[Callable[..., Flask]]:
    made: list[Flask] = []

    def make(**changes: Any) -> Flask:
        made.append(create_app(settings.with_overrides(**changes)))
        return made[-1]

    yield make
    for other in made:
        other.extensions["lifeline"].db.dispose()


def test_404_is_a_friendly_page(client: FlaskClient) -> None:
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert 'data-testid="error" data-status="404"' in page
    assert '<h1 data-testid="error-title">Not Found</h1>' in page
    assert "Traceback" not in page


def test_404_is_json_when_asked_for(client: FlaskClient) -> None:
    response = client.get("/no/such/page", headers=JSON)
    assert response.status_code == 404
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == "not_found"
    assert body["status"] == 404
    assert body["title"] == "Not Found"
    assert body["detail"]
    # Under /api/ errors are always JSON.
    api = client.get("/api/no-such-thing")
    assert (api.status_code, api.mimetype) == (404, "application/json")


def test_html_is_preferred_when_the_browser_accepts_both(client: FlaskClient) -> None:
    response = client.get(
        "/no/such/page", headers={"Accept": "text/html,application/json;q=0.9,*/*;q=0.8"}
    )
    assert (response.status_code, response.mimetype) == (404, "text/html")


def test_405_is_a_friendly_page_with_allow(client: FlaskClient) -> None:
    response = client.get("/lti/launch")
    assert response.status_code == 405
    assert response.mimetype == "text/html"
    assert 'data-status="405"' in response.get_data(as_text=True)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"POST"}
    assert "GET" not in response.headers["Allow"]
    # A reloaded or bookmarked launch says what to do, not "The method is not allowed".
    page = response.get_data(as_text=True)
    assert "Open Lifeline from your course" in page
    assert "open Lifeline (or the exercise) again" in page


def test_405_and_404_are_json_when_asked_for_even_on_post(client: FlaskClient) -> None:
    response = client.get("/lti/launch", headers=JSON)
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    # A POST to a GET-only route is a 405, not a CSRF failure.
    post = client.post("/healthz", headers=JSON)
    assert post.status_code == 405
    assert post.get_json()["error"] == "method_not_allowed"
    assert "GET" in post.headers["Allow"]
    missing = client.post("/no/such/page", headers=JSON)
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"


def test_launch_errors_are_json_when_asked_for(client: FlaskClient) -> None:
    response = client.post("/lti/launch", data={"state": "abc"}, headers=JSON)
    assert response.status_code == 400
    body = response.get_json()
    assert body["error"] == "missing_id_token"
    assert body["status"] == 400
    assert "id_token" in body["detail"]
    page = client.post("/lti/launch", data={"state": "abc"})
    assert page.mimetype == "text/html"
    assert 'data-testid="error-hint"' in page.get_data(as_text=True)


def test_unexpected_error_is_a_500_page_that_leaks_nothing(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    def explode() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", "explode", explode)
    with caplog.at_level(logging.ERROR, logger="lti_tool.web.errors"):
        response = client.get("/explode")
        as_json = client.get("/explode", headers=JSON)
    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "Something went wrong on Lifeline" in page
    assert "secret internals" not in page
    assert as_json.status_code == 500
    assert as_json.get_json()["error"] == "internal_error"
    assert "secret internals" not in as_json.get_data(as_text=True)
    assert any(r.exc_info and "secret internals" in str(r.exc_info[1]) for r in caplog.records)


def test_unknown_launch_id_is_not_this_browsers(
    client: FlaskClient, platform: TestPlatform
) -> None:
    assert client.get("/app/not-a-launch-of-mine").status_code == 403
    platform.launch(client)
    response = client.get("/app/not-a-launch-of-mine", headers=JSON)
    assert response.status_code == 403
    assert "another browser" in response.get_json()["detail"]


def test_launch_of_another_browser_is_forbidden(
    app: Flask, client: FlaskClient, platform: TestPlatform
) -> None:
    platform.launch(client)
    launch_id = launch_id_of(client)
    stranger = app.test_client()
    response = stranger.get(f"/app/{launch_id}")
    assert response.status_code == 403
    assert "Lin Learner" not in response.get_data(as_text=True)


def test_reload_of_the_landing_page_works_in_the_same_browser(
    client: FlaskClient, platform: TestPlatform
) -> None:
    first = platform.launch(client)
    launch_id = launch_id_of(client)
    for _ in range(2):
        again = client.get(f"/app/{launch_id}")
        assert again.status_code == 200
        page = again.get_data(as_text=True)
        assert 'data-testid="learner-home"' in page
        assert "Lab 3: Recursion" in page
    assert first.status_code == 200


def test_expired_launch_is_401(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    platform.launch(client)
    launch_id = launch_id_of(client)
    assert redis_client.exists(f"lifeline:launch:{launch_id}") == 1
    ttl = redis_client.ttl(f"lifeline:launch:{launch_id}")
    assert 0 < ttl <= 8 * 3600
    redis_client.delete(f"lifeline:launch:{launch_id}")
    response = client.get(f"/app/{launch_id}")
    assert response.status_code == 401
    assert "This launch has expired" in response.get_data(as_text=True)
    assert client.get(f"/app/{launch_id}", headers=JSON).get_json()["status"] == 401


def test_healthz_reports_database_and_redis(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"database": "ok", "redis": "ok"}


def test_healthz_is_503_when_redis_is_down(make_app: Callable[..., Flask]) -> None:
    broken = make_app(redis_url="redis://127.0.0.1:1/15")
    response = broken.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"database": "ok", "redis": "unavailable"}


def test_healthz_is_503_when_the_database_is_down(make_app: Callable[..., Flask]) -> None:
    broken = make_app(database_url="postgresql+psycopg://lifeline:lifeline@127.0.0.1:1/nothing")
    response = broken.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"database": "unavailable", "redis": "ok"}
