"""docker-compose.yml has the production shape: web (gunicorn), worker (rq), redis with AOF,
postgres, health checks, and required settings that fail loudly when unset.

`docker compose config` needs the Compose plugin, which this machine's Docker client lacks,
so this test checks the same things `config` would resolve, on the parsed file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
_VAR = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} rules."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group("name", "op", "arg")
        if env.get(name):
            return env[name]
        if op == ":?":
            raise ValueError(f"required variable {name} is missing: {arg}")
        return arg or ""

    return _VAR.sub(replace, value)


def load(env: dict[str, str]) -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    document.pop("x-lifeline-env")
    return interpolate(document, env)


ENV = {"LIFELINE_SECRET_KEY": "s" * 64, "LIFELINE_BASE_URL": "https://lifeline.example.edu"}


def test_services_and_health_checks() -> None:
    compose = load(ENV)
    services = compose["services"]
    assert set(services) == {"migrate", "web", "worker", "redis", "postgres"}
    for name in ("web", "worker", "redis", "postgres"):
        assert services[name]["healthcheck"]["test"], name
        assert services[name]["restart"] == "unless-stopped"
    assert services["web"]["command"][:2] == ["lifeline", "serve"]
    assert services["worker"]["command"] == ["lifeline", "worker"]
    assert services["migrate"]["command"] == ["lifeline", "db", "upgrade"]
    assert "--appendonly" in services["redis"]["command"]
    assert (
        services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
        == "yes"
    )
    assert services["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["web"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_web_and_worker_get_every_required_setting() -> None:
    services = load(ENV)["services"]
    for name in ("web", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["LIFELINE_DATABASE_URL"].startswith("postgresql://lifeline:")
        assert env["LIFELINE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["LIFELINE_SECRET_KEY"] == "s" * 64
        assert env["LIFELINE_BASE_URL"] == "https://lifeline.example.edu"


def test_the_settings_it_passes_are_accepted_by_lifeline() -> None:
    from lti_tool.config import settings_from_env

    env = load(ENV)["services"]["web"]["environment"]
    settings = settings_from_env(env)
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.proxy_count == 1


@pytest.mark.parametrize("missing", ["LIFELINE_SECRET_KEY", "LIFELINE_BASE_URL"])
def test_missing_secret_or_base_url_stops_compose(missing: str) -> None:
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(ValueError, match=missing):
        load(env)
