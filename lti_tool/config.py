"""Typed settings, read once from the environment and validated at start-up.

Every setting is read through a small typed helper that fails fast with a message naming the
variable, so a wrong deployment stops at start-up instead of failing on the first launch.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

PREFIX = "LIFELINE_"
MEMORY_REDIS_URL = "memory://"


class ConfigError(Exception):
    """A setting is missing or wrong; the message names it and says what is expected."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _required(env: Mapping[str, str], name: str, what: str) -> str:
    value = _get(env, name)
    if value is None:
        raise ConfigError(f"{PREFIX}{name} is not set: it must be {what}.")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r} is not a whole number.") from None
    if value < minimum:
        raise ConfigError(f"{PREFIX}{name}={value} must be at least {minimum}.")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{PREFIX}{name}={raw!r} must be true or false.")


def _database_url(value: str, name: str = "DATABASE_URL") -> str:
    scheme = urlsplit(value).scheme
    if scheme.startswith("postgres") and "://" in value:
        # Accept the URLs that hosting providers hand out and pick the psycopg 3 driver.
        rest = value.split("://", 1)[1]
        return "postgresql+psycopg://" + rest
    if scheme.startswith("sqlite"):
        return value
    raise ConfigError(
        f"{PREFIX}{name}={value!r} is not a supported database URL: use "
        "postgresql://user:password@host:5432/dbname or sqlite:///path/to/file.db."
    )


def _redis_url(value: str) -> str:
    if value == MEMORY_REDIS_URL:
        return value
    if urlsplit(value).scheme not in {"redis", "rediss", "unix"}:
        raise ConfigError(
            f"{PREFIX}REDIS_URL={value!r} is not a Redis URL: use redis://host:6379/0 "
            f"(or {MEMORY_REDIS_URL} for the in-process stand-in used by the demo)."
        )
    return value


def _smtp_url(value: str) -> str:
    # Never echo the value: it may hold the SMTP password.
    parts = urlsplit(value)
    problem = None
    if parts.scheme not in {"smtp", "smtps"}:
        problem = "must start with smtp:// or smtps://"
    elif not parts.hostname:
        problem = "has no host"
    else:
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            problem = "has a port that is not a number"
    if problem:
        raise ConfigError(
            f"{PREFIX}SMTP_URL {problem}: use smtp://user:password@host:587 (STARTTLS) or "
            "smtps://user:password@host:465."
        )
    return value


def _mail_from(value: str) -> str:
    if "@" not in value or "\n" in value or "\r" in value or len(value) > 320:
        raise ConfigError(
            f"{PREFIX}MAIL_FROM={value!r} must be an email address, such as "
            "'Lifeline <lifeline@example.edu>'."
        )
    return value


INGEST_MODES = ("stream", "sync")


def _ingest_mode(value: str) -> str:
    if value.lower() not in INGEST_MODES:
        raise ConfigError(
            f"{PREFIX}INGEST_MODE={value!r} must be stream (accept into Redis, the worker "
            "stores and evaluates) or sync (store and evaluate inside the request)."
        )
    return value.lower()


MAX_INGEST_PARTITIONS = 16


def _ingest_partitions(value: int) -> int:
    if value > MAX_INGEST_PARTITIONS:
        raise ConfigError(
            f"{PREFIX}INGEST_PARTITIONS={value} is more than {MAX_INGEST_PARTITIONS}: each "
            "partition runs its own consumer process; use about one per core."
        )
    return value


