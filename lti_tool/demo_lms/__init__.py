"""The built-in demo LMS: a real LTI 1.3 platform that launches Lifeline in an iframe."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, has_request_context, request

from ..services import current_services
from .platform import DemoPlatform, DemoPlatforms, load_or_create_key

EXTENSION = "lifeline.demo_lms"


def init_demo_lms(app: Flask) -> None:
    from .views import bp

    settings = app.extensions["lifeline"].settings
    key = load_or_create_key(Path(settings.instance_path) / "demo_lms_key.pem")
    app.extensions[EXTENSION] = DemoPlatforms(settings.base_url, key)
    app.register_blueprint(bp)


def demo_platforms(app: Flask | None = None) -> DemoPlatforms:
    from flask import current_app

    platforms: DemoPlatforms = (app or current_app).extensions[EXTENSION]
    assert current_services() is not None
    return platforms


def demo_platform(app: Flask | None = None) -> DemoPlatform:
    """The demo LMS as this request reached it (see ``DemoPlatforms``)."""
    return demo_platforms(app).at(request.host if has_request_context() else None)
