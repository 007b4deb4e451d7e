"""Access tokens for LTI Advantage services, against a fake LMS on 127.0.0.1 that checks the
client assertion with the tool's real JWKS: the assertion's claims, one token per scope set
shared by every worker through Redis (and fetched once when many ask at the same moment),
expiry shortly before the token's own, a token the platform revoked renewed exactly once,
timeouts and bounded retries, and no token or assertion in any log."""

from __future__ import annotations

import logging
import socket
import threading
import time

import pytest
import redis
import requests
from flask import Flask

from lti_tool.lti import keys
from lti_tool.lti.service_token import (
    AccessTokens,
    HttpPolicy,
    ServiceClient,
    ServiceError,
    TokenEndpoint,
    TokenError,
    send,
)
from lti_tool.lti.tool_config import SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE, SCOPE_NRPS
from tests.conftest import REDIS_URL
from tests.lms_services import NRPS_MEDIA, LmsServices, register_platform
from tests.platform import JwksServer, TestPlatform

FAST = HttpPolicy(timeout=2.0, connect_timeout=1.0, attempts=3, backoff=0.05, max_backoff=0.2)


@pytest.fixture
def platform(app: Flask, jwks_server: JwksServer, lms: LmsServices) -> TestPlatform:
    return register_platform(app, jwks_server, lms)


def _key(app: Flask) -> keys.SigningKey:
    with app.extensions["lifeline"].db.transaction() as session:
        return keys.signing_key(session)


def _endpoint(
    platform: TestPlatform, lms: LmsServices, audience: str | None = None
) -> TokenEndpoint:
    return TokenEndpoint.of(platform.issuer, lms.client_id, lms.token_url, audience)


def _worker_tokens(app: Flask, policy: HttpPolicy = FAST, **options: object) -> AccessTokens:
    """The token cache as one worker process has it: its own Redis connection."""
    key = _key(app)
    return AccessTokens(
        redis.Redis.from_url(REDIS_URL),
        lambda: key,
        requests.Session(),
        policy,
        **options,  # type: ignore[arg-type]
    )


