"""settings_from_env: every setting is typed and checked, and a wrong one is named."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lti_tool.config import ConfigError, Settings, demo_settings, settings_from_env

SECRET = "s" * 40
GOOD = {
    "LIFELINE_DATABASE_URL": "postgresql://lifeline:pw@db.internal:5432/lifeline",
    "LIFELINE_REDIS_URL": "redis://cache.internal:6379/0",
    "LIFELINE_SECRET_KEY": SECRET,
    "LIFELINE_BASE_URL": "https://lifeline.example.edu",
}


def env(**changes: str | None) -> dict[str, str]:
    values: dict[str, str | None] = dict(GOOD)
    values.update({"LIFELINE_" + k: v for k, v in changes.items()})
    return {k: v for k, v in values.items() if v is not None}


def config_error(**changes: str | None) -> str:
    with pytest.raises(ConfigError) as caught:
        settings_from_env(env(**changes))
    return str(caught.value)


def test_good_environment_gives_typed_settings_with_defaults() -> None:
    settings = settings_from_env(env(INSTANCE_PATH="/srv/lifeline"))
    assert settings == Settings(
        database_url="postgresql+psycopg://lifeline:pw@db.internal:5432/lifeline",
        redis_url="redis://cache.internal:6379/0",
        secret_key=SECRET,
        base_url="https://lifeline.example.edu",
        instance_path="/srv/lifeline",
    )
    assert settings.jobs_inline is False
    assert settings.demo_lms is False
    assert settings.proxy_count == 0
    assert settings.jwt_leeway == 60
    assert settings.login_ttl == 600
    assert settings.launch_ttl == 8 * 3600
    assert settings.key_grace_seconds == 7 * 24 * 3600
    assert settings.http_timeout == 5.0
    assert not settings.is_sqlite


def test_optional_settings_are_read_and_typed() -> None:
    settings = settings_from_env(
        env(
            JOBS_INLINE="yes",
            DEMO_LMS="TRUE",
            PROXY_COUNT="1",
            JWT_LEEWAY="5",
            LOGIN_TTL="120",
            LAUNCH_TTL="3600",
            KEY_GRACE_SECONDS="0",
            HTTP_TIMEOUT="3",
            REGISTRATION_CACHE_SECONDS="0",
        )
    )
    assert settings.jobs_inline is True
    assert settings.demo_lms is True
    assert settings.proxy_count == 1
    assert settings.jwt_leeway == 5
    assert (settings.login_ttl, settings.launch_ttl) == (120, 3600)
    assert settings.key_grace_seconds == 0
    assert settings.http_timeout == 3.0
    assert settings.registration_cache_seconds == 0
    assert settings_from_env(env(JOBS_INLINE="off")).jobs_inline is False


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgres://u:p@host:5432/db",
            "postgresql+psycopg://u:p@host:5432/db",
        ),
        (
            "postgresql://u:p@host/db?sslmode=require",
            "postgresql+psycopg://u:p@host/db?sslmode=require",
        ),
        ("postgresql+psycopg://u:p@host/db", "postgresql+psycopg://u:p@host/db"),
        ("postgresql+psycopg2://u:p@host/db", "postgresql+psycopg://u:p@host/db"),
        ("sqlite:////var/lib/lifeline.db", "sqlite:////var/lib/lifeline.db"),
    ],
)
def test_database_urls_are_normalised_to_psycopg3(given: str, expected: str) -> None:
    settings = settings_from_env(env(DATABASE_URL=given))
    assert settings.database_url == expected
    assert settings.is_sqlite is expected.startswith("sqlite")


@pytest.mark.parametrize("missing", ["SECRET_KEY", "DATABASE_URL", "REDIS_URL", "BASE_URL"])
@pytest.mark.parametrize("value", [None, "", "   "])
def test_missing_required_setting_is_named(missing: str, value: str | None) -> None:
    message = config_error(**{missing: value})
    assert message.startswith(f"LIFELINE_{missing} is not set: it must be ")


def test_short_secret_key_is_refused_with_its_length() -> None:
    message = config_error(SECRET_KEY="x" * 31)
    assert "LIFELINE_SECRET_KEY is too short (31 characters)" in message
    assert "at least 32" in message
    assert settings_from_env(env(SECRET_KEY="x" * 32)).secret_key == "x" * 32


@pytest.mark.parametrize(
    "url",
    ["mysql://u:p@host/db", "mongodb://host/db", "lifeline.db", "postgresql:lifeline"],
)
def test_unsupported_database_url_is_refused(url: str) -> None:
    message = config_error(DATABASE_URL=url)
    assert message.startswith(f"LIFELINE_DATABASE_URL={url!r} is not a supported database URL")
    assert "postgresql://" in message


@pytest.mark.parametrize("url", ["http://cache:6379", "cache.internal:6379", "memcached://x"])
def test_bad_redis_url_is_refused(url: str) -> None:
    message = config_error(REDIS_URL=url)
    assert message.startswith(f"LIFELINE_REDIS_URL={url!r} is not a Redis URL")
    assert "redis://host:6379/0" in message


@pytest.mark.parametrize(
    "url", ["redis://h:6379/0", "rediss://h:6380/1", "unix:///run/redis.sock", "memory://"]
)
def test_redis_urls_accepted(url: str) -> None:
    assert settings_from_env(env(REDIS_URL=url)).redis_url == url


@pytest.mark.parametrize(
    "url", ["lifeline.example.edu", "ftp://lifeline.example.edu", "https://", "//lifeline.edu"]
)
def test_base_url_without_scheme_or_host_is_refused(url: str) -> None:
    message = config_error(BASE_URL=url)
    assert message.startswith(f"LIFELINE_BASE_URL={url!r} must be the public address")


@pytest.mark.parametrize("url", ["https://l.example.edu/?x=1", "https://l.example.edu/#top"])
def test_base_url_with_query_or_fragment_is_refused(url: str) -> None:
    assert config_error(BASE_URL=url) == (
        f"LIFELINE_BASE_URL={url!r} must not carry a query or fragment."
    )


def test_base_url_trailing_slash_is_dropped() -> None:
    settings = settings_from_env(env(BASE_URL="https://lms.example.edu/lifeline/"))
    assert settings.base_url == "https://lms.example.edu/lifeline"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("PROXY_COUNT", "one", "LIFELINE_PROXY_COUNT='one' is not a whole number."),
        ("PROXY_COUNT", "-1", "LIFELINE_PROXY_COUNT=-1 must be at least 0."),
        ("LOGIN_TTL", "10", "LIFELINE_LOGIN_TTL=10 must be at least 30."),
        ("LAUNCH_TTL", "59", "LIFELINE_LAUNCH_TTL=59 must be at least 60."),
        ("HTTP_TIMEOUT", "0", "LIFELINE_HTTP_TIMEOUT=0 must be at least 1."),
        ("KEY_GRACE_SECONDS", "1.5", "LIFELINE_KEY_GRACE_SECONDS='1.5' is not a whole number."),
        ("JOBS_INLINE", "maybe", "LIFELINE_JOBS_INLINE='maybe' must be true or false."),
        ("DEMO_LMS", "2", "LIFELINE_DEMO_LMS='2' must be true or false."),
    ],
)
def test_bad_optional_setting_is_named(name: str, value: str, expected: str) -> None:
    assert config_error(**{name: value}) == expected


def test_with_overrides_returns_a_changed_copy() -> None:
    settings = settings_from_env(env())
    changed = settings.with_overrides(proxy_count=2, base_url="http://127.0.0.1:8000")
    assert (changed.proxy_count, changed.base_url) == (2, "http://127.0.0.1:8000")
    assert (settings.proxy_count, settings.base_url) == (0, "https://lifeline.example.edu")
    assert changed.database_url == settings.database_url


def test_demo_settings_keep_a_private_secret_in_the_instance_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = tmp_path / "instance"
    monkeypatch.setenv("LIFELINE_INSTANCE_PATH", str(instance))
    first = demo_settings("127.0.0.1", 5123)
    secret_file = instance / "demo_secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert len(first.secret_key) >= 32
    assert first.base_url == "http://127.0.0.1:5123"
    assert first.database_url == f"sqlite:///{instance / 'lifeline.db'}"
    assert first.redis_url == "memory://"
    assert first.demo_lms and first.jobs_inline and first.is_sqlite
    assert demo_settings("127.0.0.1", 5123).secret_key == first.secret_key
