"""The built-in demo LMS: a real LTI 1.3 platform that launches Lifeline in an iframe."""

from __future__ import annotations

from pathlib import Path

from flask import Flask

from ..services import current_services
from .platform import DemoPlatform, load_or_create_key

EXTENSION = "lifeline.demo_lms"


def init_demo_lms(app: Flask) -> None:
    from .views import bp

    settings = app.extensions["lifeline"].settings
    key = load_or_create_key(Path(settings.instance_path) / "demo_lms_key.pem")
    app.extensions[EXTENSION] = DemoPlatform(settings.base_url, key)
    app.register_blueprint(bp)


def demo_platform(app: Flask | None = None) -> DemoPlatform:
    from flask import current_app

    platform: DemoPlatform = (app or current_app).extensions[EXTENSION]
    assert current_services() is not None
    return platform
