"""The ``lifeline`` command: serve, worker, demo, db, platform, admin, keys."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from flask import Flask

from . import create_app
from .config import ConfigError, Settings, demo_settings, settings_from_env
from .db import Database
from .lti import keys as tool_keys
from .lti.platform_config import LMS_NAMES as PLATFORM_LMS_NAMES
from .lti.registry import (
    RegistrationError,
    add_deployment,
    add_platform,
    check_url,
    list_platforms,
)
from .migrate import SchemaOutOfDate, check_schema, upgrade
from .services import EXTENSION
from .streams import cooperate_with_gevent


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
@click.option(
    "--worker-connections",
    default=2000,
    show_default=True,
    type=int,
    help="Concurrent connections per worker, live update streams included.",
)
@click.option("--threads", type=int, hidden=True, help="Ignored (gevent workers have no threads).")
def serve(host: str, port: int, workers: int, worker_connections: int, threads: int | None) -> None:
    settings = _settings()
    _prepare(settings)
    args = ["serve", "--host", host, "--port", str(port), "--workers", str(workers)]
    _run_gevent_patched_first([*args, "--worker-connections", str(worker_connections)])
    from gunicorn.app.base import BaseApplication

    # gevent, not threads: every open live-update stream holds a connection, and a thread per
    # connection starves ordinary requests long before a course's dashboards are all open.
    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", _gevent_worker())
            self.cfg.set("worker_connections", worker_connections)
            self.cfg.set("accesslog", os.environ.get("LIFELINE_ACCESS_LOG") or None)
            self.cfg.set("timeout", 60)
            self.cfg.set("keepalive", 5)

        def load(self) -> Flask:
            cooperate_with_gevent()  # in case psycopg was imported before the patching
            return create_app(settings)

    Server().run()


GEVENT_FIRST = (
    "from gevent import monkey; monkey.patch_all(); import sys; "
    "from lti_tool.cli import main; sys.exit(main(prog_name='lifeline'))"
)


def _run_gevent_patched_first(args: list[str]) -> None:
    """Run this command again in a fresh interpreter that lets gevent patch the standard
    library before anything else is imported; return if this one is it.

    gunicorn's gevent worker patches after the fork, but this process has imported all of
    Lifeline to parse its command line, urllib3 (through requests) included: with ``ssl``
    patched that late, every outbound HTTPS call (a platform's JWKS) ends in RecursionError
    (gevent issue 1016), and psycopg keeps a blocking wait.
    """
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("ssl"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-c", GEVENT_FIRST, *args])  # noqa: S606


def _tune_gc() -> None:
    """For a long-lived server process, once its code is loaded: what start-up made is moved
    out of the collector's sight (``gc.freeze``), so full collections no longer walk every
    module, route and table; and young collections run every 20,000 allocations instead of
    700, since a request allocates hundreds of short-lived objects that die without cycles.
    (Measured in the ingestion consumer: ~10% less CPU per statement.)"""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 1000)


def _gevent_worker() -> type:
    """gunicorn's gevent worker that ends live streams at once on a graceful stop (SIGTERM),
    instead of waiting out the graceful timeout for streams that never end by themselves."""
    import gevent  # type: ignore[import-untyped]
    from gunicorn.workers.ggevent import GeventWorker

    class LifelineWorker(GeventWorker):  # type: ignore[misc]
        def load_wsgi(self) -> None:
            super().load_wsgi()
            _tune_gc()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            services = getattr(self.wsgi, "extensions", {}).get(EXTENSION)
            if services is not None:
                gevent.spawn(services.hub.close_streams)

    return LifelineWorker


@main.command(help="Run an RQ worker for Lifeline's background jobs (paging, alerts, sweeps).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--scheduler/--no-scheduler",
    default=True,
    show_default=True,
    help="Also run RQ's scheduler (SLA checks, retries with back-off); one is active per "
    "Redis, the others stand by.",
)
@click.option("--name", default=None, help="Worker name prefix (default: host.pid).")
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
)
def worker(burst: bool, scheduler: bool, name: str | None, log_level: str) -> None:
    from .jobs import run_worker

    settings = _settings()
    if not run_worker(
        settings, burst=burst, with_scheduler=scheduler, name=name, logging_level=log_level
    ):
        raise click.ClickException("The worker stopped on a Redis error (see the log above).")


# -- jobs ----------------------------------------------------------------------------------


@main.group(help="Background jobs: see the failed ones and retry them.")
def jobs() -> None:
    pass


def _jobs_redis() -> Any:
    from .jobs import ENQUEUE_SOCKET_TIMEOUT, make_job_redis

    return make_job_redis(_settings().redis_url, ENQUEUE_SOCKET_TIMEOUT * 5)


@jobs.command("failed", help="List jobs that failed after their retries, with their error.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with full tracebacks).")
def jobs_failed(as_json: bool) -> None:
    from .jobs import failed_jobs

    rows = failed_jobs(_jobs_redis())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No failed jobs.")
        return
    for row in rows:
        call = f"{row['func']}({', '.join(repr(a) for a in row['args'])})"
        click.echo(f"{row['id']}  {call}  failed {row.get('failed_at') or '?'}")
        click.echo(f"    {row['error'] or '(no error recorded)'}")
    click.echo(f"{len(rows)} failed job(s). Retry with `lifeline jobs retry JOB_ID` or --all.")


@jobs.command("retry", help="Put failed jobs back on the queue (they run once more).")
@click.argument("job_ids", nargs=-1)
@click.option("--all", "retry_all", is_flag=True, help="Retry every failed job.")
def jobs_retry(job_ids: tuple[str, ...], retry_all: bool) -> None:
    from .jobs import retry_failed

    if retry_all == bool(job_ids):
        raise click.UsageError("Give one or more JOB_IDs, or --all (not both).")
    requeued, missing = retry_failed(_jobs_redis(), None if retry_all else job_ids)
    for job_id in requeued:
        click.echo(f"Requeued {job_id}.")
    if not requeued and retry_all:
        click.echo("No failed jobs to retry.")
    if missing:
        raise click.ClickException(
            f"Not among the failed jobs: {', '.join(missing)} (see `lifeline jobs failed`)."
        )


@main.command(help="Run everything in one process with the built-in demo LMS (no services).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
def demo(host: str, port: int) -> None:
    settings = demo_settings(host, port)
    from .demo_lms import EXTENSION as DEMO_LMS
    from .demo_lms.startup import ensure_demo_admin, startup_text

    database = Database(settings.database_url)
    upgrade(database.engine)
    with database.transaction() as session:
        tool_keys.ensure_key(session)
        demo_admin = ensure_demo_admin(session, Path(settings.instance_path))
    database.dispose()
    app = create_app(settings)
    from .jobs import start_sweeper

    # Inline jobs schedule nothing ahead: this thread expires and escalates requests instead.
    start_sweeper(app.extensions[EXTENSION].jobs)
    if settings.ingest_mode == "stream":  # activity accepted into the stream is stored here
        import threading

        from .activity.pipeline import start_threads

        start_threads(
            app.extensions[EXTENSION].db,
            app.extensions[EXTENSION].redis,
            settings.stream_partitions,
            threading.Event(),  # never set: daemon threads end with the process
        )
    click.echo(
        startup_text(
            settings.base_url, app.extensions[DEMO_LMS], demo_admin, settings.instance_path
        )
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
    help="A deployment id of Lifeline in this platform; repeat for several (required unless "
    "--accept-new-deployments).",
)
@click.option(
    "--token-audience",
    default=None,
    help="Audience for token requests, if not the token URL (Brightspace).",
)
@click.option(
    "--accept-new-deployments",
    is_flag=True,
    help="Record a deployment id Lifeline has not seen on its first launch instead of refusing "
    "it (for an LMS whose admins install the tool in many places).",
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
    accept_new_deployments: bool,
) -> None:
    if not deployment_ids and not accept_new_deployments:
        raise click.UsageError(
            "Name at least one --deployment-id, or pass --accept-new-deployments to record "
            "deployments on their first launch."
        )
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
                accept_new_deployments=accept_new_deployments,
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


@platform.command(
    "config",
    help="Print what to paste into LMS (canvas, moodle, brightspace, blackboard, openedx, "
    "sakai, schoology) to install Lifeline by hand, with the fields named as that LMS names "
    "them, ending with the `lifeline platform add` command to run afterwards. "
    "Guides: docs/platforms/.",
)
@click.argument("lms", metavar="LMS", type=click.Choice(PLATFORM_LMS_NAMES, case_sensitive=False))
@click.option(
    "--base-url",
    default=None,
    help="Lifeline's public https address (default: LIFELINE_BASE_URL).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: the machine-readable configuration (for canvas, the developer key JSON alone).",
)
def platform_config(lms: str, base_url: str | None, output_format: str) -> None:
    from .lti.platform_config import BaseUrlError, build, check_base_url

    source = "'--base-url'"
    if base_url is None:
        base_url = os.environ.get("LIFELINE_BASE_URL", "").strip() or None
        source = "LIFELINE_BASE_URL"
    if base_url is None:
        raise click.UsageError(
            "Lifeline's public address is not known: pass --base-url "
            "https://lifeline.example.edu, or set LIFELINE_BASE_URL."
        )
    try:
        urls = check_base_url(base_url)
    except BaseUrlError as exc:
        raise click.BadParameter(str(exc), param_hint=source) from None
    config = build(lms, urls)
    if output_format == "json":
        click.echo(json.dumps(config.document(), indent=2))
    else:
        click.echo(config.text(), nl=False)


# -- admin ---------------------------------------------------------------------------------


@main.group(help="Lifeline's administrators (they sign in at /admin).")
def admin() -> None:
    pass


@admin.command("add", help="Create an administrator account; asks for the password.")
@click.argument("email")
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input (for scripts).",
)
def admin_add(email: str, password_stdin: bool) -> None:
    from .admin.accounts import AdminError, check_email, check_password, create_admin

    try:
        email = check_email(email)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = click.prompt(
                f"Password for {email}", hide_input=True, confirmation_prompt=True
            )
        check_password(password)
        with _database().transaction() as session:
            account = create_admin(session, email, password)
            click.echo(f"Admin #{account.id} {account.email} can now log in at /admin/login.")
    except AdminError as exc:
        raise click.ClickException(str(exc)) from None


@admin.command("list", help="List administrator accounts (never their passwords).")
def admin_list() -> None:
    from .admin.accounts import list_admins
    from .db import utcnow

    now = utcnow()
    with _database().transaction() as session:
        accounts = list_admins(session)
        if not accounts:
            click.echo("No administrators. Add one with `lifeline admin add EMAIL`.")
            return
        for account in accounts:
            last = account.last_login_at.isoformat() if account.last_login_at else "never"
            locked = (
                f"  locked until {account.locked_until.isoformat()}"
                if account.locked_until and account.locked_until > now
                else ""
            )
            click.echo(f"#{account.id} {account.email}  last login {last}{locked}")


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


# -- activity ------------------------------------------------------------------------------


@main.group(
    help="Exercise activity: ProgSnap2 imports, re-processing unmapped events, the ingestion "
    "stream's consumer and its dead letters."
)
def activity() -> None:
    pass


@activity.command("import-progsnap2", help="Import a ProgSnap2 MainTable CSV into a course.")
@click.argument("main_table", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--course-id", type=int, required=True, help="Lifeline's id of the course.")
@click.option(
    "--code-states",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CodeState CSV (CodeStateID,Code), for code lengths.",
)
def activity_import_progsnap2(main_table: Path, course_id: int, code_states: Path | None) -> None:
    from .activity.progsnap2 import FileProblem, import_csv

    try:
        summary = import_csv(_database(), course_id, main_table, code_states)
    except FileProblem as exc:
        raise click.ClickException(str(exc)) from None
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    click.echo(f"Read {summary.rows} rows into course #{course_id}: {counts or 'nothing'}.")
    for problem in summary.problems:
        click.echo(f"    {problem}")


@activity.command(
    "consume",
    help="Store and evaluate the activity accepted into the ingestion stream (`lifeline "
    "worker` runs one; more stand by while one is active).",
)
@click.option("--parent-pid", type=int, default=None, hidden=True)
@click.option(
    "--partition",
    type=click.IntRange(0, 15),
    default=None,
    help="Consume this partition of the stream only (default: every partition, on threads).",
)
def activity_consume(parent_pid: int | None, partition: int | None) -> None:
    from .activity.pipeline import run_process

    run_process(_settings(), parent_pid, partition)


@activity.command(
    "dead-letters",
    help="Activity the worker could not store after its retries, with the error; --retry "
    "puts entries back on the stream once the cause is fixed.",
)
@click.option("--retry", "retry_ids", multiple=True, type=int, help="A dead letter's id.")
@click.option("--retry-all", is_flag=True, help="Put every dead letter back.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (with the entries).")
def activity_dead_letters(retry_ids: tuple[int, ...], retry_all: bool, as_json: bool) -> None:
    from .activity.pipeline import dead_letters, retry_dead_letters
    from .jobs import ENQUEUE_SOCKET_TIMEOUT, make_job_redis

    settings = _settings()
    if retry_ids or retry_all:
        if retry_ids and retry_all:
            raise click.UsageError("Give --retry ID (one or more) or --retry-all, not both.")
        client = make_job_redis(settings.redis_url, ENQUEUE_SOCKET_TIMEOUT * 5)
        with _database().transaction() as session:
            done = retry_dead_letters(session, client, None if retry_all else list(retry_ids))
        for letter_id in done:
            click.echo(f"Put dead letter #{letter_id} back on the ingestion stream.")
        missing = sorted(set(retry_ids) - set(done))
        if missing:
            raise click.ClickException(
                f"No dead letter {', '.join(f'#{i}' for i in missing)} "
                "(see `lifeline activity dead-letters`)."
            )
        if not done:
            click.echo("No dead letters to retry.")
        return
    with _database().transaction() as session:
        rows = [
            {
                "id": r.id,
                "stream_id": r.stream_id,
                "course_id": r.course_id,
                "source": r.source,
                "items": r.items,
                "tries": r.tries,
                "reason": r.reason,
                "created_at": r.created_at.isoformat(),
                **({"payload": json.loads(r.payload)} if as_json else {}),
            }
            for r in dead_letters(session)
        ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("No dead letters: everything accepted was stored.")
        return
    for row in rows:
        click.echo(
            f"#{row['id']}  entry {row['stream_id']}  course #{row['course_id']}  "
            f"{row['source']}  {row['items']} item(s)  {row['tries']} tries  {row['created_at']}"
        )
        click.echo(f"    {row['reason']}")
    click.echo(
        f"{len(rows)} dead letter(s). Fix the cause, then `lifeline activity dead-letters "
        "--retry ID` (or --retry-all)."
    )


@activity.command("reprocess", help="Map a course's unmapped events again (after mappings).")
@click.option("--course-id", type=int, required=True, help="Lifeline's id of the course.")
def activity_reprocess(course_id: int) -> None:
    from .activity.ingest import Scope, reprocess_unmapped
    from .courses import Course

    with _database().transaction() as session:
        course = session.get(Course, course_id)
        if course is None:
            raise click.ClickException(f"There is no course #{course_id}.")
        done = reprocess_unmapped(session, Scope.of(course))
    click.echo(
        f"Re-processed {done.examined} unmapped events: {done.accepted} recorded, "
        f"{done.ignored} not used, {done.still_unmapped} still unmapped."
    )


# -- evaluate ------------------------------------------------------------------------------


@main.command(help="Replay a ProgSnap2 data set through the detection engine (no look-ahead).")
@click.argument("progsnap2_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Where to write FLAGS.csv."
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A rule book (JSON); the default rules otherwise.",
)
@click.option("--report", is_flag=True, help="Print precision/recall/flag rate and ROC-AUC.")
@click.option("--sensitivity", is_flag=True, help="With --report: vary each default parameter.")
@click.option(
    "--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON."
)
@click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False),
    help="Save the learned score fitted on the whole data set (JSON coefficients).",
)
def evaluate(
    progsnap2_dir: str,
    out: str,
    rules_path: str | None,
    report: bool,
    sensitivity: bool,
    json_path: str | None,
    model_path: str | None,
) -> None:
    from .detection.evaluate import format_report, run

    try:
        rows, result = run(
            progsnap2_dir,
            out,
            rules_path=rules_path,
            with_sensitivity=sensitivity and report,
            json_path=json_path,
            model_path=model_path,
        )
    except ValueError as exc:  # RuleError, ProgSnap2Error and friends name the problem
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {rows} rows to {out}.")
    if report:
        click.echo(format_report(result))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
