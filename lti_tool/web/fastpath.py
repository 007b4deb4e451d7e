"""The xAPI fast path: the ordinary successful ``POST /xapi/statements`` (one statement or an
array) and ``PUT /xapi/statements?statementId=…`` answered in plain WSGI, outside Flask.

In stream mode a single statement is accepted with one Redis round trip, and Flask's own work
around it (request and response objects, contexts, routing, hooks) cost more CPU than the
request's real work. This middleware, wrapped around the app's ``wsgi_app`` by ``init_web``,
answers a request itself only when it is the ordinary case and everything about it is known
here: ingest mode "stream" on a real Redis, Basic credentials found in this process's
credential cache (``credentials.authenticate_cached``: a miss would need the database), a valid
``X-Experience-API-Version``, no attachments (multipart), a ``Content-Length`` within the limit,
no query parameter but PUT's ``statementId`` and POST's ``detail``, a body that parses, and (for
a single statement) a valid statement. Every other request (a missing or wrong credential, bad
JSON, an invalid statement, too large, ``?method=``, OPTIONS, a cache miss, Redis unreachable…)
goes on to Flask unchanged, with the body it may have read put back, so every refusal keeps
Flask's answer, and a Redis error takes Flask's fallback (store in the request).

The answer is the one Flask gives, byte for byte and header for header (the status, the JSON
body, ``Content-Type``, ``Content-Length``, ``X-Experience-API-Version``, ``Cache-Control:
no-store``, ``X-Lifeline-Counts``, ``Retry-After`` and the app's security headers): the parsing,
the checks and the answers are the Flask views' own functions (``web.activity``). API paths never
read or set the session cookie, so there is none to handle. ``LIFELINE_XAPI_FAST_PATH=false``
sends every request through Flask.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.http import HTTP_STATUS_CODES

from ..activity import credentials, ingest, pipeline, xapi
from ..activity.credentials import CredentialInfo
from ..activity.ingest import IngestError, Scope
from ..db import utcnow
from ..services import EXTENSION, Services
from . import SECURITY_HEADERS
from .activity import (
    DETAIL_VALUES,
    credential_rate,
    error_payload,
    parse_json_body,
    statement_items,
    statements_answer,
    stream_accept,
)

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

PATH = "/xapi/statements"
_DETAIL = re.compile(r"detail=([A-Za-z0-9]{0,10})")  # plain values only: nothing to decode
_STATEMENT_ID = re.compile(r"statementId=([0-9A-Fa-f-]{36})")
# The status lines Werkzeug sends.
_STATUS = {code: f"{code} {HTTP_STATUS_CODES[code].upper()}" for code in (200, 204, 400, 409, 429)}


class _FallThrough(Exception):
    """Flask answers this request (e.g. the credential is not in this process's cache: Flask
    looks it up in the database)."""


def _cache_miss() -> Any:
    raise _FallThrough


class XapiFastPath:
    """WSGI middleware in front of the app (see the module's docstring). ``handled`` counts the
    requests it answered itself."""

    def __init__(self, app: Flask, wsgi_app: WsgiApp, services: Services) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.services = services
        self.handled = 0
        # Added after the view's headers, in the order Flask's after-request hooks add them:
        # the API blueprint's (``activity._api_headers``), then the app's security headers.
        self.trailer = [
            (xapi.VERSION_HEADER, xapi.VERSION),
            ("Cache-Control", "no-store"),
            *SECURITY_HEADERS,
        ]

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == PATH:
            method = environ.get("REQUEST_METHOD")
            if method == "POST" or method == "PUT":
                answer = self._answer(environ, method == "PUT")
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    self.handled += 1
                    return [body]
        return self.wsgi_app(environ, start_response)

    # -- the request ------------------------------------------------------------------------
    def _answer(
        self, environ: Environ, put: bool
    ) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The answer, or None: Flask answers (with the body put back if it was read)."""
        query = environ.get("QUERY_STRING", "")
        statement_id = None
        detail = False
        if put:
            match = _STATEMENT_ID.fullmatch(query)
            if match is None:
                return None
            statement_id = match.group(1)
        elif query:
            match = _DETAIL.fullmatch(query)
            if match is None:
                return None
            detail = match.group(1).lower() in DETAIL_VALUES
        version = environ.get("HTTP_X_EXPERIENCE_API_VERSION")
        length = environ.get("CONTENT_LENGTH", "")
        if (
            version is None
            or not length.isdigit()
            or "HTTP_TRANSFER_ENCODING" in environ
            or "multipart" in environ.get("CONTENT_TYPE", "").lower()
        ):
            return None
        size = int(length)
        if not 0 < size <= ingest.LIMITS.max_body:
            return None
        try:
            xapi.check_version(version)
            if statement_id is not None:
                statement_id = xapi.check_statement_id(statement_id)
            credential = self._credential(environ.get("HTTP_AUTHORIZATION"))
        except (IngestError, _FallThrough):
            return None
        if credential is None:
            return None
        stream = environ["wsgi.input"]
        data = stream.read(size)
        try:
            if len(data) != size:
                raise _FallThrough  # the client went away: Flask says so as it always does
            now = utcnow()
            items, single = statement_items(parse_json_body(data), now, statement_id, put)
        except Exception:  # refused (IngestError) or unexpected: Flask answers as it would
            self._put_back(environ, data)
            return None
        try:
            outcome = stream_accept(
                self.services,
                Scope(credential.platform_id, credential.course_id),
                "xapi",
                items,
                now=now,
                rate=credential_rate(credential, self.services.settings),
                credential_id=credential.id,
                strict=single,
            )
            status, payload, counts = statements_answer(
                outcome, single=single, put=put, detail=detail
            )
        except IngestError as exc:  # over the rate limit (429), a single statement's 409
            return self._error(exc)
        except Exception:
            # Redis cannot take them (redis.RedisError): Flask tries again and, failing that,
            # stores the statements in the request (and logs it); anything unexpected, Flask
            # meets it again and answers and logs it as it does. A repeat of what Redis did
            # take is recognised by its id.
            self._put_back(environ, data)
            return None
        headers = [] if counts is None else [("X-Lifeline-Counts", counts)]
        return self._respond(status, payload, headers)

    def _credential(self, header: str | None) -> CredentialInfo | None:
        """HTTP Basic as ``request.authorization`` reads it, from the cache only."""
        if not header:
            return None
        scheme, _, rest = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            key, _, secret = (
                base64.b64decode(rest.strip(" \t"), validate=True).decode().partition(":")
            )
        except (binascii.Error, UnicodeError):
            return None
        if not key:
            return None
        return credentials.authenticate_cached(_cache_miss, key, secret)

    @staticmethod
    def _put_back(environ: Environ, data: bytes) -> None:
        environ["wsgi.input"] = io.BytesIO(data)

    # -- the answer -------------------------------------------------------------------------
    def _error(self, exc: IngestError) -> tuple[str, list[tuple[str, str]], bytes]:
        headers = [] if exc.retry_after is None else [("Retry-After", str(exc.retry_after))]
        return self._respond(exc.status, error_payload(exc.status, exc.message, exc.field), headers)

    def _respond(
        self, status: int, payload: Any, extra: list[tuple[str, str]]
    ) -> tuple[str, list[tuple[str, str]], bytes]:
        """What ``jsonify(payload)`` (or an empty ``Response``) and the after-request hooks
        answer."""
        if payload is None:
            body = b""
            headers = [("Content-Type", "text/html; charset=utf-8")]
        else:
            provider: Any = self.app.json
            compact = getattr(provider, "compact", None)
            if (compact is None and self.app.debug) or compact is False:
                text = provider.dumps(payload, indent=2)
            else:
                text = provider.dumps(payload, separators=(",", ":"))
            body = f"{text}\n".encode()
            headers = [
                ("Content-Type", provider.mimetype),
                ("Content-Length", str(len(body))),
            ]
        headers += extra
        headers += self.trailer
        return _STATUS[status], headers, body


def wrap(app: Flask) -> None:
    """Put the fast path in front of ``app.wsgi_app`` when it can serve: stream mode on a real
    Redis, and not switched off (``LIFELINE_XAPI_FAST_PATH``)."""
    services: Services = app.extensions[EXTENSION]
    settings = services.settings
    if (
        not settings.xapi_fast_path
        or settings.ingest_mode != "stream"
        or pipeline.is_memory(services.redis)
    ):
        return
    app.wsgi_app = XapiFastPath(app, app.wsgi_app, services)  # type: ignore[method-assign]