def test_the_client_assertion_satisfies_the_platform_and_the_token_is_shared(
    app: Flask, platform: TestPlatform, lms: LmsServices, redis_client: redis.Redis
) -> None:
    endpoint = _endpoint(platform, lms)
    first, second = _worker_tokens(app), _worker_tokens(app)
    mine = first.token(endpoint, [SCOPE_NRPS])
    theirs = second.token(endpoint, [SCOPE_NRPS])  # another worker: from Redis, no request
    assert mine.value == theirs.value and mine.value in lms.issued
    assert (mine.from_cache, theirs.from_cache) == (False, True)
    assert len(lms.token_requests) == 1 and lms.refused_assertions == []
    [call] = lms.calls("/token")
    form = dict(pair.split("=", 1) for pair in call.body.decode().split("&"))
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == (
        "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    )
    assert form["scope"] == SCOPE_NRPS.replace(":", "%3A").replace("/", "%2F")
    accepted = lms.token_requests[0]
    claims, header = accepted["claims"], accepted["header"]
    assert header["kid"] == _key(app).kid and header["alg"] == "RS256"
    assert claims["iss"] == claims["sub"] == lms.client_id
    assert claims["aud"] == lms.token_url
    assert claims["exp"] - claims["iat"] == 300 and abs(claims["iat"] - time.time()) < 10
    assert len(claims["jti"]) >= 16
    # Cached until a minute before the token's own expiry (3600 s).
    ttl = redis_client.pttl(AccessTokens.cache_key(endpoint, (SCOPE_NRPS,)))
    assert 3_530_000 < ttl <= 3_540_000

    # Another scope set is another token, whatever the order the scopes are named in.
    ags_a = first.token(endpoint, [SCOPE_AGS_SCORE, SCOPE_AGS_LINEITEM])
    ags_b = second.token(endpoint, [SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE, SCOPE_AGS_SCORE])
    assert ags_a.value == ags_b.value != mine.value
    assert [r["scopes"] for r in lms.token_requests] == [
        {SCOPE_NRPS},
        {SCOPE_AGS_LINEITEM, SCOPE_AGS_SCORE},
    ]
    assert len({r["claims"]["jti"] for r in lms.token_requests}) == 2  # never reused


def test_a_short_lived_token_is_renewed_ten_percent_early(
    app: Flask, platform: TestPlatform, lms: LmsServices, redis_client: redis.Redis
) -> None:
    lms.token_expires_in = 30
    endpoint = _endpoint(platform, lms)
    _worker_tokens(app).token(endpoint, [SCOPE_NRPS])
    ttl = redis_client.pttl(AccessTokens.cache_key(endpoint, (SCOPE_NRPS,)))
    assert 26_000 < ttl <= 27_000


def test_many_workers_asking_at_once_fetch_one_token(
    app: Flask, platform: TestPlatform, lms: LmsServices
) -> None:
    lms.hang = {"/token": 0.5}  # a slow token endpoint: every worker asks while it answers
    endpoint = _endpoint(platform, lms)
    workers = [_worker_tokens(app) for _ in range(6)]
    start = threading.Barrier(len(workers))
    values: list[str] = []

    def ask(tokens: AccessTokens) -> None:
        start.wait()
        values.append(tokens.token(endpoint, [SCOPE_NRPS]).value)

    threads = [threading.Thread(target=ask, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(values) == 6 and len(set(values)) == 1
    assert len(lms.calls("/token")) == 1


def _roster_client(app: Flask, platform: TestPlatform, lms: LmsServices) -> ServiceClient:
    lms.member("course-1", "u-1", "Una One")
    return ServiceClient(_worker_tokens(app), _endpoint(platform, lms))


def test_an_expired_access_token_is_renewed_once(
    app: Flask, platform: TestPlatform, lms: LmsServices
) -> None:
    client = _roster_client(app, platform, lms)
    url = lms.nrps_url("course-1")
    assert client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA).status == 200
    lms.expire_tokens()  # the platform ended the token early; the cache still holds it
    reply = client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert reply.status == 200
    assert [c.status for c in lms.calls("/nrps")] == [200, 401, 200]
    assert len(lms.token_requests) == 2
    # The renewed token is the one now shared.
    assert client.tokens.token(client.endpoint, [SCOPE_NRPS]).from_cache
    assert len(lms.token_requests) == 2


def test_a_second_401_fails_clearly_after_one_renewal(
    app: Flask, platform: TestPlatform, lms: LmsServices, redis_client: redis.Redis
) -> None:
    client = _roster_client(app, platform, lms)
    url = lms.nrps_url("course-1")
    client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    lms.reject_next = 5  # the platform refuses every token from now on
    with pytest.raises(ServiceError) as caught:
        client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert caught.value.status == 401 and not caught.value.retryable
    assert "refused the access token" in caught.value.message
    assert "twice (401), even after renewing it" in caught.value.message
    assert [c.status for c in lms.calls("/nrps")] == [200, 401, 401]  # renewed once, no more
    assert len(lms.token_requests) == 2
    assert redis_client.get(AccessTokens.cache_key(client.endpoint, (SCOPE_NRPS,))) is None


def test_5xx_and_429_are_retried_with_backoff_and_retry_after_4xx_never(
    app: Flask, platform: TestPlatform, lms: LmsServices
) -> None:
    waits: list[float] = []
    key = _key(app)
    tokens = AccessTokens(
        redis.Redis.from_url(REDIS_URL), lambda: key, requests.Session(), FAST, sleep=waits.append
    )
    client = ServiceClient(tokens, _endpoint(platform, lms))
    lms.member("course-1", "u-1", "Una One")
    url = lms.nrps_url("course-1")

    lms.fail_next["/nrps"] = [(503, {}), (429, {"Retry-After": "2"})]
    assert client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA).status == 200
    assert [c.status for c in lms.calls("/nrps")] == [503, 429, 200]
    assert len(waits) == 2 and waits[0] <= 0.2 and waits[1] >= 2.0  # Retry-After honoured

    lms.fail_next["/nrps"] = [(400, {})]
    assert client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA).status == 400
    assert [c.status for c in lms.calls("/nrps")][3:] == [400]  # a 4xx is never repeated

    lms.fail_next["/nrps"] = [(429, {"Retry-After": "3600"})]
    with pytest.raises(ServiceError) as long_wait:
        client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert long_wait.value.retryable and "asked to wait 3600 s" in long_wait.value.message

    lms.fail_next["/nrps"] = [(503, {}), (502, {}), (500, {})]
    with pytest.raises(ServiceError) as exhausted:
        client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert exhausted.value.retryable and "answered 500 (3 attempts)" in exhausted.value.message
    assert "limit=" not in exhausted.value.message  # no query strings in messages

    # A POST that may have been processed is not sent again on a 5xx.
    lms.fail_next["/ags"] = [(502, {})]
    before = len(lms.calls("/ags"))
    reply = client.call(
        "POST",
        lms.lineitems_url("course-1"),
        [SCOPE_AGS_LINEITEM],
        accept="application/json",
        body={"label": "x"},
        idempotent=False,
    )
    assert reply.status == 502 and len(lms.calls("/ags")) == before + 1


