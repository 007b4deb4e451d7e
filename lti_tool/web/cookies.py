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
from werkzeug.wrappers import Response


def cookie_options() -> dict[str, Any]:
    if request.is_secure:
        return {"secure": True, "samesite": "None", "partitioned": True, "httponly": True}
    return {"secure": False, "samesite": "Lax", "partitioned": False, "httponly": True}


class IframeSessionInterface(SecureCookieSessionInterface):
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
