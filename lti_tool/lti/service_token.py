"""Calling an LMS's LTI Advantage services: access tokens, timeouts, bounded retries.

The services (Names and Role Provisioning, Assignment and Grade Services) take an OAuth 2
bearer token that the platform's token endpoint issues for a *client assertion*: a short JWT
signed with the tool's current key (LTI Security Framework, RFC 7523). Three things matter
when thousands of learners share a handful of workers:

* **One token per (issuer, client, scope set), shared.** Tokens are cached in Redis until
  shortly before they expire (``expires_in`` minus 10 %, at most 60 s early), so every worker
  and every job reuses them; a Redis lock (SET NX) makes one worker fetch while the others
  wait for its result instead of stampeding the token endpoint.
* **Every outbound call is bounded.** Connect and read timeouts on each attempt, a body size
  limit, and a few retries with exponential back-off on connection errors, 5xx and 429
  (``Retry-After`` honoured up to a cap; a longer wait fails the call as retryable so the
  job is retried later). A 4xx is never retried: asking again will not change the answer.
  Read timeouts and 5xx are retried only for idempotent requests (a POST that may have been
  processed, such as creating a line item, is not sent twice).
* **An expired token is renewed once.** A 401 with a token from the cache drops that token
  (only if the cache still holds it: another worker may have renewed it already) and repeats
  the call once with a fresh one. A second 401 is an error that says so.

Nothing here logs a token or an assertion, and error messages name hosts and paths but not
query strings.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import random
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import jwt
import redis
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError

from .keys import SigningKey

log = logging.getLogger(__name__)

GRANT_TYPE = "client_credentials"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds; the LTI Security Framework asks for a short-lived JWT
DEFAULT_EXPIRES_IN = 300  # a token response without expires_in is trusted for 5 minutes
MAX_EXPIRES_IN = 24 * 3600
MAX_TOKEN_LENGTH = 8192
MAX_BODY = 8 * 1024 * 1024  # a roster page of a few thousand members fits many times over
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CACHE_PREFIX = "lifeline:lti:token:"
_BEARER = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no control character


class ServiceError(Exception):
    """A call to an LMS service failed. The message is safe to store and show to an
    instructor or admin (no token, no query string); ``retryable`` says whether trying again
    later may help (timeouts, 5xx, 429) or not (a 4xx, a malformed answer)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False):
        # Stored on the course (Text) and shown on pages: no NUL, no unpaired surrogate,
        # whatever a platform's answer put into it (a line item id, a URL).
        message = message.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


class TokenError(ServiceError):
    """The token endpoint did not issue a token."""