def test_a_platform_that_hangs_or_is_down_fails_in_bounded_time(
    app: Flask, platform: TestPlatform, lms: LmsServices
) -> None:
    policy = HttpPolicy(timeout=0.5, connect_timeout=0.5, attempts=2, backoff=0.05)
    client = ServiceClient(_worker_tokens(app, policy), _endpoint(platform, lms))
    client.tokens.token(client.endpoint, [SCOPE_NRPS])
    lms.hang = {"/nrps": 30}
    started = time.monotonic()
    with pytest.raises(ServiceError) as caught:
        client.call("GET", lms.nrps_url("course-1"), [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert time.monotonic() - started < 5
    assert caught.value.retryable
    assert "did not answer within 0.5 s (2 attempts)" in caught.value.message
    assert len(lms.calls("/nrps")) == 2

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/nrps"
    with pytest.raises(ServiceError) as down:
        send(requests.Session(), "GET", dead, policy, idempotent=False)
    assert down.value.retryable and "could not be reached" in down.value.message


def test_a_refused_assertion_is_a_clear_error_and_caches_nothing(
    app: Flask, platform: TestPlatform, lms: LmsServices, redis_client: redis.Redis
) -> None:
    endpoint = _endpoint(platform, lms, audience="https://somewhere-else.example/token")
    with pytest.raises(TokenError) as caught:
        _worker_tokens(app).token(endpoint, [SCOPE_NRPS])
    message = caught.value.message
    assert "refused to issue an access token (HTTP 401: invalid_client" in message
    assert f"client id {lms.client_id!r}" in message and "JWKS URL" in message
    assert not caught.value.retryable
    assert lms.refused_assertions and "audience" in lms.refused_assertions[0].lower()
    assert redis_client.keys("lifeline:lti:token:*") == []

    lms.granted_scopes = (SCOPE_NRPS,)
    with pytest.raises(TokenError) as scope:
        _worker_tokens(app).token(_endpoint(platform, lms), [SCOPE_AGS_SCORE])
    assert "HTTP 400: invalid_scope (scope not granted)" in scope.value.message


def test_tokens_and_assertions_never_reach_the_logs(
    app: Flask, platform: TestPlatform, lms: LmsServices, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = _roster_client(app, platform, lms)
    url = lms.nrps_url("course-1")
    client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    lms.expire_tokens()
    client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    lms.reject_next = 2
    with pytest.raises(ServiceError):
        client.call("GET", url, [SCOPE_NRPS], accept=NRPS_MEDIA)
    assert "renewing it once" in caplog.text  # the flow was logged...
    secrets_seen = list(lms.issued) + [
        c.body.decode().split("client_assertion=")[1].split("&")[0] for c in lms.calls("/token")
    ]
    assert len(secrets_seen) == 6
    for secret in secrets_seen:  # ...without a single token or assertion
        assert secret not in caplog.text
    assert "tok-" not in caplog.text
