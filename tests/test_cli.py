"""The real ``lifeline`` console script, run as a subprocess against its own PostgreSQL database."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from lti_tool import create_app
from lti_tool.config import Settings
from lti_tool.lti.models import Platform, ToolKey
from lti_tool.migrate import head_revision
from tests.conftest import DATABASE_URL, REDIS_URL

LIFELINE = str(Path(sys.executable).with_name("lifeline"))
SECRET = "cli-test-secret-" + "z" * 32
TIMEOUT = 60


def _admin_dsn() -> str:
    admin = make_url(DATABASE_URL).set(database="postgres", drivername="postgresql")
    return admin.render_as_string(hide_password=False)


@contextmanager
def fresh_database(label: str) -> Iterator[str]:
    """A new, empty PostgreSQL database (dropped afterwards); yields its URL."""
    name = f"lifeline_cli_{label}_{os.getpid()}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(DATABASE_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def cli_env(database_url: str, tmp: Path, **changes: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            # The plain postgresql:// form admins write; the CLI picks the psycopg 3 driver.
            "LIFELINE_DATABASE_URL": database_url.replace("postgresql+psycopg://", "postgresql://"),
            "LIFELINE_REDIS_URL": REDIS_URL,
            "LIFELINE_SECRET_KEY": SECRET,
            "LIFELINE_BASE_URL": "https://lifeline.test",
            "LIFELINE_INSTANCE_PATH": str(tmp),
        }
    )
    for key, value in changes.items():
        if value is None:
            env.pop("LIFELINE_" + key, None)
        else:
            env["LIFELINE_" + key] = value
    return env


class Cli:
    def __init__(self, database_url: str, tmp: Path) -> None:
        self.database_url = database_url
        self.tmp = tmp

    def __call__(self, *args: str, **env_changes: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [LIFELINE, *args],
            env=cli_env(self.database_url, self.tmp, **env_changes),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.tmp,
            check=False,
        )

    def ok(self, *args: str, **env_changes: str | None) -> str:
        result = self(*args, **env_changes)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def fails(self, *args: str, **env_changes: str | None) -> str:
        result = self(*args, **env_changes)
        assert result.returncode != 0, result.stdout + result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        return result.stderr


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cli, Engine]]:
    """A database upgraded by ``lifeline db upgrade``, shared by this module's tests."""
    with fresh_database("test") as url:
        cli = Cli(url, tmp_path_factory.mktemp("cli"))
        assert "up to date" in cli.ok("db", "upgrade")
        engine = create_engine(url)
        yield cli, engine
        engine.dispose()


@pytest.fixture
def cli(upgraded: tuple[Cli, Engine]) -> Cli:
    return upgraded[0]


@pytest.fixture
def engine(upgraded: tuple[Cli, Engine]) -> Engine:
    return upgraded[1]


def add_args(issuer: str, client_id: str = "client-1", *deployments: str, **urls: str) -> list[str]:
    args = [
        "platform",
        "add",
        "--name",
        "Canvas prod",
        "--issuer",
        issuer,
        "--client-id",
        client_id,
        "--auth-url",
        urls.get("auth", "https://lms.example.edu/api/lti/authorize_redirect"),
        "--token-url",
        urls.get("token", "https://lms.example.edu/login/oauth2/token"),
        "--keyset-url",
        urls.get("keyset", "https://lms.example.edu/api/lti/security/jwks"),
    ]
    for deployment in deployments or ("dep-1",):
        args += ["--deployment-id", deployment]
    return args