def redact(url: str) -> str:
    """``url`` without its query and fragment, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(an invalid URL)"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def check_service_url(url: Any, what: str) -> str:
    """A service URL from a launch claim or a platform's answer: absolute https (plain http
    only on a loopback host, for local platforms and tests), at most 2000 characters."""
    if not isinstance(url, str) or not url or len(url) > 2000 or "\x00" in url:
        raise ServiceError(f"The LMS gave no usable {what} URL.")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ServiceError(f"The LMS's {what} URL is not a valid URL.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ServiceError(f"The LMS's {what} URL {redact(url)!r} is not an absolute URL.")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ServiceError(f"The LMS's {what} URL {redact(url)!r} must use https.")
    return url


def same_origin(url: str, base: str) -> bool:
    try:
        a, b = urlsplit(url), urlsplit(base)
        return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)
    except ValueError:  # an unparsable URL, or a port that is not a number: not the same
        return False


# -- one HTTP call, bounded --------------------------------------------------------------------


@dataclass(frozen=True)
class HttpPolicy:
    """Timeouts and retries of every outbound call (``Settings.http_timeout`` is the read
    timeout of one attempt)."""

    timeout: float = 5.0
    connect_timeout: float = 3.0
    attempts: int = 3
    backoff: float = 0.5  # seconds before the 2nd attempt; doubles after that
    max_backoff: float = 8.0
    max_retry_after: float = 30.0  # a longer Retry-After fails the call (retryable) instead

    @classmethod
    def from_timeout(cls, timeout: float) -> HttpPolicy:
        return cls(timeout=timeout, connect_timeout=min(3.0, timeout))

    @property
    def worst_case(self) -> float:
        """An upper bound on the time ``send`` may take (for lock lifetimes)."""
        waits = sum(min(self.max_backoff, self.backoff * 2**i) for i in range(self.attempts))
        per_try = self.connect_timeout + self.timeout * 2  # connect, then headers and body
        return float(self.attempts * per_try + max(waits, self.max_retry_after))


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str

    def json(self, what: str) -> Any:
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise ServiceError(
                f"The LMS answered {redact(self.url)} with something that is not JSON ({what})."
            ) from None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """Whether the connection failed before the request went out (refused, no route)."""
    cause = exc.args[0] if exc.args else None
    return isinstance(cause, MaxRetryError) and isinstance(cause.reason, NewConnectionError)


def _read(response: requests.Response, deadline: float) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise ServiceError(
                f"The LMS's answer from {redact(response.url)} is larger than "
                f"{MAX_BODY // (1024 * 1024)} MB."
            )
        if time.monotonic() > deadline:
            raise requests.exceptions.ReadTimeout("the body arrived too slowly")
        chunks.append(chunk)
    return b"".join(chunks)


def send(
    http: requests.Session,
    method: str,
    url: str,
    policy: HttpPolicy,
    *,
    idempotent: bool,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> Reply:
    """One request with timeouts, a size limit and bounded retries (see the module docstring).

    Returns the reply for any status that is not retried (2xx, 3xx, 4xx); raises a retryable
    ``ServiceError`` when the retries are used up."""
    last_problem = ""
    for attempt in range(1, policy.attempts + 1):
        wait = min(policy.max_backoff, policy.backoff * 2 ** (attempt - 1))
        wait *= 0.75 + random.random() / 2  # jitter: workers that failed together spread out
        try:
            started = time.monotonic()
            with http.request(
                method,
                url,
                timeout=(policy.connect_timeout, policy.timeout),
                stream=True,
                # A redirect could lead the bearer token (or the next request) to another
                # host or to plain http: services are called where the LMS said, or fail.
                allow_redirects=False,
                **kwargs,
            ) as response:
                body = _read(response, started + policy.connect_timeout + policy.timeout * 2)
                reply = Reply(response.status_code, response.headers, body, response.url)
        except requests.exceptions.Timeout as exc:
            never_sent = isinstance(exc, requests.exceptions.ConnectTimeout)
            last_problem = (
                "could not be reached (connect timeout)"
                if never_sent
                else f"did not answer within {policy.timeout:g} s"
            )
            if not (idempotent or never_sent):
                raise ServiceError(
                    f"{redact(url)} {last_problem}; not retried, because the request may have "
                    "been processed.",
                    retryable=True,
                ) from None
        except requests.exceptions.ConnectionError as exc:
            last_problem = "could not be reached (connection failed)"
            if not (idempotent or _never_sent(exc)):
                raise ServiceError(
                    f"{redact(url)} dropped the connection; not retried, because the request "
                    "may have been processed.",
                    retryable=True,
                ) from None
        except requests.exceptions.RequestException as exc:
            raise ServiceError(
                f"Calling {redact(url)} failed: {type(exc).__name__}.", retryable=False
            ) from None
        else:
            status = reply.status
            if status == 429:
                asked = _retry_after(reply.headers.get("Retry-After"))
                if asked is not None and asked > policy.max_retry_after:
                    raise ServiceError(
                        f"{redact(url)} is rate limited and asked to wait {asked:.0f} s.",
                        status=status,
                        retryable=True,
                    )
                wait = max(wait, asked or 0.0)
                last_problem = "answered 429 Too Many Requests"
            elif status >= 500 and idempotent:
                last_problem = f"answered {status}"
                asked = _retry_after(reply.headers.get("Retry-After"))
                if asked is not None and asked <= policy.max_retry_after:
                    wait = max(wait, asked)
            else:
                return reply
        if attempt < policy.attempts:
            log.info(
                "%s %s %s (attempt %d of %d)",
                method,
                redact(url),
                last_problem,
                attempt,
                policy.attempts,
            )
            sleep(wait)
    raise ServiceError(
        f"{redact(url)} {last_problem} ({policy.attempts} attempts).", retryable=True
    )


# -- access tokens ---------------------------------------------------------------------------


def delete_if_equals(client: redis.Redis, key: str, expected: bytes) -> bool:
    """Delete ``key`` only if it still holds ``expected`` (a lock we own, a token we used),
    atomically (WATCH / MULTI, which the demo's in-process Redis supports too)."""
    try:
        with client.pipeline() as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            if pipe.get(key) != expected:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.delete(key)
            pipe.execute()
            return True
    except redis.WatchError:
        return False


def release_lock(client: redis.Redis, key: str, owner: str) -> None:
    """Release a lock taken with SET NX, if it is still ours (else it expired meanwhile)."""
    with contextlib.suppress(redis.RedisError):
        delete_if_equals(client, key, owner.encode())


@dataclass(frozen=True)
class TokenEndpoint:
    """Where and as whom Lifeline asks one platform registration for tokens."""

    issuer: str
    client_id: str
    token_url: str
    audience: str  # the platform's token audience (Brightspace), else the token URL

    @classmethod
    def of(
        cls, issuer: str, client_id: str, token_url: str, token_audience: str | None
    ) -> TokenEndpoint:
        return cls(issuer, client_id, token_url, token_audience or token_url)


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    scopes: tuple[str, ...]
    expires_at: float
    from_cache: bool
    cached: bytes | None = field(default=None, repr=False)  # the cache entry it came from


def scope_set(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


def client_assertion(
    endpoint: TokenEndpoint, key: SigningKey, now: float | None = None, lifetime: int = 300
) -> str:
    """The signed JWT that authenticates Lifeline to the token endpoint."""
    issued = int(now if now is not None else time.time())
    claims = {
        "iss": endpoint.client_id,
        "sub": endpoint.client_id,
        "aud": endpoint.audience,
        "iat": issued,
        "exp": issued + lifetime,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode(claims, key.pem, algorithm="RS256", headers={"kid": key.kid})


def _clean(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else ""
    return "".join(c for c in text if c.isprintable())[:limit]


class AccessTokens:
    """Tokens from the platforms' token endpoints, cached in Redis and shared by all workers.

    ``signing_key`` is called only when a token must be fetched (it reads the database)."""

    def __init__(
        self,
        client: redis.Redis,
        signing_key: Callable[[], SigningKey],
        http: requests.Session,
        policy: HttpPolicy,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = client
        self.signing_key = signing_key
        self.http = http
        self.policy = policy
        self.sleep = sleep
        self.fetched = 0  # tokens this object fetched from a token endpoint (for reports)

    # cache keys: one entry and one lock per (issuer, client id, scope set)
    @staticmethod
    def cache_key(endpoint: TokenEndpoint, scopes: tuple[str, ...]) -> str:
        ident = "\x1f".join([endpoint.issuer, endpoint.client_id, " ".join(scopes)])
        return CACHE_PREFIX + hashlib.sha256(ident.encode()).hexdigest()[:40]

    def token(self, endpoint: TokenEndpoint, scopes: Iterable[str]) -> AccessToken:
        wanted = scope_set(scopes)
        key = self.cache_key(endpoint, wanted)
        cached = self._cached(key, wanted)
        if cached is not None:
            return cached
        lock_key = key + ":lock"
        lock_ttl = self.policy.worst_case + 5
        deadline = time.monotonic() + lock_ttl
        owner = secrets.token_hex(8)
        while True:
            if self._lock(lock_key, owner, lock_ttl):
                try:
                    cached = self._cached(key, wanted)  # filled while we took the lock
                    if cached is not None:
                        return cached
                    return self._fetch_and_store(endpoint, wanted, key)
                finally:
                    self._unlock(lock_key, owner)
            # Another worker is fetching this very token: wait for its result.
            self.sleep(0.05)
            cached = self._cached(key, wanted)
            if cached is not None:
                return cached
            if time.monotonic() > deadline:  # the holder died: its lock expires about now
                return self._fetch_and_store(endpoint, wanted, key)

    def drop(self, endpoint: TokenEndpoint, token: AccessToken) -> None:
        """Forget ``token`` (the platform refused it), unless the cache moved on already."""
        if token.cached is None:
            return
        key = self.cache_key(endpoint, token.scopes)
        try:
            delete_if_equals(self.redis, key, token.cached)
        except redis.RedisError as exc:
            log.warning("could not drop a refused access token from the cache: %s", exc)

    # -- internals --------------------------------------------------------------------------

    def _cached(self, key: str, scopes: tuple[str, ...]) -> AccessToken | None:
        try:
            raw = self.redis.get(key)
        except redis.RedisError as exc:
            log.warning("access token cache unavailable: %s", exc)
            return None
        if not isinstance(raw, bytes):
            return None
        try:
            entry = json.loads(raw)
            value, expires_at = entry["access_token"], float(entry["expires_at"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(value, str) or expires_at <= time.time():
            return None
        return AccessToken(value, scopes, expires_at, from_cache=True, cached=raw)

    def _lock(self, lock_key: str, owner: str, ttl: float) -> bool:
        try:
            return bool(self.redis.set(lock_key, owner, nx=True, px=int(ttl * 1000)))
        except redis.RedisError as exc:
            log.warning("access token lock unavailable, fetching without it: %s", exc)
            return True

    def _unlock(self, lock_key: str, owner: str) -> None:
        release_lock(self.redis, lock_key, owner)

    def _fetch_and_store(
        self, endpoint: TokenEndpoint, scopes: tuple[str, ...], key: str
    ) -> AccessToken:
        value, expires_in = self._fetch(endpoint, scopes)
        now = time.time()
        # Renew shortly before expiry: 10 % early, at most a minute early.
        lifetime = expires_in - min(60.0, expires_in * 0.1)
        entry = json.dumps({"access_token": value, "expires_at": now + lifetime}).encode()
        if lifetime >= 1:
            try:
                self.redis.set(key, entry, px=int(lifetime * 1000))
            except redis.RedisError as exc:
                log.warning("could not cache an access token: %s", exc)
        return AccessToken(value, scopes, now + lifetime, from_cache=False, cached=entry)

    def _fetch(self, endpoint: TokenEndpoint, scopes: tuple[str, ...]) -> tuple[str, float]:
        check_service_url(endpoint.token_url, "token endpoint")
        assertion = client_assertion(endpoint, self.signing_key(), lifetime=ASSERTION_LIFETIME)
        reply = send(
            self.http,
            "POST",
            endpoint.token_url,
            self.policy,
            idempotent=True,  # asking for a token twice is harmless
            sleep=self.sleep,
            data={
                "grant_type": GRANT_TYPE,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
                "scope": " ".join(scopes),
            },
            headers={"Accept": "application/json"},
        )
        self.fetched += 1
        where = redact(endpoint.token_url)
        if reply.status != 200:
            detail = ""
            try:
                answer = json.loads(reply.body)
            except (ValueError, RecursionError):
                answer = None
            if isinstance(answer, dict):
                error, description = (
                    _clean(answer.get("error")),
                    _clean(answer.get("error_description")),
                )
                detail = f": {error}" + (f" ({description})" if description else "")
            hint = ""
            if reply.status in (400, 401):
                hint = (
                    " Check that the LMS has Lifeline's JWKS URL (or public key) and client id "
                    f"{endpoint.client_id!r}, and that it grants the LTI Advantage scopes."
                )
            raise TokenError(
                f"The LMS's token endpoint {where} refused to issue an access token "
                f"(HTTP {reply.status}{detail}).{hint}",
                status=reply.status,
                retryable=reply.status >= 500,
            )
        answer = reply.json("access token response")
        token = answer.get("access_token") if isinstance(answer, dict) else None
        # Only what an Authorization header can carry (RFC 6750's b64token is a subset): any
        # other character would fail every call that sends it, for as long as it is cached.
        if (
            not isinstance(token, str)
            or not token
            or len(token) > MAX_TOKEN_LENGTH
            or not _BEARER.fullmatch(token)
        ):
            raise TokenError(
                f"The LMS's token endpoint {where} answered without a usable access_token."
            )
        token_type = answer.get("token_type", "bearer")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise TokenError(
                f"The LMS's token endpoint {where} issued a {_clean(token_type, 40)!r} token; "
                "LTI services use bearer tokens."
            )
        raw_expiry = answer.get("expires_in", DEFAULT_EXPIRES_IN)
        try:
            expires_in = float(raw_expiry)
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        if not 0 < expires_in < float("inf"):
            expires_in = DEFAULT_EXPIRES_IN
        log.info(
            "access token issued by %s for client %s, scopes %s, valid %.0f s",
            endpoint.issuer,
            endpoint.client_id,
            " ".join(scopes),
            expires_in,
        )
        return token, min(expires_in, MAX_EXPIRES_IN)


# -- authorised service calls ------------------------------------------------------------------


class ServiceClient:
    """Calls to one platform's services with its tokens (see the module docstring)."""

    def __init__(
        self, tokens: AccessTokens, endpoint: TokenEndpoint, policy: HttpPolicy | None = None
    ) -> None:
        self.tokens = tokens
        self.endpoint = endpoint
        self.policy = policy or tokens.policy

    def call(
        self,
        method: str,
        url: str,
        scopes: Iterable[str],
        *,
        accept: str,
        body: Any = None,
        content_type: str | None = None,
        idempotent: bool = True,
    ) -> Reply:
        wanted = scope_set(scopes)
        token = self.tokens.token(self.endpoint, wanted)
        reply = self._send(method, url, token, accept, body, content_type, idempotent)
        if reply.status != 401:
            return reply
        if not token.from_cache:
            raise ServiceError(
                f"The LMS refused a freshly issued access token for {redact(url)} (401).",
                status=401,
            )
        # The cached token expired early, or the platform revoked it: renew it, once.
        log.info("%s refused a cached access token (401); renewing it once", redact(url))
        self.tokens.drop(self.endpoint, token)
        fresh = self.tokens.token(self.endpoint, wanted)
        reply = self._send(method, url, fresh, accept, body, content_type, idempotent)
        if reply.status == 401:
            self.tokens.drop(self.endpoint, fresh)
            raise ServiceError(
                f"The LMS refused the access token for {redact(url)} twice (401), even after "
                "renewing it: check the scopes granted to Lifeline in the LMS.",
                status=401,
            )
        return reply

    def _send(
        self,
        method: str,
        url: str,
        token: AccessToken,
        accept: str,
        body: Any,
        content_type: str | None,
        idempotent: bool,
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token.value}", "Accept": accept}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body).encode()
        return send(
            self.tokens.http,
            method,
            url,
            self.policy,
            idempotent=idempotent,
            sleep=self.tokens.sleep,
            headers=headers,
            data=data,
        )
