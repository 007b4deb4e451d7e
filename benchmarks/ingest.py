"""Activity ingestion benchmark: xAPI statements through ``lifeline serve`` and the ingestion
pipeline with live detection, and the time from a failing submission to the offer on the
learner's page.

Run with ``make bench-ingest`` (or ``.venv/bin/python benchmarks/ingest.py --help``). It creates
its own PostgreSQL database (dropped at the end) and starts its own redis-server on a spare
port (AOF on, ``appendfsync everysec``, as in production), runs ``lifeline db upgrade``, sets up
one course (exercises, learners, 50 Basic credentials, a rule book of 50 rules installed with
``detection.live.save_rules``), starts ``lifeline serve`` (gunicorn, Lifeline's gevent worker),
``lifeline worker`` (RQ and the ingestion consumer process) and, beside them, a bare Flask app
doing one Redis round trip per request under the same gunicorn gevent settings, and measures
on 127.0.0.1:

  (1) xAPI statements/s, single statements (one POST /xapi/statements each, keep-alive,
      several connections) and batches (500 per POST), with ``wrk`` sending pre-built
      requests. *Accepted*: statements in the 2xx answers over the time from the first request
      to the last response. *Evaluated*: the same statements over the time from the first
      request until the consumer has stored them and run the 50 rules over them (its commit
      is followed by the acknowledgement: the stream is empty and nothing is pending); every
      one is checked stored in ``activity_events``. Beside them, in the same run and with the
      same client and connections: the bare Flask + Redis endpoint's requests/s (the
      reference).
  (2) event -> offer: with one learner's offer stream open (SSE GET /l/<launch>/offers/events,
      one per learner, all open at once), a failing submission POSTed that makes a rule fire;
      the time from sending the POST to reading ``offer.created`` on that learner's stream.

Each measurement is repeated --runs times, interleaved; medians of runs are reported beside the
per-run figures, with the load average around each run (other work on the machine). Every loop
is bounded in count and time, the whole run by --max-seconds; servers, the database and the
redis-server are cleaned up on error and on Ctrl-C. ``--ingest-mode sync`` measures the
synchronous path instead (every request stores and evaluates; no consumer).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path, where a sibling benchmark is named
# like a standard module (queue.py): drop it before importing anything else.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import datetime as dt  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import secrets  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import psycopg  # noqa: E402
import redis  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_ADMIN = os.environ.get(
    "LIFELINE_BENCH_PG_ADMIN", "postgresql://lifeline:lifeline@127.0.0.1:5432/postgres"
)
DB_NAME = os.environ.get("LIFELINE_BENCH_INGEST_DB", "lifeline_bench_ingest")
LMS = "https://lms.ingest-bench.example"
ADL = "http://adlnet.gov/expapi/verbs/"
XAPI_VERSION = "1.0.3"
EXERCISES = 5
RULES = 50
CREDENTIALS = 50  # the most a course may have (activity/credentials.py)
FIRE_AT = 3  # consecutive failures that make the benchmark's first rule fire


# -- small helpers ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))  # nearest rank
    return ordered[index]


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


# -- processes: servers and cleanup ----------------------------------------------------------

GROUPS: dict[str, int] = {}  # what CPU time is counted for: name -> process group id
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far of each process group in ``GROUPS``, of the PostgreSQL
    backends of the benchmark's database ("postgres") and of every other PostgreSQL process
    on the machine ("postgres-other": WAL writer, checkpointer, other work), and of this
    process's finished children (wrk)."""
    import resource

    totals = dict.fromkeys([*GROUPS, "postgres", "postgres-other"], 0.0)
    by_group = {pgid: name for name, pgid in GROUPS.items()}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            comm = text[text.find("(") + 1 : text.rfind(")")]
            fields = text[text.rfind(")") + 2 :].split()
            used = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            name = by_group.get(int(fields[2]))
            if name is None and comm == "postgres":
                # Backends name their database; the shared processes (WAL writer,
                # checkpointer, other databases' backends) are counted apart.
                cmdline = (stat.parent / "cmdline").read_bytes()
                name = "postgres" if DB_NAME.encode() in cmdline else "postgres-other"
        except (OSError, ValueError, IndexError):
            continue
        if name is not None:
            totals[name] += used
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["wrk"] = children.ru_utime + children.ru_stime
    return totals


