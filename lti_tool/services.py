"""The handles one app instance shares: settings, database, Redis, caches, the job queue."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app
from rq import Queue

from .config import Settings
from .db import Database
from .jobs import JobContext
from .lti.launch import LaunchValidator
from .lti.platform_keys import PlatformKeys
from .lti.registry import RegistrationCache
from .streams import EventHub

EXTENSION = "lifeline"


@dataclass
class Services:
    settings: Settings
    db: Database
    redis: redis.Redis
    registrations: RegistrationCache
    platform_keys: PlatformKeys
    launches: LaunchValidator
    queue: Queue
    hub: EventHub  # live updates: this process's one Redis pub/sub listener
    jobs: JobContext  # background jobs: enqueued after commit (or run inline in the demo)


def current_services() -> Services:
    services: Services = current_app.extensions[EXTENSION]
    return services
