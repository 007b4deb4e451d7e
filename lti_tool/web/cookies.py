"""Cookies fit for an LMS iframe.

Inside an LMS the tool is a third-party frame: over HTTPS its cookies must be
``SameSite=None; Secure`` to be sent at all, and ``Partitioned`` (CHIPS) so browsers that block
unpartitioned third-party cookies still keep them. ``request.is_secure`` follows
X-Forwarded-Proto when ProxyFix is on (LIFELINE_PROXY_COUNT). Over plain HTTP (the local demo)
Secure cookies would be dropped, so there they are ``SameSite=Lax``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from werkzeug.wrappers import Response


def cookie_options() -> dict[str, Any]:
    if request.is_secure:
        return {"secure": True, "samesite": "None", "partitioned": True, "httponly": True}
    return {"secure": False, "samesite": "Lax", "partitioned": False, "httponly": True}


class IframeSessionInterface(SecureCookieSessionInterface):
    _serializer: tuple[tuple[Any, ...], URLSafeTimedSerializer | None] | None = None

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        """Flask builds a new serializer twice a request; it holds no per-request state, so
        build it once per secret key (and fallback keys) instead."""
        keys = (app.secret_key, *(app.config.get("SECRET_KEY_FALLBACKS") or ()))
        cached = self._serializer
        if cached is None or cached[0] != keys:
            cached = self._serializer = (keys, super().get_signing_serializer(app))
        return cached[1]

    def get_cookie_samesite(self, app: Flask) -> str | None:
        return str(cookie_options()["samesite"])

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(cookie_options()["secure"])

    def get_cookie_partitioned(self, app: Flask) -> bool:
        return bool(cookie_options()["partitioned"])


def set_cookie(response: Response, name: str, value: str, max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, **cookie_options())


def delete_cookie(response: Response, name: str, path: str = "/") -> None:
    options = cookie_options()
    response.delete_cookie(
        name,
        path=path,
        secure=options["secure"],
        samesite=options["samesite"],
        partitioned=options["partitioned"],
        httponly=True,
    )
