"""Every error a person can cause is a 4xx page (or JSON) that says what was wrong."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..lti.errors import LaunchError

log = logging.getLogger(__name__)


def wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json" or request.path.startswith("/api/")


def error_response(status: int, code: str, title: str, detail: str, hint: str = "") -> Response:
    if wants_json():
        response = jsonify(
            {"error": code, "title": title, "detail": detail, "hint": hint, "status": status}
        )
    else:
        response = Response(
            render_template(
                "errors/error.html", status=status, title=title, detail=detail, hint=hint
            ),
            mimetype="text/html",
        )
    response.status_code = status
    return response


def launch_error_response(exc: LaunchError) -> Response:
    return error_response(exc.status, exc.code, exc.title, exc.detail, exc.hint)


# Addresses only an LMS posts to. Opened in a tab (a reload, a bookmark, a copied frame
# address) they would otherwise say only "The method is not allowed for the requested URL".
_LMS_ONLY_PATHS = {"/lti/launch", "/lti/launch/continue"}
_LMS_ONLY = (
    "Open Lifeline from your course",
    "This address receives the launch your LMS sends when you open Lifeline in a course; it "
    "cannot be opened directly, bookmarked or reloaded.",
    "Go back to your course in the LMS and open Lifeline (or the exercise) again.",
)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    code = (exc.name or "error").lower().replace(" ", "_")
    title, detail, hint = exc.name or "Error", exc.description or "", ""
    if status == 405 and request.path in _LMS_ONLY_PATHS:
        title, detail, hint = _LMS_ONLY
    response = error_response(status, code, title, detail, hint)
    if status == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return error_response(
        500,
        "internal_error",
        "Something went wrong on Lifeline's side",
        "The error has been logged. Please try again in a moment.",
    )


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(LaunchError, launch_error_response)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
