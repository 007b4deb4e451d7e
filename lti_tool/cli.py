"""The ``lifeline`` command: serve, worker, demo, db, platform, keys."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from flask import Flask

from . import create_app
from .config import ConfigError, Settings, demo_settings, settings_from_env
from .db import Database
from .lti import keys as tool_keys
from .lti.registry import (
    RegistrationError,
    add_deployment,
    add_platform,
    check_url,
    list_platforms,
)
from .migrate import SchemaOutOfDate, check_schema, upgrade


def _settings() -> Settings:
    try:
        return settings_from_env()
    except ConfigError as exc:
        raise click.ClickException(f"{exc} (see config/lifeline.env.example)") from None


def _database() -> Database:
    return Database(_settings().database_url)


@click.group(help="Lifeline: live 1-to-1 tutoring for stuck learners, as an LTI 1.3 tool.")
def main() -> None:
    pass


# -- db ------------------------------------------------------------------------------------


@main.group(help="Database schema (Alembic migrations).")
def db() -> None:
    pass


@db.command("upgrade", help="Apply every pending migration.")
def db_upgrade() -> None:
    database = _database()
    upgrade(database.engine)
    click.echo("Database schema is up to date.")


@db.command("check", help="Exit 1 if the schema is not at the newest migration.")
def db_check() -> None:
    try:
        check_schema(_database().engine)
    except SchemaOutOfDate as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("Database schema is up to date.")


# -- serve / worker / demo -----------------------------------------------------------------


def _prepare(settings: Settings) -> None:
    database = Database(settings.database_url)
    try:
        check_schema(database.engine)
    except SchemaOutOfDate as exc:
        raise click.ClickException(str(exc)) from None
    with database.transaction() as session:
        tool_keys.ensure_key(session)
    database.dispose()


@main.command(help="Run the web tier under gunicorn with settings from the environment.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=2, show_default=True, type=int, help="Worker processes.")
@click.option("--threads", default=16, show_default=True, type=int, help="Threads per worker.")
def serve(host: str, port: int, workers: int, threads: int) -> None:
    settings = _settings()
    _prepare(settings)
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("accesslog", os.environ.get("LIFELINE_ACCESS_LOG") or None)
            self.cfg.set("timeout", 60)
            self.cfg.set("keepalive", 5)

        def load(self) -> Flask:
            return create_app(settings)

    Server().run()


@main.command(help="Run an RQ worker for Lifeline's background jobs.")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def worker(burst: bool) -> None:
    from rq import Worker

    from .bus import make_redis
    from .jobs import QUEUE_NAME

    settings = _settings()
    connection = make_redis(settings.redis_url)
    Worker([QUEUE_NAME], connection=connection).work(burst=burst)


@main.command(help="Run everything in one process with the built-in demo LMS (no services).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def demo(host: str, port: int) -> None:
    settings = demo_settings(host, port)
    database = Database(settings.database_url)
    upgrade(database.engine)
    with database.transaction() as session:
        tool_keys.ensure_key(session)
    database.dispose()
    app = create_app(settings)
    click.echo(
        f"\n  Lifeline demo running.\n"
        f"  Demo LMS (launch as learner, instructor or tutor): {settings.base_url}/demo/\n"
        f"  Tool JWKS: {settings.base_url}/lti/jwks\n"
        f"  Data: {settings.instance_path}\n"
    )
    app.run(host=host, port=port, threaded=True, use_reloader=False)


# -- platform ------------------------------------------------------------------------------


@main.group(help="Register and list LMS platforms.")
def platform() -> None:
    pass


@platform.command("add", help="Register an LMS platform (one issuer + client id).")
@click.option("--name", required=True, help="A name admins recognise, e.g. 'Canvas prod'.")
@click.option(
    "--issuer",
    required=True,
    help="The platform's issuer (iss), e.g. https://canvas.instructure.com.",
)
@click.option("--client-id", required=True, help="The client id the LMS gave Lifeline.")
@click.option(
    "--auth-url", required=True, help="The platform's OIDC authorization (auth login) URL."
)
@click.option("--token-url", required=True, help="The platform's OAuth2 access token URL.")
@click.option("--keyset-url", required=True, help="The platform's public keyset (JWKS) URL.")
@click.option(
    "--deployment-id",
    "deployment_ids",
    multiple=True,
    required=True,
    help="A deployment id of Lifeline in this platform; repeat for several.",
)
@click.option(
    "--token-audience",
    default=None,
    help="Audience for token requests, if not the token URL (Brightspace).",
)
def platform_add(
    name: str,
    issuer: str,
    client_id: str,
    auth_url: str,
    token_url: str,
    keyset_url: str,
    deployment_ids: tuple[str, ...],
    token_audience: str | None,
) -> None:
    database = _database()
    try:
        # Name the flag, not the field, in the message an admin sees.
        for flag, url in (
            ("--auth-url", auth_url),
            ("--token-url", token_url),
            ("--keyset-url", keyset_url),
        ):
            check_url(flag, url)
        with database.transaction() as session:
            added = add_platform(
                session,
                name=name,
                issuer=issuer,
                client_id=client_id,
                auth_login_url=auth_url,
                auth_token_url=token_url,
                keyset_url=keyset_url,
                deployment_ids=deployment_ids,
                token_audience=token_audience,
            )
            click.echo(f"Registered platform #{added.id} {added.name!r} ({issuer}, {client_id}).")
    except RegistrationError as exc:
        raise click.ClickException(str(exc)) from None


@platform.command("add-deployment", help="Add a deployment id to a registered platform.")
@click.argument("platform_id", type=int)
@click.argument("deployment_id")
def platform_add_deployment(platform_id: int, deployment_id: str) -> None:
    from .lti.models import Platform

    with _database().transaction() as session:
        found = session.get(Platform, platform_id)
        if found is None:
            raise click.ClickException(f"No platform #{platform_id}; see `lifeline platform list`.")
        try:
            add_deployment(session, found, deployment_id)
        except RegistrationError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"Platform #{platform_id} now accepts deployment {deployment_id!r}.")


@platform.command("list", help="List registered platforms and their deployments.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def platform_list(as_json: bool) -> None:
    with _database().transaction() as session:
        rows: list[dict[str, Any]] = [
            {
                "id": p.id,
                "name": p.name,
                "issuer": p.issuer,
                "client_id": p.client_id,
                "status": p.status,
                "deployments": [d.deployment_id for d in p.deployments],
                "auth_url": p.auth_login_url,
                "token_url": p.auth_token_url,
                "keyset_url": p.keyset_url,
                "last_launch_at": p.last_launch_at.isoformat() if p.last_launch_at else None,
                "last_error": p.last_error,
            }
            for p in list_platforms(session)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No platforms registered. Add one with `lifeline platform add --help`.")
        return
    for row in rows:
        click.echo(
            f"#{row['id']} {row['name']} [{row['status']}]\n"
            f"    issuer {row['issuer']}  client id {row['client_id']}\n"
            f"    deployments {', '.join(row['deployments'])}\n"
            f"    last launch {row['last_launch_at'] or 'never'}"
            + (f"\n    last error {row['last_error']}" if row["last_error"] else "")
        )


# -- keys ----------------------------------------------------------------------------------


@main.group(help="The tool's signing keys (published on /lti/jwks).")
def keys() -> None:
    pass


@keys.command("rotate", help="Add a new signing key; old keys stay published for a grace period.")
@click.option(
    "--grace-seconds", type=int, default=None, help="Override LIFELINE_KEY_GRACE_SECONDS."
)
def keys_rotate(grace_seconds: int | None) -> None:
    settings = _settings()
    grace = settings.key_grace_seconds if grace_seconds is None else grace_seconds
    with Database(settings.database_url).transaction() as session:
        new = tool_keys.rotate(session, grace)
        click.echo(f"New signing key {new.kid}; previous keys stay published for {grace} s.")


@keys.command("list", help="List the tool's keys and whether each is published.")
def keys_list() -> None:
    from sqlalchemy import select

    from .db import utcnow
    from .lti.models import ToolKey

    now = utcnow()
    with _database().transaction() as session:
        for key in session.scalars(select(ToolKey).order_by(ToolKey.id)):
            if key.retire_after is None:
                state = "signing"
            elif key.retire_after > now:
                state = f"published until {key.retire_after.isoformat()}"
            else:
                state = "retired"
            click.echo(f"{key.kid}  created {key.created_at.isoformat()}  {state}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