def listed(cli: Cli, issuer: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(cli.ok("platform", "list", "--json"))
    return [row for row in rows if row["issuer"] == issuer]


def new_issuer() -> str:
    return f"https://lms-{uuid.uuid4().hex[:8]}.example.edu"


# -- platform ------------------------------------------------------------------------------


def test_platform_add_help_documents_every_flag(cli: Cli) -> None:
    out = cli.ok("platform", "add", "--help")
    for flag in (
        "--name",
        "--issuer",
        "--client-id",
        "--auth-url",
        "--token-url",
        "--keyset-url",
        "--deployment-id",
        "--token-audience",
        "--accept-new-deployments",
    ):
        line = next(line for line in out.splitlines() if line.strip().startswith(flag + " "))
        assert len(line.split(None, 2)) == 3, f"{flag} has no help text"
    assert "repeat" in out


def platforms(engine: Engine, issuer: str) -> list[tuple[str, list[str], str | None]]:
    """(client id, deployment ids, token audience) of each registration of ``issuer``."""
    with Session(engine) as session:
        found = session.scalars(
            select(Platform).where(Platform.issuer == issuer).order_by(Platform.id)
        )
        return [
            (p.client_id, [d.deployment_id for d in p.deployments], p.token_audience) for p in found
        ]


def test_platform_add_and_list(cli: Cli, engine: Engine) -> None:
    issuer = new_issuer()
    out = cli.ok(
        *add_args(issuer, "client-1", "dep-b", "dep-a", keyset="http://127.0.0.1:8080/jwks"),
        "--token-audience",
        "https://lms.example.edu/token-aud",
    )
    assert re.fullmatch(rf"Registered platform #\d+ 'Canvas prod' \({issuer}, client-1\)\.\n", out)
    assert platforms(engine, issuer) == [
        ("client-1", ["dep-a", "dep-b"], "https://lms.example.edu/token-aud")
    ]

    (row,) = listed(cli, issuer)
    assert row == {
        "id": row["id"],
        "name": "Canvas prod",
        "issuer": issuer,
        "client_id": "client-1",
        "status": "active",
        "deployments": ["dep-a", "dep-b"],
        "auth_url": "https://lms.example.edu/api/lti/authorize_redirect",
        "token_url": "https://lms.example.edu/login/oauth2/token",
        "keyset_url": "http://127.0.0.1:8080/jwks",  # plain http is fine on loopback
        "last_launch_at": None,
        "last_error": None,
    }
    out = cli.ok("platform", "list")
    block = out[out.index(f"#{row['id']} Canvas prod [active]\n") :]
    assert block.splitlines()[1:4] == [
        f"    issuer {issuer}  client id client-1",
        "    deployments dep-a, dep-b",
        "    last launch never",
    ]


def test_one_issuer_several_client_ids_but_no_duplicates(cli: Cli, engine: Engine) -> None:
    issuer = new_issuer()
    cli.ok(*add_args(issuer, "client-1"))
    cli.ok(*add_args(issuer, "client-2", "dep-2"))  # Canvas / Blackboard: one per install
    err = cli.fails(*add_args(issuer, "client-1", "dep-9"))
    assert err.startswith(f"Error: A platform with issuer {issuer!r} and client id 'client-1' ")
    assert "is already registered" in err
    assert platforms(engine, issuer) == [
        ("client-1", ["dep-1"], None),
        ("client-2", ["dep-2"], None),
    ]


def test_plain_http_url_on_a_public_host_is_refused_naming_the_flag(
    cli: Cli, engine: Engine
) -> None:
    issuer = new_issuer()
    url = "http://lms.example.edu/jwks"
    err = cli.fails(*add_args(issuer, keyset=url))
    assert f"Error: --keyset-url {url!r} must use https" in err
    assert platforms(engine, issuer) == []


def test_platform_add_without_deployments_needs_accept_new_deployments(
    cli: Cli, engine: Engine
) -> None:
    issuer = new_issuer()
    args = [a for a in add_args(issuer) if a not in {"--deployment-id", "dep-1"}]
    refused = cli.fails(*args)
    assert "--accept-new-deployments" in refused and platforms(engine, issuer) == []
    cli.ok(*args, "--accept-new-deployments")
    with Session(engine) as session:
        found = session.scalars(select(Platform).where(Platform.issuer == issuer)).one()
        assert found.accept_new_deployments and found.deployments == []


def test_platform_add_deployment(cli: Cli, engine: Engine) -> None:
    issuer = new_issuer()
    cli.ok(*add_args(issuer, "client-1", "dep-1"))
    with Session(engine) as session:
        platform_id = session.scalars(select(Platform.id).where(Platform.issuer == issuer)).one()
    out = cli.ok("platform", "add-deployment", str(platform_id), "dep-new")
    assert out == f"Platform #{platform_id} now accepts deployment 'dep-new'.\n"
    assert platforms(engine, issuer) == [("client-1", ["dep-1", "dep-new"], None)]
    err = cli.fails("platform", "add-deployment", "987654", "dep-z")
    assert "Error: No platform #987654" in err


# -- keys ----------------------------------------------------------------------------------


def jwks_of(database_url: str, tmp: Path) -> list[str]:
    """The kids /lti/jwks publishes for that database (through the real app)."""
    app = create_app(
        Settings(
            database_url=database_url,
            redis_url=REDIS_URL,
            secret_key=SECRET,
            base_url="https://lifeline.test",
            instance_path=str(tmp),
            testing=True,
        )
    )
    try:
        response = app.test_client().get("/lti/jwks")
        assert response.status_code == 200
        for jwk in response.get_json()["keys"]:
            assert (jwk["alg"], jwk["use"]) == ("RS256", "sig")
        return [k["kid"] for k in response.get_json()["keys"]]
    finally:
        app.extensions["lifeline"].db.dispose()


def stored_keys(engine: Engine) -> dict[str, dt.datetime | None]:
    with Session(engine) as session:
        return {
            k.kid: k.retire_after for k in session.scalars(select(ToolKey).order_by(ToolKey.id))
        }


def test_keys_rotate_and_list(cli: Cli, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tool_keys"))
    first_out = cli.ok("keys", "rotate")
    (first,) = stored_keys(engine)
    assert f"New signing key {first}" in first_out
    assert "604800 s" in first_out  # the default grace period

    before = dt.datetime.now(dt.UTC)
    out = cli.ok("keys", "rotate", KEY_GRACE_SECONDS="3600")
    after = dt.datetime.now(dt.UTC)
    assert "previous keys stay published for 3600 s" in out
    keys = stored_keys(engine)
    assert len(keys) == 2
    second = next(k for k in keys if k != first)
    assert f"New signing key {second}" in out
    retire = keys[first]
    assert retire is not None
    assert before + dt.timedelta(seconds=3600) <= retire
    assert retire <= after + dt.timedelta(seconds=3600)
    assert keys[second] is None
    assert jwks_of(cli.database_url, cli.tmp) == [first, second]

    # --grace-seconds 0: the previous key is retired at once; the first one is still in grace.
    cli.ok("keys", "rotate", "--grace-seconds", "0")
    keys = stored_keys(engine)
    third = list(keys)[-1]
    assert jwks_of(cli.database_url, cli.tmp) == [first, third]
    listing = cli.ok("keys", "list").splitlines()
    assert [line.split()[0] for line in listing] == [first, second, third]
    assert listing[0].endswith(f"published until {retire.isoformat()}")
    assert listing[1].endswith("retired")
    assert listing[2].endswith("signing")

    # When the first key's grace period is over, only the newest key is published.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE tool_keys SET retire_after = now() - interval '1 second' WHERE kid = :k"),
            {"k": first},
        )
    assert jwks_of(cli.database_url, cli.tmp) == [third]
    listing = cli.ok("keys", "list").splitlines()
    assert [line.split()[0] for line in listing] == [first, second, third]
    assert listing[0].endswith("retired") and listing[1].endswith("retired")
    assert listing[2].endswith("signing")
    assert f"created {dt.date.today().year}" in listing[2]


# -- db / serve / settings -----------------------------------------------------------------


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    with fresh_database("empty") as url:
        cli = Cli(url, tmp_path)
        err = cli.fails("db", "check")
        assert "none (empty database)" in err and "lifeline db upgrade" in err
        assert "up to date" in cli.ok("db", "upgrade")
        engine = create_engine(url)
        try:
            tables = set(inspect(engine).get_table_names())
            assert {"platforms", "deployments", "tool_keys", "alembic_version"} <= tables
            with engine.connect() as conn:
                version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert version == head_revision()
        finally:
            engine.dispose()
        assert cli.ok("db", "check") == "Database schema is up to date.\n"


def test_serve_refuses_an_out_of_date_schema(tmp_path: Path) -> None:
    with fresh_database("stale") as url:
        cli = Cli(url, tmp_path)
        port = free_port()
        err = cli.fails("serve", "--host", "127.0.0.1", "--port", str(port))
        assert "Error: The database schema is at revision none (empty database)" in err
        assert "Run `lifeline db upgrade` first." in err
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        engine = create_engine(url)
        try:
            assert inspect(engine).get_table_names() == []  # it did not touch the database
        finally:
            engine.dispose()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"SECRET_KEY": None}, "LIFELINE_SECRET_KEY is not set"),
        ({"SECRET_KEY": "too-short"}, "LIFELINE_SECRET_KEY is too short (9 characters)"),
        ({"DATABASE_URL": "mysql://u:p@127.0.0.1/db"}, "LIFELINE_DATABASE_URL='mysql://"),
        ({"REDIS_URL": "http://127.0.0.1:6379"}, "LIFELINE_REDIS_URL='http://127.0.0.1:6379'"),
        ({"BASE_URL": "lifeline.example.edu"}, "LIFELINE_BASE_URL='lifeline.example.edu'"),
    ],
    ids=["no-secret", "short-secret", "mysql", "bad-redis", "no-scheme"],
)
def test_bad_setting_stops_start_up_naming_the_variable(
    cli: Cli, changes: dict[str, str | None], named: str
) -> None:
    err = cli.fails("serve", "--port", str(free_port()), **changes)
    assert err.startswith("Error: ")
    assert named in err
    assert "config/lifeline.env.example" in err


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None


def test_serve_runs_gunicorn_and_answers(cli: Cli, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM tool_keys"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = cli.tmp / f"serve-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [LIFELINE, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=cli_env(cli.database_url, cli.tmp, BASE_URL=base),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cli.tmp,
        )
    try:
        deadline = time.monotonic() + 30
        status: tuple[int, Any] | None = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                status = get(base + "/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert status == (200, {"database": "ok", "redis": "ok"}), log.read_text()
        # The signing key was made at start-up, before any request for /lti/jwks.
        (kid,) = stored_keys(engine)

        code, document = get(base + "/lti/jwks")
        assert code == 200
        (jwk,) = document["keys"]
        assert (jwk["kid"], jwk["alg"], jwk["use"], jwk["kty"]) == (kid, "RS256", "sig", "RSA")
        assert get(base + "/no-such-page")[0] == 404
        assert "gunicorn" in log.read_text().lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()
