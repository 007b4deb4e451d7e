"""LTI Platform Storage: the login's state kept by the LMS's page instead of a cookie.

Inside an LMS the tool is a third-party frame, and some browsers refuse every cookie there
(Safari, Firefox in strict mode, Chrome with all third-party cookies blocked, and plain-HTTP
``SameSite=Lax`` cookies anywhere cross-site). The OIDC state cookie then never comes back, so
nothing binds the launch to the browser that began the login. The 1EdTech "LTI Client Side
postMessages" and "Platform Storage" specifications give the tool a small key-value store kept
by the platform's page: a platform that offers it names a frame in ``lti_storage_target`` on
the login request, and the tool's pages talk to it with ``postMessage``
(``lti.capabilities``, ``lti.put_data``, ``lti.get_data``, each answered by ``<subject>.response``
with the request's ``message_id``). Data for the store is posted only to the origin of the
platform's OIDC authorization endpoint, and answers from any other origin are ignored.

How Lifeline uses it (``static/platform-storage.js`` does the browser side):

1. Login: the state record in Redis notes the storage target and origin, and the login page
   puts ``lti_state_<state>`` and ``lti_nonce_<nonce>`` (the key names of 1EdTech's reference
   library) before it goes on to the platform. The state cookie is set too: browsers that
   accept it use it, and nothing else changes for them.
2. Launch without the cookie: the id_token's signature and times are checked as always; then,
   if the login used platform storage, a page asks the platform for both values and posts
   them back with a single-use ``storage check`` token minted for this state. Only that post,
   from our own page (``Sec-Fetch-Site: same-origin`` where the browser sends it), with the
   token and the right values, stands in for the cookie.
3. Neither works: the page offers to continue in a new window (a first-party context, where
   cookies work), with a single-use continuation token, again accepted only from our own page.

What this guarantees, and what not: the server cannot see inside the browser, so the proof
shows that Lifeline's own page, in the browser that posted it, read matching values from the
platform's storage (which takes data from Lifeline's origin only, and which another site's page
cannot fill with an attacker's login). A forged post from another site is refused by
``Sec-Fetch-Site`` and lacks the token. As with the spec's own client-side check, a browser
whose requests an attacker fully scripts is out of scope: that is the attacker's own browser.

A launch bound by platform storage has no cookie to carry the session either, so its id is
marked "URL-bound" in Redis: its ``/l/<launch_id>/`` pages open without the session cookie
(launch ids are 192 random bits, and the Referrer-Policy keeps them from other sites), and its
forms carry a CSRF token derived from the launch id (``web/csrf.py``).
"""

from __future__ import annotations

import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from .errors import RELAUNCH_HINT, LaunchError, bad_request, forbidden, unauthorized
from .login import (
    STATE_COOKIE_PREFIX,
    StorageTarget,
    nonce_storage_key,
    state_key,
    state_storage_key,
)

CHECK_FIELD = "lti_storage_check"
STATE_VALUE_FIELD = "lti_storage_state"
NONCE_VALUE_FIELD = "lti_storage_nonce"
CONTINUE_FIELD = "lti_continue"
MESSAGE_TIMEOUT_MS = 2000  # per postMessage round trip; 1EdTech's reference waits 1000 ms

_TOKEN = re.compile(r"[A-Za-z0-9_-]{20,100}")
_STATE = re.compile(r"[A-Za-z0-9_-]{1,100}")  # the shape of the states begin_login makes
_LAUNCH_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class PendingBinding:
    """A signed, fresh launch whose state cookie did not come back, and the single-use tokens
    that can still bind it: ``check`` (platform storage, if the login used it) and
    ``continuation`` (a new window)."""

    state: str
    nonce: str
    storage: StorageTarget | None
    check: str | None
    continuation: str

    @property
    def state_key(self) -> str:
        return state_storage_key(self.state)

    @property
    def nonce_key(self) -> str:
        return nonce_storage_key(self.nonce)


def _check_key(state: str) -> str:
    return "lifeline:storage-check:" + state


def _continue_key(state: str) -> str:
    return "lifeline:continue:" + state


def _url_bound_key(launch_id: str) -> str:
    return "lifeline:url-bound:" + launch_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _login_record(client: redis.Redis, state: str) -> dict[str, Any] | None:
    if not _STATE.fullmatch(state):
        return None
    raw = client.get(state_key(state))
    if raw is None:
        return None
    record: dict[str, Any] = json.loads(raw)
    return record