class Cleanup:
    """Everything the run started, undone in reverse order even on error or Ctrl-C."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, step: Callable[[], None]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        # A second Ctrl-C during cleanup must not leave servers or the database behind.
        signal.alarm(0)
        caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGALRM)
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in caught}
        try:
            while self.steps:
                what, step = self.steps.pop()
                try:
                    step()
                except Exception as exc:
                    print(f"cleanup: {what} failed: {exc}", file=sys.stderr)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def stop_process_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def start_redis(cleanup: Cleanup, workdir: Path) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", ""]
    argv += ["--appendonly", "yes", "--appendfsync", "everysec"]  # as docker-compose.yml
    argv += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cleanup.add("stop redis-server", lambda: stop_process_group(proc))
    GROUPS["redis"] = proc.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(host=HOST, port=port, socket_timeout=1).ping():
                return f"redis://{HOST}:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark's redis-server did not start")


def start_server(
    cleanup: Cleanup, name: str, argv: list[str], env: dict[str, str], port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        stop_process_group(proc)
        out.close()

    cleanup.add(f"stop {name}", stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early:\n{log_path.read_text()}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                time.sleep(1.0)  # every worker has booted
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer within 60 s; see {log_path}")


def start_worker(
    cleanup: Cleanup, argv: list[str], env: dict[str, str], log_path: Path, client: redis.Redis
) -> subprocess.Popen[bytes]:
    """``lifeline worker``, ready once its ingestion consumer holds the lease."""
    out = log_path.open("wb")
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        stop_process_group(proc)
        out.close()

    cleanup.add("stop lifeline worker", stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lifeline worker exited early:\n{log_path.read_text()}")
        if client.get("lifeline:ingest:leader") is not None:
            return proc
        time.sleep(0.1)
    raise RuntimeError(f"the ingestion consumer did not start within 60 s; see {log_path}")


def wait_drained(world: World, records: int, timeout: float) -> float:
    """The moment the consumer has stored everything accepted: the stream is empty, nothing
    is pending (it acknowledges after its commit), and ``records`` rows exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipe = world.redis.pipeline(transaction=False)
        pipe.xlen("lifeline:ingest:stream")
        pipe.xpending("lifeline:ingest:stream", "ingest")
        length, pending = pipe.execute()
        if not length and not pending["pending"]:
            done = time.monotonic()
            if world.records() >= records:
                return done
        time.sleep(0.005)
    raise RuntimeError(f"the consumer did not store everything within {timeout:g} s")


def acquire_run_lock(wait: float) -> int:
    """One benchmark at a time on this machine (the lock the other benchmarks take too)."""
    import fcntl

    fd = os.open(Path(tempfile.gettempdir(), "lifeline-bench.lock"), os.O_WRONLY | os.O_CREAT)
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise SystemExit("another Lifeline benchmark is running on this machine") from None
            if not told:
                log(f"another Lifeline benchmark is running; waiting up to {wait:g} s")
                told = True
            time.sleep(1.0)


def create_database() -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return PG_ADMIN.replace("postgresql://", "postgresql+psycopg://", 1).rsplit("/", 1)[0] + (
        "/" + DB_NAME
    )


