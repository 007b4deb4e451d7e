"""Lifeline: an LTI 1.3 tool that spots stuck learners and hands them to a 1-to-1 tutor queue."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from .bus import attach_publisher, make_redis
from .config import Settings
from .db import Database
from .jobs import app_context, make_queue
from .lti.launch import LaunchValidator
from .lti.platform_keys import PlatformKeys
from .lti.registry import RegistrationCache
from .services import EXTENSION, Services
from .streams import EventHub, hub_redis

ROOT = Path(__file__).resolve().parent.parent


def create_app(settings: Settings) -> Flask:
    """Assemble the app from its parts; nothing here does work of its own."""
    app = Flask(
        __name__,
        template_folder=str(ROOT / "templates"),
        static_folder=str(Path(__file__).parent / "static"),
        instance_path=settings.instance_path,
    )
    app.config.update(
        SECRET_KEY=settings.secret_key,
        TESTING=settings.testing,
        MAX_CONTENT_LENGTH=256 * 1024,
        SESSION_COOKIE_NAME="lifeline_session",
        SESSION_COOKIE_HTTPONLY=True,
        TEMPLATES_AUTO_RELOAD=False,
    )
    if settings.proxy_count:
        n = settings.proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]

    redis_client = make_redis(settings.redis_url)
    registrations = RegistrationCache(settings.registration_cache_seconds)
    platform_keys = PlatformKeys(redis_client, settings.http_timeout)
    database = Database(settings.database_url)
    attach_publisher(database.sessionmaker, redis_client)
    app.extensions[EXTENSION] = Services(
        settings=settings,
        db=database,
        redis=redis_client,
        registrations=registrations,
        platform_keys=platform_keys,
        launches=LaunchValidator(registrations, platform_keys, redis_client, settings.jwt_leeway),
        queue=make_queue(redis_client, settings.jobs_inline),
        hub=EventHub(database.sessionmaker, lambda: hub_redis(settings.redis_url)),
        jobs=app_context(settings, database),
    )

    from .web import init_web

    init_web(app)
    if settings.demo_lms:
        from .demo_lms import init_demo_lms

        init_demo_lms(app)
    return app