def _base_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(
            f"{PREFIX}BASE_URL={value!r} must be the public address of Lifeline, "
            "such as https://lifeline.example.edu."
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{PREFIX}BASE_URL={value!r} must not carry a query or fragment.")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    secret_key: str
    base_url: str
    # Jobs run by an RQ worker in production; "inline" runs them in-process (demo).
    jobs_inline: bool = False
    # The built-in demo LMS (a real LTI 1.3 platform) is mounted only when asked for.
    demo_lms: bool = False
    # Activity ingestion: "stream" accepts requests into a Redis stream that the worker stores
    # and evaluates (activity/pipeline.py); "sync" stores and evaluates inside the request.
    ingest_mode: str = "stream"
    # Stream mode: the stream is split into this many partitions by learner, each with its own
    # consumer process in ``lifeline worker`` (one learner's events stay in order).
    ingest_partitions: int = 2
    # Requests per minute that one activity credential (an LRS, an exporter) may send; None:
    # ``activity.ingest.LIMITS`` (600).
    activity_rate_limit: int | None = None
    # The xAPI fast path (web/fastpath.py): the ordinary successful POST / PUT of statements in
    # stream mode is answered in plain WSGI, outside Flask (the same answer); off: every request
    # goes through Flask.
    xapi_fast_path: bool = True
    # How many reverse proxies sit in front of us (X-Forwarded-* headers are trusted that deep).
    proxy_count: int = 0
    # Clock skew allowed on id_token exp / iat, in seconds.
    jwt_leeway: int = 60
    # How long a login (state + nonce) may take before the launch POST arrives.
    login_ttl: int = 600
    # How long launch data is kept for the pages a launch opens.
    launch_ttl: int = 8 * 3600
    # After `keys rotate`, the old key stays published this long.
    key_grace_seconds: int = 7 * 24 * 3600
    # Timeout for every outbound HTTP call (platform JWKS, LMS services).
    http_timeout: float = 5.0
    # Registrations are cached per process for this many seconds.
    registration_cache_seconds: int = 10
    # LMS services: a course's roster (NRPS) is synced again after this many hours, fetching
    # this many members per page (the platform may send fewer).
    roster_sync_hours: int = 24
    roster_page_size: int = 100
    instance_path: str = field(default_factory=lambda: str(Path.cwd() / "instance"))
    testing: bool = False
    # Outgoing email (tutor pages, learner alerts): smtp:// or smtps:// with credentials. Unset:
    # emails are written to the console instead (the demo). Kept out of repr: it holds a password.
    smtp_url: str | None = field(default=None, repr=False)
    # The From address of those emails; defaults to lifeline@<host of base_url>.
    mail_from: str | None = None

    @property
    def stream_partitions(self) -> int:
        """The partitions actually used: one on SQLite (the demo), where a second consumer
        would only wait for the first one's write lock."""
        return 1 if self.database_url.startswith("sqlite") else self.ingest_partitions

    @property
    def mail_sender(self) -> str:
        if self.mail_from:
            return self.mail_from
        host = urlsplit(self.base_url).hostname or "localhost"
        return f"Lifeline <lifeline@{host}>"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Production settings: the four core variables are required."""
    env = os.environ if env is None else env
    secret_key = _required(env, "SECRET_KEY", "a long random string (openssl rand -hex 32)")
    if len(secret_key) < 32:
        raise ConfigError(
            f"{PREFIX}SECRET_KEY is too short ({len(secret_key)} characters): "
            "use at least 32 random characters (openssl rand -hex 32)."
        )
    return Settings(
        database_url=_database_url(
            _required(env, "DATABASE_URL", "a database URL such as postgresql://u:p@host/db")
        ),
        redis_url=_redis_url(
            _required(env, "REDIS_URL", "a Redis URL such as redis://host:6379/0")
        ),
        secret_key=secret_key,
        base_url=_base_url(_required(env, "BASE_URL", "the public https address of Lifeline")),
        jobs_inline=_bool(env, "JOBS_INLINE", False),
        demo_lms=_bool(env, "DEMO_LMS", False),
        ingest_mode=_ingest_mode(_get(env, "INGEST_MODE") or "stream"),
        xapi_fast_path=_bool(env, "XAPI_FAST_PATH", True),
        ingest_partitions=_ingest_partitions(_int(env, "INGEST_PARTITIONS", 2, minimum=1)),
        activity_rate_limit=_int(env, "ACTIVITY_RATE_LIMIT", 0, minimum=1) or None,
        proxy_count=_int(env, "PROXY_COUNT", 0),
        jwt_leeway=_int(env, "JWT_LEEWAY", 60),
        login_ttl=_int(env, "LOGIN_TTL", 600, minimum=30),
        launch_ttl=_int(env, "LAUNCH_TTL", 8 * 3600, minimum=60),
        key_grace_seconds=_int(env, "KEY_GRACE_SECONDS", 7 * 24 * 3600),
        http_timeout=float(_int(env, "HTTP_TIMEOUT", 5, minimum=1)),
        registration_cache_seconds=_int(env, "REGISTRATION_CACHE_SECONDS", 10),
        roster_sync_hours=_int(env, "ROSTER_SYNC_HOURS", 24, minimum=1),
        roster_page_size=_int(env, "ROSTER_PAGE_SIZE", 100, minimum=1),
        instance_path=_get(env, "INSTANCE_PATH") or str(Path.cwd() / "instance"),
        smtp_url=_smtp_url(smtp) if (smtp := _get(env, "SMTP_URL")) else None,
        mail_from=_mail_from(sender) if (sender := _get(env, "MAIL_FROM")) else None,
    )


def demo_settings(host: str = "127.0.0.1", port: int = 5000) -> Settings:
    """Everything in one process: SQLite under instance/, the in-process Redis stand-in."""
    instance = Path(os.environ.get(PREFIX + "INSTANCE_PATH", str(Path.cwd() / "instance")))
    instance.mkdir(parents=True, exist_ok=True)
    secret_file = instance / "demo_secret_key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(32))
        secret_file.chmod(0o600)
    return Settings(
        database_url=f"sqlite:///{instance / 'lifeline.db'}",
        redis_url=MEMORY_REDIS_URL,
        secret_key=secret_file.read_text().strip(),
        base_url=f"http://{host}:{port}",
        jobs_inline=True,
        demo_lms=True,
        instance_path=str(instance),
    )