def drop_database() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def plain_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def lifeline(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(BIN / "lifeline"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"lifeline {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout.strip()


# -- the course: exercises, learners, credentials, 50 rules (written through the app's handles)


def rule_book() -> dict[str, Any]:
    """50 rules: one fires on the FIRE_AT-th failure in a row; the other 49 (every trigger
    kind that reacts to events, AND / OR trees) are evaluated on every event without firing
    first. No cooldown between exercises, no daily limit, offers even with no tutor free."""
    rules: list[dict[str, Any]] = [
        {
            "name": "fails-in-a-row",
            "severity": 0.6,
            "escalate": False,
            "when": {"trigger": "consecutive_failures", "threshold": FIRE_AT},
        }
    ]
    for i in range(1, RULES):
        k = i % 7
        high = 8 + i  # never reached before the first rule fires
        when: dict[str, Any]
        if k == 0:
            when = {"trigger": "consecutive_failures", "threshold": high}
        elif k == 1:
            when = {"trigger": "no_progress", "attempts": high}
        elif k == 2:
            when = {"trigger": "rapid_guessing", "count": high}
        elif k == 3:
            when = {"trigger": "repeated_error", "streak": high}
        elif k == 4:
            when = {
                "all": [
                    {"trigger": "consecutive_failures", "threshold": high},
                    {"trigger": "hints", "none_after_failures": high},
                ]
            }
        elif k == 5:
            when = {
                "any": [
                    {"trigger": "no_progress", "attempts": high},
                    {"trigger": "time_on_exercise", "minutes": 600 + i},
                ]
            }
        else:
            when = {"trigger": "hints", "at_least": high}
        rules.append({"name": f"rule-{i:02d}", "severity": 0.5, "escalate": False, "when": when})
    return {
        "policy": {"cooldown_minutes": 30, "daily_limit": 0, "full_capacity_min_severity": 0.0},
        "rules": rules,
    }


class World:
    def __init__(self, env: dict[str, str], throughput_learners: int) -> None:
        from lti_tool import create_app
        from lti_tool.activity import credentials
        from lti_tool.config import settings_from_env
        from lti_tool.courses import Course, Exercise, Person
        from lti_tool.detection import live
        from lti_tool.lti.registry import add_platform

        saved = dict(os.environ)
        os.environ.update(env)
        try:
            self.settings = settings_from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.app = create_app(self.settings)
        self.db = self.app.extensions["lifeline"].db
        self.redis = redis.Redis.from_url(env["LIFELINE_REDIS_URL"])
        self._next = 0
        with self.db.transaction() as session:
            lms = add_platform(
                session,
                name="Ingest bench LMS",
                issuer=LMS,
                client_id="ingest-bench",
                auth_login_url=LMS + "/auth",
                auth_token_url=LMS + "/token",
                keyset_url=LMS + "/jwks.json",
                deployment_ids=["bench"],
            )
            session.flush()
            self.platform_id = lms.id
            course = Course(
                platform_id=lms.id, deployment_id="bench", context_id="ingest", title="Ingest"
            )
            session.add(course)
            session.flush()
            self.course_id = course.id
            exercises = [
                Exercise(course_id=course.id, resource_link_id=f"bench-link-{i}", title=f"Ex {i}")
                for i in range(EXERCISES)
            ]
            session.add_all(exercises)
            session.flush()
            self.exercise_ids = [e.id for e in exercises]
            self.creds = []
            for i in range(CREDENTIALS):
                made = credentials.create(session, course, f"bench forwarder {i}")
                token = f"{made.credential.key}:{made.secret}".encode()
                self.creds.append("Basic " + base64.b64encode(token).decode())
            live.save_rules(session, course.id, rule_book())
        self.throughput_subs = self.add_people("t", throughput_learners)[1]
        self._person = Person  # for add_people

    def add_people(self, prefix: str, count: int) -> tuple[list[int], list[str]]:
        from lti_tool.courses import Person

        with self.db.transaction() as session:
            start = self._next
            self._next += count
            subs = [f"{prefix}-{start + i}" for i in range(count)]
            made = [
                Person(platform_id=self.platform_id, sub=s, name=s, email=f"{s}@bench.example")
                for s in subs
            ]
            session.add_all(made)
            session.flush()
            return [p.id for p in made], subs

    def launch_cookie(self, person_id: int, sub: str, exercise: int) -> tuple[str, str]:
        """A learner launch into exercise ``exercise`` kept in Redis as the LTI launch keeps it,
        and the session cookie of the browser that made it."""
        from lti_tool.courses import LaunchRecord
        from lti_tool.launches import ActiveLaunch, store
        from lti_tool.lti.launch import Launch
        from lti_tool.lti.roles import Audience

        launch_id = secrets.token_urlsafe(16)
        launch = Launch(
            launch_id=launch_id,
            registration_id=self.platform_id,
            issuer=LMS,
            client_id="ingest-bench",
            deployment_id="bench",
            message_type="LtiResourceLinkRequest",
            sub=sub,
            roles=("http://purl.imsglobal.org/vocab/lis/v2/membership#Learner",),
            audience=Audience.LEARNER,
            name=sub,
            email=f"{sub}@bench.example",
            context_id="ingest",
            context_title="Ingest",
            context_label="",
            resource_link_id=f"bench-link-{exercise}",
            resource_link_title=f"Ex {exercise}",
            target_link_uri=self.settings.base_url + "/lti/launch",
            return_url="",
        )
        record = LaunchRecord(person_id, self.course_id, self.exercise_ids[exercise])
        store(self.redis, ActiveLaunch(launch, record), 3600)
        client = self.app.test_client()
        with client.session_transaction() as session:
            session["launches"] = [launch_id]
        cookie = client.get_cookie("lifeline_session")
        assert cookie is not None
        return launch_id, cookie.value

    def records(self) -> int:
        with psycopg.connect(plain_dsn(self.settings.database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM activity_events").fetchone()
            return int(row[0]) if row else 0

    def split_latency(self, result: LatencyRun, timed: list[tuple[str, int, float, float]]) -> None:
        """Where each event's time went, from the rows' timestamps."""
        if not timed:
            return
        with psycopg.connect(plain_dsn(self.settings.database_url)) as conn:
            received = dict(
                conn.execute(
                    "SELECT external_id, extract(epoch FROM received_at) FROM raw_events "
                    "WHERE external_id = ANY(%s)",
                    ([t[0] for t in timed],),
                ).fetchall()
            )
            offered = dict(
                conn.execute(
                    "SELECT learner_id, extract(epoch FROM min(created_at)) FROM offers "
                    "WHERE learner_id = ANY(%s) GROUP BY learner_id",
                    ([t[1] for t in timed],),
                ).fetchall()
            )
        for statement_id, learner_id, sent, seen in timed:
            got, made = received.get(statement_id), offered.get(learner_id)
            if got is None or made is None:
                continue
            result.to_received.append(float(got) - sent)
            result.to_offer_row.append(float(made) - float(got))
            result.to_page.append(seen - float(made))

    def offers(self) -> int:
        with psycopg.connect(plain_dsn(self.settings.database_url)) as conn:
            row = conn.execute("SELECT count(*) FROM offers").fetchone()
            return int(row[0]) if row else 0


def statement(sub: str, exercise: int, success: bool, stamp: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "actor": {"objectType": "Agent", "account": {"homePage": LMS, "name": sub}},
        "verb": {"id": ADL + "answered", "display": {"en-US": "answered"}},
        "object": {"objectType": "Activity", "id": f"{LMS}/activity/bench-link-{exercise}"},
        "result": {"success": success, "response": "print(x)"},
        "timestamp": stamp,
    }


def now_stamp() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def requests_file(
    path: Path, world: World, rng: random.Random, requests: int, per_request: int
) -> int:
    """``requests`` lines ``authorization<TAB>json body``: random throughput learners and
    exercises, half the submissions failing, credentials round robin. Returns statements."""
    stamp = now_stamp()
    subs = world.throughput_subs
    with path.open("w") as out:
        for n in range(requests):
            items = [
                statement(rng.choice(subs), rng.randrange(EXERCISES), rng.random() < 0.5, stamp)
                for _ in range(per_request)
            ]
            body = json.dumps(items[0] if per_request == 1 else items, separators=(",", ":"))
            out.write(f"{world.creds[n % len(world.creds)]}\t{body}\n")
    return requests * per_request


# -- load: wrk with pre-built requests ----------------------------------------------------------

WRK_SCRIPT = r"""
-- Sends each pre-built request once (every statement has its own id), counts statuses, and
-- times the run from the first request to the last response.
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) / 1e9
end
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local path, nthreads = args[1], tonumber(args[2])
  reqs = {}
  ok, bad, limited, exhausted, idx, first, last = 0, 0, 0, 0, 0, 0, 0
  if path == "-" then
    reqs[1] = wrk.format("GET", "/")
    single = true
    return
  end
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local auth, body = line:match("^([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/xapi/statements", {
        ["Content-Type"] = "application/json",
        ["Authorization"] = auth,
        ["X-Experience-API-Version"] = "1.0.3",
      }, body)
    end
    i = i + 1
  end
end

function request()
  if first == 0 then first = now() end
  if single then return reqs[1] end
  idx = idx + 1
  if idx > #reqs then
    exhausted = 1
    wrk.thread:stop()
    return reqs[#reqs]
  end
  return reqs[idx]
end

function response(status, headers, body)
  if status >= 200 and status < 300 then ok = ok + 1 else bad = bad + 1 end
  if status == 429 then limited = limited + 1 end
  last = now()
end

function done(summary, latency, requests)
  local o, b, l, e, t0, t1 = 0, 0, 0, 0, math.huge, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad"); l = l + t:get("limited")
    e = e + t:get("exhausted")
    if t:get("first") > 0 then t0 = math.min(t0, t:get("first")) end
    t1 = math.max(t1, t:get("last"))
  end
  local us = summary.duration
  if t1 > t0 then us = (t1 - t0) * 1e6 end
  io.write(string.format(
    "BENCH ok=%d bad=%d limited=%d exhausted=%d duration_us=%d first_us=%d last_us=%d\n",
    o, b, l, e, us, t0 * 1e6, t1 * 1e6))
end
"""


@dataclass
class LoadRun:
    ok: int
    bad: int
    limited: int
    seconds: float
    exhausted: bool
    first: float = 0.0  # CLOCK_MONOTONIC of the first request (wrk's clock is Python's)
    last: float = 0.0  # ... and of the last response
    statements: int = 0  # accepted in the 2xx answers (checked against the database), xAPI
    evaluated_seconds: float = 0.0  # first request -> all of them stored and evaluated
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process group

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def statements_per_s(self) -> float:
        return self.statements / self.seconds if self.seconds else 0.0

    @property
    def evaluated_per_s(self) -> float:
        return self.statements / self.evaluated_seconds if self.evaluated_seconds else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "bad": self.bad,
            "rate_limited": self.limited,
            "seconds": round(self.seconds, 3),
            "exhausted": self.exhausted,
            "requests_per_s": round(self.requests_per_s, 1),
            "statements": self.statements,
            "statements_per_s": round(self.statements_per_s, 1),
            "evaluated_seconds": round(self.evaluated_seconds, 3),
            "evaluated_per_s": round(self.evaluated_per_s, 1),
            "load_average": [round(x, 2) for x in self.load],
            "cpu_seconds": {k: round(v, 3) for k, v in self.cpu.items()},
        }


def run_wrk(
    port: int, seconds: float, connections: int, threads: int, workdir: Path, file: Path | None
) -> LoadRun:
    script = workdir / "ingest.lua"
    script.write_text(WRK_SCRIPT)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--timeout", "10s", "-s", str(script), f"http://{HOST}:{port}/"]
    argv += ["--", str(file) if file else "-", str(threads)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not finish in time") from None
    line = next((x for x in stdout.decode().splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout.decode()}{stderr.decode()}")
    values = dict(item.split("=") for item in line.split()[1:])
    return LoadRun(
        ok=int(values["ok"]),
        bad=int(values["bad"]),
        limited=int(values["limited"]),
        seconds=int(values["duration_us"]) / 1e6,
        exhausted=values["exhausted"] != "0",
        first=int(values["first_us"]) / 1e6,
        last=int(values["last_us"]) / 1e6,
    )


# -- the reference: bare Flask, one Redis round trip, same gunicorn gevent settings -------------


def serve_reference(port: int, redis_url: str, workers: int, worker_connections: int) -> None:
    from gevent import monkey

    monkey.patch_all()
    from flask import Flask
    from gunicorn.app.base import BaseApplication

    app = Flask("reference")
    client = redis.Redis.from_url(redis_url)

    @app.get("/")
    def hit() -> str:
        return str(client.incr("bench:reference"))  # one round trip

    @app.get("/healthz")
    def healthz() -> str:
        return "ok"

    settings = {  # what ``lifeline serve`` sets (lti_tool/cli.py)
        "bind": f"{HOST}:{port}",
        "workers": workers,
        "worker_class": "gevent",
        "worker_connections": worker_connections,
        "accesslog": None,
        "timeout": 60,
        "keepalive": 5,
        "control_socket_disable": True,
    }

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    Server().run()


# -- event -> offer on the learner's page -------------------------------------------------------


def read_head(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """Status and what follows the head of an HTTP response."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed while reading a response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head + b"\r\n\r\n" + rest


def read_response(sock: socket.socket, deadline: float) -> int:
    status, raw = read_head(sock, deadline)
    head, _, body = raw.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed while reading a response body")
        body += chunk
    return status


def post_raw(auth: str, body: bytes, port: int) -> bytes:
    return (
        f"POST /xapi/statements HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        f"Authorization: {auth}\r\nX-Experience-API-Version: {XAPI_VERSION}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class LatencyRun:
    delays: list[float] = field(default_factory=list)  # POST sent -> offer.created read (s)
    posts: list[float] = field(default_factory=list)  # POST sent -> its response read (s)
    # Where the time went (from the rows' own timestamps, same machine clock): POST sent ->
    # statement received by the web process, received -> offer row written by the consumer,
    # offer row -> offer.created read on the page (commit, publish, the hub, SSE).
    to_received: list[float] = field(default_factory=list)
    to_offer_row: list[float] = field(default_factory=list)
    to_page: list[float] = field(default_factory=list)
    missing: int = 0
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        def ms(values: list[float], q: float) -> float:
            return round(percentile(values, q) * 1000, 2)

        return {
            "samples": len(self.delays),
            "missing": self.missing,
            "errors": self.errors,
            "p50_ms": ms(self.delays, 50),
            "p99_ms": ms(self.delays, 99),
            "max_ms": round(max(self.delays, default=float("nan")) * 1000, 2),
            "post_p50_ms": ms(self.posts, 50),
            "post_p99_ms": ms(self.posts, 99),
            "p50_split_ms": {
                "sent_to_received": ms(self.to_received, 50),
                "received_to_offer_row": ms(self.to_offer_row, 50),
                "offer_row_to_page": ms(self.to_page, 50),
            },
            "p99_split_ms": {
                "sent_to_received": ms(self.to_received, 99),
                "received_to_offer_row": ms(self.to_offer_row, 99),
                "offer_row_to_page": ms(self.to_page, 99),
            },
        }


def latency_run(world: World, port: int, args: argparse.Namespace) -> LatencyRun:
    """``args.events`` fresh learners, each with their offers stream open; each gets
    FIRE_AT - 1 failing submissions first (unmeasured), then one more, timed to the offer."""
    result = LatencyRun()
    timed: list[tuple[str, int, float, float]] = []  # statement id, learner, sent, seen
    ids, subs = world.add_people("l", args.events)
    exercise = 0
    launches = [world.launch_cookie(pid, sub, exercise) for pid, sub in zip(ids, subs, strict=True)]
    stamp = now_stamp()
    warm = [statement(s, exercise, False, stamp) for s in subs for _ in range(FIRE_AT - 1)]
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    for i in range(0, len(warm), 500):
        conn.request(
            "POST",
            "/xapi/statements",
            body=json.dumps(warm[i : i + 500]),
            headers={
                "Authorization": world.creds[0],
                "X-Experience-API-Version": XAPI_VERSION,
                "Content-Type": "application/json",
            },
        )
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"pre-failures not stored: {answer.status}")
    conn.close()
    streams: list[tuple[socket.socket, bytes]] = []
    try:
        deadline = time.monotonic() + 30
        for launch_id, cookie in launches:
            sock = socket.create_connection((HOST, port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(
                f"GET /l/{launch_id}/offers/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                f"Accept: text/event-stream\r\nCookie: lifeline_session={cookie}\r\n\r\n".encode()
            )
            streams.append((sock, b""))
        for n, (sock, _) in enumerate(streams):
            status, raw = read_head(sock, deadline)
            if status != 200:
                raise RuntimeError(f"offers stream answered {status}: {raw[:300]!r}")
            streams[n] = (sock, raw.partition(b"\r\n\r\n")[2])
        time.sleep(0.3)  # every stream subscribed
        poster = socket.create_connection((HOST, port), timeout=10)
        poster.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for n, (sock, buf) in enumerate(streams):
                stmt = statement(subs[n], exercise, False, now_stamp())
                raw = post_raw(world.creds[n % len(world.creds)], json.dumps(stmt).encode(), port)
                sent, sent_wall = time.perf_counter(), time.time()
                poster.sendall(raw)
                end = time.monotonic() + args.timeout
                got = b"offer.created" in buf
                seen = answered = 0.0
                reply = b""
                status = 0
                while (not got or not status) and time.monotonic() < end:
                    waiting = [s for s, done in ((sock, got), (poster, status)) if not done]
                    ready, _, _ = select.select(waiting, [], [], end - time.monotonic())
                    if sock in ready:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        buf += chunk
                        if b"offer.created" in buf:
                            got, seen = True, time.perf_counter()
                    if poster in ready:
                        chunk = poster.recv(65536)
                        if not chunk:
                            break
                        reply += chunk
                        status = response_status(reply)
                        if status:
                            answered = time.perf_counter()
                if status != 200:
                    result.errors += 1
                if got:
                    result.delays.append(seen - sent)
                    timed.append((stmt["id"], ids[n], sent_wall, sent_wall + seen - sent))
                else:
                    result.missing += 1
                if status:
                    result.posts.append(answered - sent)
                streams[n] = (sock, b"")
                time.sleep(args.gap)
        finally:
            poster.close()
    finally:
        for sock, _ in streams:
            with contextlib.suppress(OSError):
                sock.close()
    world.split_latency(result, timed)
    return result


def response_status(raw: bytes) -> int:
    """The status of a complete HTTP response in ``raw`` (0 while incomplete)."""
    if b"\r\n\r\n" not in raw:
        return 0
    head, _, body = raw.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return int(head.split(b" ", 2)[1]) if len(body) >= length else 0


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, Any]
    reference: list[LoadRun] = field(default_factory=list)
    single: list[LoadRun] = field(default_factory=list)
    batch: list[LoadRun] = field(default_factory=list)
    # Single statements with the consumer paused during the run (as with `lifeline worker` on
    # a host of its own, docker-compose.yml's layout): evaluated = its catch-up afterwards.
    single_apart: list[LoadRun] = field(default_factory=list)
    latency: list[LatencyRun] = field(default_factory=list)
    offers: int = 0


def run(args: argparse.Namespace, cleanup: Cleanup, results: Results) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-bench-ingest-"))
    cleanup.add("remove work dir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    redis_url = start_redis(cleanup, workdir)
    log(f"own redis-server at {redis_url}; creating database {DB_NAME}")
    cleanup.add("drop database", drop_database)
    database_url = create_database()
    port, ref_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_DATABASE_URL": database_url,
            "LIFELINE_REDIS_URL": redis_url,
            "LIFELINE_SECRET_KEY": secrets.token_hex(32),
            "LIFELINE_BASE_URL": f"http://{HOST}:{port}",
            "LIFELINE_INSTANCE_PATH": str(workdir / "instance"),
            "LIFELINE_INGEST_MODE": args.ingest_mode,
            # Several runs a minute from one course's 50 credentials would pass the default
            # 600 requests per credential per minute: the limit is not what is measured here.
            "LIFELINE_ACTIVITY_RATE_LIMIT": "1000000",
            "LIFELINE_INGEST_PARTITIONS": str(args.partitions),
        }
    )
    log("lifeline db upgrade")
    lifeline(env, "db", "upgrade")
    world = World(env, args.learners)
    cleanup.add("close the bench's database handle", world.db.dispose)
    log(
        f"course {world.course_id}: {EXERCISES} exercises, {args.learners} learners, "
        f"{CREDENTIALS} credentials, {RULES} rules"
    )

    serve = [str(BIN / "lifeline"), "serve", "--host", HOST, "--port", str(port)]
    serve += ["--workers", str(args.workers), "--worker-connections", str(args.worker_connections)]
    log("starting " + " ".join(serve[1:]))
    server = start_server(cleanup, "lifeline serve", serve, env, port, workdir / "serve.log")
    GROUPS["serve"] = server.pid
    if "Using worker: LifelineWorker" not in (workdir / "serve.log").read_text():
        raise RuntimeError("lifeline serve did not use its gevent worker")
    ref = [sys.executable, str(Path(__file__).resolve()), "--serve-reference", str(ref_port)]
    ref += ["--redis-url", redis_url, "--workers", str(args.workers)]
    ref += ["--worker-connections", str(args.worker_connections)]
    log(f"starting the bare Flask + Redis app on {HOST}:{ref_port} (same gunicorn settings)")
    reference = start_server(
        cleanup, "reference app", ref, env, ref_port, workdir / "reference.log"
    )
    GROUPS["reference"] = reference.pid

    stream = args.ingest_mode == "stream"
    if stream:
        worker = [str(BIN / "lifeline"), "worker", "--name", "bench"]
        log("starting lifeline worker (RQ and the ingestion consumer)")
        GROUPS["worker"] = start_worker(
            cleanup, worker, env, workdir / "worker.log", world.redis
        ).pid

    rng = random.Random(7)
    single_file, batch_file = workdir / "single.tsv", workdir / "batch.tsv"

    def xapi_load(
        per_request: int, requests: int, connections: int, seconds: float, apart: bool = False
    ) -> LoadRun:
        file = single_file if per_request == 1 else batch_file
        requests_file(file, world, rng, requests, per_request)
        before = world.records()
        load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
        if apart:  # the worker (RQ and its consumers) stopped: the web alone on the machine
            os.killpg(GROUPS["worker"], signal.SIGSTOP)
        try:
            load = run_wrk(port, seconds, connections, args.client_threads, workdir, file)
        finally:
            if apart:
                resumed = time.monotonic()
                os.killpg(GROUPS["worker"], signal.SIGCONT)
        # Accepted = statements in the 2xx answers read before the last one (the requests wrk
        # abandons when it stops are finished by the server, but not in the timed window).
        load.statements = load.ok * per_request
        if stream:  # evaluated = until the consumer has committed (and acknowledged) them all
            done = wait_drained(world, before + load.statements, args.drain_timeout)
            # (apart: from when the consumer resumed: its catch-up rate with the machine to
            # itself)
            load.evaluated_seconds = done - (resumed if apart else load.first)
        else:  # stored and evaluated inside each request
            load.evaluated_seconds = load.seconds
        load.load = (load_before, os.getloadavg()[0])
        cpu_after = cpu_seconds()
        load.cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
        stored, settle = world.records() - before, time.monotonic() + 30
        while time.monotonic() < settle:  # let abandoned requests finish before what follows
            time.sleep(0.5)
            now = world.records() - before
            if now == stored:
                break
            stored = now
        if stored < load.statements:
            raise RuntimeError(f"{load.statements} statements answered 2xx, {stored} stored")
        return load

    log("warming up (single statements and batches through every worker)")
    xapi_load(1, 400, args.connections, 1)
    xapi_load(args.batch, 6, args.batch_connections, 1)
    for attempt in range(1, args.runs + 1):
        load_before, cpu_before = os.getloadavg()[0], cpu_seconds()
        r = run_wrk(ref_port, args.seconds, args.connections, args.client_threads, workdir, None)
        r.load = (load_before, os.getloadavg()[0])
        cpu_after = cpu_seconds()
        r.cpu = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
        results.reference.append(r)
        log(f"run {attempt} reference: {r.requests_per_s:,.0f} requests/s ({r.bad} not 2xx)")
        s = xapi_load(1, int(args.seconds * args.single_cap), args.connections, args.seconds)
        results.single.append(s)
        log(
            f"run {attempt} single: {s.requests_per_s:,.0f} POSTs/s, {s.statements_per_s:,.0f} "
            f"statements/s accepted, {s.evaluated_per_s:,.0f}/s evaluated ({s.bad} not 2xx, "
            f"{s.limited} rate limited{', requests ran out' if s.exhausted else ''}; load "
            f"{s.load[0]:.1f} -> {s.load[1]:.1f})"
        )
        if stream:
            a = xapi_load(
                1, int(args.seconds * args.single_cap), args.connections, args.seconds, True
            )
            results.single_apart.append(a)
            log(
                f"run {attempt} single, consumer paused during the run: "
                f"{a.statements_per_s:,.0f} statements/s accepted; then stored and evaluated "
                f"at {a.evaluated_per_s:,.0f}/s ({a.bad} not 2xx; load {a.load[0]:.1f} -> "
                f"{a.load[1]:.1f})"
            )
        b = xapi_load(
            args.batch, int(args.seconds * args.batch_cap), args.batch_connections, args.seconds
        )
        results.batch.append(b)
        log(
            f"run {attempt} batches of {args.batch}: {b.requests_per_s:,.1f} POSTs/s, "
            f"{b.statements_per_s:,.0f} statements/s accepted, {b.evaluated_per_s:,.0f}/s "
            f"evaluated ({b.bad} not 2xx{', requests ran out' if b.exhausted else ''}; load "
            f"{b.load[0]:.1f} -> {b.load[1]:.1f})"
        )
    if not args.no_vacuum:
        # The throughput runs inserted rows at a rate no course sends (hundreds of thousands
        # in a minute); let PostgreSQL digest them (what autovacuum would do over the next
        # minutes) so that the latency runs measure the steady state, not that aftermath.
        log("VACUUM ANALYZE after the throughput runs")
        with psycopg.connect(plain_dsn(world.settings.database_url), autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
    for attempt in range(1, args.runs + 1):
        lat = latency_run(world, port, args)
        results.latency.append(lat)
        s = lat.summary()
        log(
            f"run {attempt} event -> offer: p50 {s['p50_ms']} ms p99 {s['p99_ms']} ms max "
            f"{s['max_ms']} ms ({s['samples']} samples, {s['missing']} missing, {s['errors']} "
            f"errors); POST answered p50 {s['post_p50_ms']} ms p99 {s['post_p99_ms']} ms; "
            f"p50 split {s['p50_split_ms']}, p99 split {s['p99_split_ms']}"
        )
    results.offers = world.offers()
    if server.poll() is not None:
        raise RuntimeError("lifeline serve died during the run")


def report(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": results.machine, "settings": vars(args).copy()}
    out["settings"].pop("json", None)
    out["settings"]["json"] = str(args.json) if args.json else None
    m = results.machine
    ref = median([r.requests_per_s for r in results.reference])
    single = median([r.statements_per_s for r in results.single])
    single_eval = median([r.evaluated_per_s for r in results.single])
    batch = median([r.statements_per_s for r in results.batch])
    batch_eval = median([r.evaluated_per_s for r in results.batch])
    p50 = median([percentile(r.delays, 50) * 1000 for r in results.latency])
    p99 = median([percentile(r.delays, 99) * 1000 for r in results.latency])
    missing = sum(r.missing for r in results.latency)
    ratio = single / ref if ref else float("nan")
    ratio_eval = single_eval / ref if ref else float("nan")
    loads = [x for r in results.reference + results.single + results.batch for x in r.load]
    met = {
        "single_accepted_ge_75pct_reference": bool(ratio >= 0.75),
        "single_evaluated_ge_75pct_reference": bool(ratio_eval >= 0.75),
        "batch_accepted_ge_10000_per_s": bool(batch >= 10_000),
        "batch_evaluated_ge_10000_per_s": bool(batch_eval >= 10_000),
        "event_to_offer_p99_lt_50ms": bool(p99 < 50 and not missing),
    }

    def runs(values: list[float], spec: str = ",.0f") -> str:
        return ", ".join(format(v, spec) for v in values)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print()
    print(f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}")
    print(
        f"lifeline serve: {args.workers} gevent workers x {args.worker_connections} connections;"
        f" ingest mode {args.ingest_mode}, {args.partitions} partitions; {RULES} rules;"
        f" {args.runs} runs of {args.seconds:g} s;"
        f" wrk {args.client_threads} threads; load average during the runs "
        f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f}"
    )
    print(
        f"  reference (bare Flask + 1 Redis INCR), {args.connections} conns: {ref:,.0f} req/s "
        f"(runs {runs([r.requests_per_s for r in results.reference])})"
    )
    print(
        f"  single statements, {args.connections} conns: accepted {single:,.0f}/s (runs "
        f"{runs([r.statements_per_s for r in results.single])}) = {ratio:.0%} of the reference"
        f" -> {verdict(met['single_accepted_ge_75pct_reference'])}; evaluated "
        f"{single_eval:,.0f}/s (runs {runs([r.evaluated_per_s for r in results.single])}) = "
        f"{ratio_eval:.0%} -> {verdict(met['single_evaluated_ge_75pct_reference'])}"
    )
    print(
        f"  batches of {args.batch}, {args.batch_connections} conns: accepted {batch:,.0f}/s "
        f"(runs {runs([r.statements_per_s for r in results.batch])}) -> "
        f"{verdict(met['batch_accepted_ge_10000_per_s'])}; evaluated {batch_eval:,.0f}/s "
        f"(runs {runs([r.evaluated_per_s for r in results.batch])}) -> "
        f"{verdict(met['batch_evaluated_ge_10000_per_s'])} (target >= 10,000/s)"
    )
    print(
        f"  event -> offer on the page ({args.events} events per run): p50 {p50:.1f} ms, p99 "
        f"{p99:.1f} ms (runs p50/p99 "
        + ", ".join(
            f"{percentile(r.delays, 50) * 1000:.1f}/{percentile(r.delays, 99) * 1000:.1f}"
            for r in results.latency
        )
        + f"; {missing} missing) -> target p99 < 50 ms: "
        f"{verdict(met['event_to_offer_p99_lt_50ms'])}"
    )
    print(f"  offers made in the run: {results.offers}")

    def cpu_line(label: str, loads: list[LoadRun], per: Callable[[LoadRun], int]) -> None:
        if not loads or not loads[0].cpu:
            return
        names = sorted(loads[0].cpu)
        share = {
            n: median([r.cpu.get(n, 0.0) / max(per(r), 1) * 1000 * 1000 for r in loads])
            for n in names
        }
        print(
            f"  CPU ms per 1,000 {label}: "
            + ", ".join(f"{n} {share[n]:,.0f}" for n in names if share[n] >= 0.5)
        )

    if results.single_apart:
        apart = median([r.statements_per_s for r in results.single_apart])
        catch_up = median([r.evaluated_per_s for r in results.single_apart])
        print(
            f"  single statements with the consumer paused during the run (its own host): "
            f"accepted {apart:,.0f}/s (runs "
            f"{runs([r.statements_per_s for r in results.single_apart])}) = "
            f"{apart / ref if ref else float('nan'):.0%} of the reference; then stored and "
            f"evaluated by the consumer alone at {catch_up:,.0f}/s (runs "
            f"{runs([r.evaluated_per_s for r in results.single_apart])})"
        )
        out["single_apart_statements_per_s"] = round(apart, 1)
        out["single_apart_ratio"] = round(apart / ref, 3) if ref else None
        out["single_apart_catch_up_per_s"] = round(catch_up, 1)
        out["single_apart_runs"] = [r.summary() for r in results.single_apart]
    cpu_line("reference requests", results.reference, lambda r: r.ok)
    cpu_line("single statements", results.single, lambda r: r.statements)
    cpu_line("batched statements", results.batch, lambda r: r.statements)
    out.update(
        {
            "reference_requests_per_s": round(ref, 1),
            "single_statements_per_s": round(single, 1),
            "single_evaluated_per_s": round(single_eval, 1),
            "single_ratio": round(ratio, 3),
            "single_evaluated_ratio": round(ratio_eval, 3),
            "batch_statements_per_s": round(batch, 1),
            "batch_evaluated_per_s": round(batch_eval, 1),
            "event_to_offer_p50_ms": round(p50, 2),
            "event_to_offer_p99_ms": round(p99, 2),
            "targets_met": met,
            "offers": results.offers,
            "reference_runs": [r.summary() for r in results.reference],
            "single_runs": [r.summary() for r in results.single],
            "batch_runs": [r.summary() for r in results.batch],
            "latency_runs": [r.summary() for r in results.latency],
        }
    )
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="repeats of each measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--connections", type=int, default=16, help="single / reference")
    parser.add_argument("--batch", type=int, default=500, help="statements per batch POST")
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--client-threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--single-cap", type=int, default=2500, help="single POSTs prepared per second of run"
    )
    parser.add_argument(
        "--batch-cap", type=int, default=60, help="batch POSTs prepared per second of run"
    )
    parser.add_argument("--learners", type=int, default=500, help="learners in the load")
    parser.add_argument("--events", type=int, default=100, help="event -> offer per run")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--timeout", type=float, default=5.0, help="per event")
    parser.add_argument("--workers", type=int, default=2, help="lifeline serve --workers")
    parser.add_argument(
        "--partitions", type=int, default=2, help="LIFELINE_INGEST_PARTITIONS (consumers)"
    )
    parser.add_argument("--worker-connections", type=int, default=1000)
    parser.add_argument(
        "--ingest-mode",
        choices=("stream", "sync"),
        default="stream",
        help="stream: accepted into Redis, stored by `lifeline worker`; sync: in the request",
    )
    parser.add_argument("--drain-timeout", type=float, default=120, help="consumer catch-up")
    parser.add_argument(
        "--no-vacuum", action="store_true", help="no VACUUM ANALYZE before the latency runs"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--max-seconds", type=int, default=600, help="abort the run after this")
    parser.add_argument("--lock-wait", type=float, default=300, help="wait for another bench")
    parser.add_argument(
        "--no-lock", action="store_true", help="run beside another benchmark (figures disturbed)"
    )
    parser.add_argument("--serve-reference", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_reference:
        serve_reference(args.serve_reference, args.redis_url, args.workers, args.worker_connections)
        return 0
    if args.runs < 1 or args.events < 1 or not 1 <= args.batch <= 500:
        raise SystemExit("--runs and --events must be positive, --batch 1..500")

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    lock = os.open(os.devnull, os.O_RDONLY) if args.no_lock else acquire_run_lock(args.lock_wait)
    signal.alarm(args.max_seconds)
    cleanup = Cleanup()
    results = Results(machine())
    failed = False
    try:
        run(args, cleanup, results)
    except KeyboardInterrupt as exc:
        failed = True
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); cleaning up", file=sys.stderr)
    except Exception:
        failed = True
        traceback.print_exc()
    finally:
        cleanup.run()
        os.close(lock)
    if not results.latency:
        return 1
    summary = report(args, results)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
