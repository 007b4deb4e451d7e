"""The platform's JWKS: fetched over real HTTP, cached in Redis as Cache-Control allows,
re-fetched once on an unknown kid (throttled), and every failure a fast 401, never a 500."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from lti_tool import create_app
from lti_tool.config import Settings
from lti_tool.lti.errors import LaunchError
from lti_tool.lti.platform_keys import (
    DEFAULT_MAX_AGE,
    LONGEST_MAX_AGE,
    REFETCH_THROTTLE,
    PlatformKeys,
    max_age,
)
from tests.platform import JwksServer, KeysetRoute, TestPlatform, jwk_of, new_key

JSON = {"Accept": "application/json"}


@pytest.fixture(scope="module")
def rotated_key() -> rsa.RSAPrivateKey:
    return new_key()


def jwks_key(url: str) -> str:
    return "lifeline:jwks:" + url


def refetch_key(url: str) -> str:
    return "lifeline:jwks-refetch:" + url


def route_of(platform: TestPlatform) -> KeysetRoute:
    assert platform.route is not None
    return platform.route


def launch(platform: TestPlatform, client: FlaskClient, **sign: Any) -> TestResponse:
    """A full login + launch, signed as ``sign`` says (key=, kid=)."""
    login = platform.login(client)
    token = platform.sign(platform.claims(login.nonce), **sign)
    return platform.post_launch(client, token, login.state, headers=JSON)


def assert_launched(response: TestResponse) -> None:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert 'data-testid="learner-home"' in response.get_data(as_text=True)


def assert_refused(response: TestResponse, code: str, detail: str | None = None) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == code, body
    assert body["status"] == 401
    if detail is not None:
        assert detail in body["detail"], body["detail"]


def last_error(app: Flask, platform: TestPlatform) -> str | None:
    with app.extensions["lifeline"].db.engine.connect() as conn:
        value = conn.execute(
            text("SELECT last_error FROM platforms WHERE id = :id"), {"id": platform.platform_id}
        ).scalar_one()
    return value if value is None else str(value)


@pytest.fixture
def second_app(settings: Settings, app: Flask) -> Iterator[Flask]:
    """Another web process on the same database and Redis (its own in-process caches)."""
    other = create_app(settings)
    yield other
    other.extensions["lifeline"].db.dispose()


# -- Cache-Control ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, DEFAULT_MAX_AGE),
        ("", DEFAULT_MAX_AGE),
        ("public", DEFAULT_MAX_AGE),
        ("max-age=120", 120),
        ("public, MAX-AGE = 45, must-revalidate", 45),
        ("max-age=0", 0),
        ("no-store", 0),
        ("no-cache, max-age=600", 0),
        ("private, no-store, max-age=600", 0),
        ("max-age=99999999", LONGEST_MAX_AGE),
        ("max-age=abc", DEFAULT_MAX_AGE),
    ],
)
def test_max_age_from_cache_control(header: str | None, seconds: int) -> None:
    assert max_age(header) == seconds


def test_keyset_is_cached_in_redis_for_its_max_age(
    app: Flask,
    client: FlaskClient,
    platform: TestPlatform,
    redis_client: redis.Redis,
    second_app: Flask,
) -> None:
    route = route_of(platform)
    route.cache_control = "public, max-age=120"
    assert_launched(launch(platform, client))
    assert_launched(launch(platform, client))
    assert route.hits == 1
    assert 115 <= redis_client.ttl(jwks_key(platform.keyset_url)) <= 120
    cached = json.loads(redis_client.get(jwks_key(platform.keyset_url)) or "null")
    assert cached["jwks"] == route.document
    assert 115 <= cached["expires_at"] - time.time() <= 120
    # Another process has nothing in memory, but finds the keyset in Redis: still one fetch.
    assert_launched(launch(platform, second_app.test_client()))
    assert route.hits == 1


def test_keyset_without_cache_control_is_cached_for_the_default(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    route_of(platform).cache_control = None
    assert_launched(launch(platform, client))
    ttl = redis_client.ttl(jwks_key(platform.keyset_url))
    assert DEFAULT_MAX_AGE - 5 <= ttl <= DEFAULT_MAX_AGE


@pytest.mark.parametrize("header", ["no-store", "no-cache", "max-age=0"])
def test_uncacheable_keyset_is_not_kept_in_redis(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis, header: str
) -> None:
    route = route_of(platform)
    route.cache_control = header
    assert_launched(launch(platform, client))
    assert_launched(launch(platform, client))
    assert route.hits == 2  # fetched for each launch
    assert not redis_client.exists(jwks_key(platform.keyset_url))


def test_expired_cache_is_fetched_again(
    app: Flask, client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    route = route_of(platform)
    assert_launched(launch(platform, client))
    assert route.hits == 1
    # What max-age running out does: gone from Redis and from the process.
    redis_client.delete(jwks_key(platform.keyset_url))
    app.extensions["lifeline"].platform_keys.forget()
    assert_launched(launch(platform, client))
    assert route.hits == 2
    assert redis_client.exists(jwks_key(platform.keyset_url))


def test_corrupt_redis_entry_is_ignored(
    client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    redis_client.set(jwks_key(platform.keyset_url), b"\x00not json", ex=300)
    assert_launched(launch(platform, client))
    assert route_of(platform).hits == 1
    cached = json.loads(redis_client.get(jwks_key(platform.keyset_url)) or "null")
    assert cached["jwks"] == route_of(platform).document


# -- unknown kid: rotation and floods -----------------------------------------------------


def test_key_rotation_is_picked_up_with_exactly_one_refetch(
    client: FlaskClient,
    platform: TestPlatform,
    redis_client: redis.Redis,
    rotated_key: rsa.RSAPrivateKey,
) -> None:
    route = route_of(platform)
    assert_launched(launch(platform, client))
    assert route.hits == 1
    # The platform publishes a new key (the old one stays for a while) and starts using it.
    route.document = {"keys": [jwk_of(platform.key, platform.kid), jwk_of(rotated_key, "lms-2")]}
    assert_launched(launch(platform, client, key=rotated_key, kid="lms-2"))
    assert route.hits == 2
    assert_launched(launch(platform, client, key=rotated_key, kid="lms-2"))
    assert_launched(launch(platform, client))  # the old key still works
    assert route.hits == 2
    cached = json.loads(redis_client.get(jwks_key(platform.keyset_url)) or "null")
    assert {k["kid"] for k in cached["jwks"]["keys"]} == {platform.kid, "lms-2"}


def test_made_up_kids_cause_at_most_one_refetch_per_throttle_window(
    app: Flask, client: FlaskClient, platform: TestPlatform, redis_client: redis.Redis
) -> None:
    route = route_of(platform)
    claims = platform.claims("any-nonce")
    for _ in range(25):
        kid = uuid.uuid4().hex
        response = platform.post_launch(
            client, platform.sign(claims, kid=kid), "some-state", headers=JSON
        )
        assert_refused(response, "unknown_kid", repr(kid))
    assert route.hits == 2  # the first fetch, then a single re-fetch
    assert 0 < redis_client.ttl(refetch_key(platform.keyset_url)) <= REFETCH_THROTTLE
    assert last_error(app, platform) is not None
    assert str(last_error(app, platform)).startswith("unknown_kid: ")
    # The window passes: one more re-fetch is allowed, and again only one.
    redis_client.delete(refetch_key(platform.keyset_url))
    for _ in range(5):
        response = platform.post_launch(
            client, platform.sign(claims, kid=uuid.uuid4().hex), "some-state", headers=JSON
        )
        assert_refused(response, "unknown_kid")
    assert route.hits == 3
    # The genuine key is unaffected throughout.
    assert_launched(launch(platform, client))
    assert route.hits == 3


def test_throttle_is_shared_between_processes(
    client: FlaskClient, platform: TestPlatform, second_app: Flask
) -> None:
    route = route_of(platform)
    claims = platform.claims("any-nonce")
    for web in (client, second_app.test_client()):
        for _ in range(3):
            token = platform.sign(claims, kid=uuid.uuid4().hex)
            assert_refused(platform.post_launch(web, token, "s", headers=JSON), "unknown_kid")
    # First process: fetch + re-fetch. Second process: the keyset comes from Redis, and the
    # re-fetch window is already spent.
    assert route.hits == 2


# -- keyset junk and failures -------------------------------------------------------------


def test_unusable_entries_in_the_keyset_are_skipped(
    client: FlaskClient, platform: TestPlatform
) -> None:
    good = jwk_of(platform.key, platform.kid)
    route_of(platform).document = {
        "keys": [
            "not a key",
            None,
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {"kty": "RSA", "kid": "no-modulus", "e": "AQAB"},
            {**good, "kid": 7},
            {**good, "kid": "for-encryption", "use": "enc"},
            good,
        ]
    }
    assert_launched(launch(platform, client))
    token_kid = "for-encryption"
    assert_refused(launch(platform, client, kid=token_kid), "unknown_kid", repr(token_kid))


@pytest.mark.parametrize(
    ("change", "code", "detail"),
    [
        pytest.param({"status": 500}, "platform_keyset_unreachable", "HTTP 500", id="http-500"),
        pytest.param({"status": 404}, "platform_keyset_unreachable", "HTTP 404", id="http-404"),
        pytest.param(
            {"body": b"<html>Service Unavailable</html>"},
            "platform_keyset_invalid",
            "not JSON",
            id="not-json",
        ),
        pytest.param(
            {"body": b"\xff\xfe\x00garbage"}, "platform_keyset_invalid", "not JSON", id="binary"
        ),
        pytest.param(
            {"document": {"no": "keys"}},
            "platform_keyset_invalid",
            "no 'keys' list",
            id="json-but-not-jwks",
        ),
        pytest.param(
            {"document": {"keys": "lms-key-1"}},
            "platform_keyset_invalid",
            "no 'keys' list",
            id="keys-not-a-list",
        ),
        pytest.param(
            {"body": b'{"keys": [], "pad": "' + b"x" * (1024 * 1024) + b'"}'},
            "platform_keyset_unreachable",
            None,
            id="bigger-than-1-MiB",
        ),
        pytest.param({"document": {"keys": []}}, "unknown_kid", "'lms-key-1'", id="empty-keyset"),
    ],
)
def test_bad_keyset_is_a_401_and_nothing_is_cached(
    app: Flask,
    client: FlaskClient,
    platform: TestPlatform,
    redis_client: redis.Redis,
    change: dict[str, Any],
    code: str,
    detail: str | None,
) -> None:
    route = route_of(platform)
    good_document = route.document
    for name, value in change.items():
        setattr(route, name, value)
    assert_refused(launch(platform, client), code, detail)
    assert str(last_error(app, platform)).startswith(f"{code}: ")
    if code != "unknown_kid":  # an empty but valid keyset may be cached like any other
        assert not redis_client.exists(jwks_key(platform.keyset_url))
    # The platform fixes its keyset: the next launch works (a failure is not remembered).
    route.status, route.body, route.document = 200, None, good_document
    redis_client.delete(jwks_key(platform.keyset_url), refetch_key(platform.keyset_url))
    app.extensions["lifeline"].platform_keys.forget()
    assert_launched(launch(platform, client))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_keyset_url_is_a_401(
    app: Flask, client: FlaskClient, jwks_server: JwksServer
) -> None:
    lms = TestPlatform(jwks_server)
    url = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    lms.register(app, keyset_url=url)
    started = time.monotonic()
    response = launch(lms, client)
    assert time.monotonic() - started < 2
    assert_refused(response, "platform_keyset_unreachable", url)
    assert "ConnectionError" in response.get_json()["detail"]
    assert "keyset URL" in response.get_json()["hint"]
    assert str(last_error(app, lms)).startswith("platform_keyset_unreachable: ")


def test_slow_keyset_server_times_out_fast(
    platform: TestPlatform, redis_client: redis.Redis
) -> None:
    route = route_of(platform)
    route.delay = 1.5
    keys = PlatformKeys(redis_client, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LaunchError) as caught:
        keys.key_for(platform.keyset_url, platform.kid)
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 1.2, elapsed
    assert (caught.value.status, caught.value.code) == (401, "platform_keyset_unreachable")
    assert "Timeout" in caught.value.detail
    assert not redis_client.exists(jwks_key(platform.keyset_url))
    # Once the server answers in time, the same PlatformKeys works.
    route.delay = 0
    key, alg = keys.key_for(platform.keyset_url, platform.kid)
    assert alg == "RS256"
    assert key.public_numbers() == platform.key.public_key().public_numbers()


def test_http_timeout_setting_bounds_a_launch(
    settings: Settings, app: Flask, platform: TestPlatform
) -> None:
    impatient = create_app(settings.with_overrides(http_timeout=0.5))
    try:
        route_of(platform).delay = 1.5
        started = time.monotonic()
        response = launch(platform, impatient.test_client())
        elapsed = time.monotonic() - started
        assert elapsed < 1.2, elapsed
        assert_refused(response, "platform_keyset_unreachable", "ReadTimeout")
    finally:
        route_of(platform).delay = 0
        impatient.extensions["lifeline"].db.dispose()
