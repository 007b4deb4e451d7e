"""Text our own forms may carry: no NUL character, which PostgreSQL can neither store nor
compare, so a field holding one would otherwise end in a 500 deep inside a query."""

from __future__ import annotations

from flask import abort, request

from .csrf import EXEMPT_BLUEPRINTS, EXEMPT_ENDPOINTS


def check_form_text() -> None:
    if request.method in {"GET", "HEAD", "OPTIONS"} or request.routing_exception is not None:
        return
    if request.endpoint in EXEMPT_ENDPOINTS or request.blueprint in EXEMPT_BLUEPRINTS:
        return  # the LTI endpoints refuse NUL themselves, with their own error codes
    for name, value in request.form.items(multi=True):
        if "\x00" in name or "\x00" in value:
            abort(
                400,
                description=f"The form field {name.replace(chr(0), '')[:40]!r} contains a NUL "
                "character, which Lifeline cannot store. Remove it and send the form again.",
            )