def pending_binding(client: redis.Redis, state: str, ttl: int) -> PendingBinding | None:
    """Mint the tokens that may still bind the launch of ``state``; None if no login with
    this state is waiting (unknown, expired or used)."""
    record = _login_record(client, state)
    if record is None:
        return None
    storage = StorageTarget.from_record(record)
    check = secrets.token_urlsafe(32) if storage is not None else None
    continuation = secrets.token_urlsafe(32)
    pipe = client.pipeline(transaction=False)
    if check is not None:
        pipe.set(_check_key(state), check, ex=ttl)
    pipe.set(_continue_key(state), continuation, ex=ttl)
    pipe.execute()
    return PendingBinding(state, str(record["nonce"]), storage, check, continuation)


def _same_origin_request(fetch_site: str | None, what: str) -> None:
    """Browsers say where a request came from in ``Sec-Fetch-Site``, which no page can set.
    The proof must be posted by Lifeline's own page: another site's auto-submitting form
    (login CSRF) is refused. Older browsers send no header; the token still guards them."""
    if fetch_site is not None and fetch_site not in {"same-origin", "none"}:
        raise forbidden(
            f"{what}_cross_site",
            f"The {what.replace('_', ' ')} came from another site, not from Lifeline's own page.",
            RELAUNCH_HINT,
        )


def _take_token(client: redis.Redis, key: str, sent: str, code: str, what: str) -> None:
    """Compare ``sent`` with the token stored at ``key``, which is gone afterwards whatever
    the outcome: a token is good for one attempt."""
    if not _TOKEN.fullmatch(sent):
        raise bad_request(
            f"invalid_{code}",
            f"The {what} is missing or malformed.",
            RELAUNCH_HINT,
        )
    expected = client.getdel(key)
    if expected is None or not hmac.compare_digest(sent.encode(), _text(expected).encode()):
        raise unauthorized(
            f"{code}_invalid",
            f"The {what} is unknown, expired or already used.",
            RELAUNCH_HINT,
        )


def verify_storage_proof(
    client: redis.Redis, state: str, form: Mapping[str, str], fetch_site: str | None
) -> None:
    """Accept the storage page's post only with its single-use token and the values the
    platform kept for this login; raise a 4xx ``LaunchError`` otherwise."""
    _same_origin_request(fetch_site, "storage_check")
    _take_token(
        client,
        _check_key(state),
        form.get(CHECK_FIELD, ""),
        "storage_check",
        "platform storage check token",
    )
    record = _login_record(client, state)
    if record is None:
        raise LaunchError(
            401,
            "state_unknown",
            "This launch has expired or was already used",
            "The login that started this launch is unknown, expired or already used.",
            RELAUNCH_HINT,
        )
    stored_state = form.get(STATE_VALUE_FIELD, "")
    stored_nonce = form.get(NONCE_VALUE_FIELD, "")
    if not (
        hmac.compare_digest(stored_state.encode(), state.encode())
        and hmac.compare_digest(stored_nonce.encode(), str(record["nonce"]).encode())
    ):
        raise unauthorized(
            "storage_value_mismatch",
            "The LMS's platform storage did not hold the state and nonce that this login "
            "stored there, so the launch cannot be matched to your browser.",
            RELAUNCH_HINT,
        )


def take_continuation(
    client: redis.Redis, state: str, form: Mapping[str, str], fetch_site: str | None
) -> None:
    """Accept a "continue in a new window" post only from our own page, with its token."""
    _same_origin_request(fetch_site, "continuation")
    if not _STATE.fullmatch(state):
        raise bad_request("invalid_state", "The launch request's state is malformed.")
    _take_token(
        client,
        _continue_key(state),
        form.get(CONTINUE_FIELD, ""),
        "continuation",
        "token to continue this launch in a new window",
    )


def bound_cookies(state: str) -> dict[str, str]:
    """What ``LaunchValidator.validate`` reads as "this browser began the login": once a
    storage proof or a continuation token has shown that, the state cookie it stands for."""
    return {STATE_COOKIE_PREFIX + state: state}


def mark_url_bound(client: redis.Redis, launch_id: str, ttl: int) -> None:
    client.set(_url_bound_key(launch_id), "1", ex=ttl)


def is_url_bound(client: redis.Redis, launch_id: str) -> bool:
    """Whether ``launch_id`` was bound by platform storage, so its pages need no cookie."""
    if not _LAUNCH_ID.fullmatch(launch_id):
        return False
    return bool(client.exists(_url_bound_key(launch_id)))
