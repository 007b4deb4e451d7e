"""A job's client for one platform's services: its token endpoint, the shared token cache.

Jobs run in RQ work horses (or inline in the demo): the Redis that caches access tokens is the
queue's connection when there is a queue, else the app's (the demo's in-process stand-in).
"""

from __future__ import annotations

import redis
import requests
from sqlalchemy.orm import Session

from .. import jobs
from ..bus import make_redis
from ..lti import keys
from ..lti.models import Platform
from ..lti.service_token import AccessTokens, HttpPolicy, ServiceClient, TokenEndpoint

_inline_clients: dict[str, redis.Redis] = {}


def job_redis(context: jobs.JobContext) -> redis.Redis:
    if context.queue is not None:
        connection: redis.Redis = context.queue.connection
        return connection
    url = context.settings.redis_url
    client = _inline_clients.get(url)
    if client is None:
        client = _inline_clients[url] = make_redis(url)
    return client


def service_client(
    session: Session,
    platform: Platform,
    redis_client: redis.Redis,
    timeout: float,
    policy: HttpPolicy | None = None,
) -> ServiceClient:
    """Calls to ``platform``'s services. The signing key is read (from ``session``, which it
    commits) only if a token must be fetched."""
    endpoint = TokenEndpoint.of(
        platform.issuer, platform.client_id, platform.auth_token_url, platform.token_audience
    )
    http = requests.Session()
    http.headers["User-Agent"] = "Lifeline-LTI-tool"

    def signing_key() -> keys.SigningKey:
        # On a fresh install the key may be created right here: commit it before it signs
        # anything, or the platform (fetching our JWKS) could not know it. Callers have no
        # other work pending in ``session`` when a token is fetched.
        key = keys.signing_key(session)
        session.commit()
        return key

    tokens = AccessTokens(
        redis_client,
        signing_key,
        http,
        policy or HttpPolicy.from_timeout(timeout),
    )
    return ServiceClient(tokens, endpoint)
