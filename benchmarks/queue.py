"""Help queue benchmark: live delivery to tutor dashboards, and claims under contention.

Run with ``make bench-queue`` (or ``.venv/bin/python benchmarks/queue.py --help``). It creates
its own PostgreSQL database (dropped at the end) and starts its own redis-server on a spare
port (pub/sub channels ignore Redis database numbers, so a shared server would mix our events
with other runs'), runs ``lifeline db upgrade`` and ``lifeline serve`` (gunicorn, Lifeline's
gevent worker), and measures, on 127.0.0.1:

  (1) delivery: a learner's request is committed by ``help.operations.request_help`` in this
      process (the domain function and a commit, as the learner view does; the bus publishes
      after the commit); the time from the commit returning to the event's ``id:`` line read
      on each of N open tutor dashboards (``GET /tutor/events``, one tutor and one HTTP
      connection per stream, every tutor in the request's pool), p50 / p99 over every
      (stream, event) pair. Beside it, in the same client: a bare Redis PUBLISH to N raw
      subscriber connections, PUBLISH sent -> message read, p50 / p99.
  (2) claims: C contenders (processes x threads) race to claim the same queued requests with
      ``help.operations.claim`` (its conditional UPDATE) against PostgreSQL, each attempt a
      session of its own as a web request has (tutor, pools, claim, commit / rollback); every
      winner counted per request: exactly one each, or the run fails. Beside it, with the same
      contenders and the same rendezvous: a bare conditional UPDATE with psycopg.

The client shares the machine with the server: its own parsing is part of the latency, and the
Redis reference (same client, same number of connections) shows how much. Every loop is bounded
in count and time, the whole run by --max-seconds; servers, child processes, the database and
the redis-server are cleaned up on error and on Ctrl-C.
"""

from __future__ import annotations

import os
import sys

# This file is called queue.py: its folder must not shadow the standard library's ``queue``
# (which redis, SQLAlchemy and Lifeline import) when it is run as a script.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import selectors  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
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
DB_NAME = os.environ.get("LIFELINE_BENCH_QUEUE_DB", "lifeline_bench_queue")
QUESTION = "My recursive function never reaches the base case, why? (benchmark)"
REF_CHANNEL = "bench:reference"
SSE_ID = re.compile(rb"id: (\d+)\n")
REF_ID = re.compile(rb"ref-id:(\d+);")


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
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir), "--logfile", str(workdir / "redis.log")]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cleanup.add("stop redis-server", lambda: stop_process_group(proc))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(host=HOST, port=port, socket_timeout=1).ping():
                return f"redis://{HOST}:{port}/0"
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the benchmark's redis-server did not start")


def start_server(
    cleanup: Cleanup, argv: list[str], env: dict[str, str], port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )

    def stop() -> None:
        stop_process_group(proc)
        out.close()

    cleanup.add("stop lifeline serve", stop)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lifeline serve exited early:\n{log_path.read_text()}")
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
    raise RuntimeError(f"lifeline serve did not answer within 60 s; see {log_path}")


def acquire_run_lock(wait: float) -> int:
    """One benchmark at a time on this machine (the lock benchmarks/launch.py takes too)."""
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


# -- the people and the data (written in this process, through the app's own handles) -------


class World:
    """One course and its pool; tutors in it; learners who ask. Writes go through the app's
    database handle, so commits publish on the bus exactly as in production."""

    def __init__(self, env: dict[str, str]) -> None:
        from lti_tool import create_app
        from lti_tool.config import settings_from_env

        saved = dict(os.environ)
        os.environ.update(env)
        try:
            self.settings = settings_from_env()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.app = create_app(self.settings)
        self.db = self.app.extensions["lifeline"].db
        self.learners: list[int] = []
        self._next_learner = 0
        from lti_tool.lti.registry import add_platform

        with self.db.transaction() as session:
            lms = add_platform(
                session,
                name="Queue bench LMS",
                issuer="https://lms.queue-bench.example",
                client_id="queue-bench",
                auth_login_url="https://lms.queue-bench.example/auth",
                auth_token_url="https://lms.queue-bench.example/token",
                keyset_url="https://lms.queue-bench.example/jwks.json",
                deployment_ids=["bench"],
            )
            session.flush()
            self.platform_id = lms.id
        self.course_id, self.pool_id = self.course("bench-course")

    def course(self, context_id: str) -> tuple[int, int]:
        from lti_tool.courses import Course
        from lti_tool.tutors import operations as tutor_ops

        with self.db.transaction() as session:
            course = Course(
                platform_id=self.platform_id,
                deployment_id="bench",
                context_id=context_id,
                title=f"Course {context_id}",
            )
            session.add(course)
            session.flush()
            return course.id, tutor_ops.ensure_course_pool(session, course).id

    def tutors(self, count: int, pool_id: int, capacity: int = 1) -> list[int]:
        from lti_tool.tutors.models import PoolMember, Tutor

        with self.db.transaction() as session:
            made = [Tutor(display_name=f"Tutor {i:04d}", capacity=capacity) for i in range(count)]
            session.add_all(made)
            session.flush()
            session.add_all(PoolMember(tutor_id=t.id, pool_id=pool_id) for t in made)
            return [t.id for t in made]

    def add_learners(self, count: int) -> list[int]:
        from lti_tool.courses import Person

        with self.db.transaction() as session:
            start = len(self.learners)
            made = [
                Person(platform_id=self.platform_id, sub=f"learner-{start + i}", name="Learner")
                for i in range(count)
            ]
            session.add_all(made)
            session.flush()
            ids = [p.id for p in made]
        self.learners.extend(ids)
        return ids

    def cookie(self, tutor_id: int) -> str:
        """Signed in the way the app signs a tutor in (the session key 'tutor_id')."""
        client = self.app.test_client()
        with client.session_transaction() as session:
            session["tutor_id"] = tutor_id
        cookie = client.get_cookie("lifeline_session")
        assert cookie is not None
        return cookie.value

    def ask(self, course_id: int | None = None) -> tuple[int, float]:
        """A learner asks for help: request_help and a commit (the bus publishes after it).
        Returns the event id and the moment the commit returned (perf_counter)."""
        from sqlalchemy import func, select

        from lti_tool.courses import Course, Person
        from lti_tool.help import operations as help_ops
        from lti_tool.help.models import HelpEvent

        if self._next_learner >= len(self.learners):
            self.add_learners(200)
        learner_id = self.learners[self._next_learner]
        self._next_learner += 1
        session = self.db.sessionmaker()
        try:
            learner = session.get(Person, learner_id)
            course = session.get(Course, course_id or self.course_id)
            assert learner is not None and course is not None
            request, created = help_ops.request_help(
                session,
                learner=learner,
                course=course,
                exercise_id=None,
                new=help_ops.NewRequest(QUESTION),
            )
            assert created
            event_id = session.scalar(
                select(func.max(HelpEvent.id)).where(HelpEvent.request_id == request.id)
            )
            session.commit()
            done = time.perf_counter()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
        assert isinstance(event_id, int)
        return event_id, done

    def queued_requests(self, count: int, course_id: int) -> list[int]:
        """``count`` queued requests of new learners (request_help, 250 per transaction)."""
        from lti_tool.courses import Course, Person
        from lti_tool.help import operations as help_ops

        learners = self.add_learners(count)
        ids: list[int] = []
        for start in range(0, count, 250):
            with self.db.transaction() as session:
                course = session.get(Course, course_id)
                assert course is not None
                for learner_id in learners[start : start + 250]:
                    learner = session.get(Person, learner_id)
                    assert learner is not None
                    request, created = help_ops.request_help(
                        session,
                        learner=learner,
                        course=course,
                        exercise_id=None,
                        new=help_ops.NewRequest(QUESTION),
                    )
                    assert created
                    ids.append(request.id)
        return ids


# -- the fan-out client: N connections, one selector, arrival time per connection per id ----


class FanOut:
    """Many connections on non-blocking sockets read from one thread through a selector.
    ``ready`` marks a connection once ``ready_marker`` arrived (SSE: the retry line; Redis: the
    subscribe confirmation); afterwards every id matched by ``pattern`` is timestamped when
    the bytes carrying it were read."""

    def __init__(self, pattern: re.Pattern[bytes], ready_marker: bytes) -> None:
        self.pattern = pattern
        self.ready_marker = ready_marker
        self.selector = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.buffers: list[bytearray] = []
        self.heads: list[bytes] = []  # the first bytes of each connection (status line)
        self.ready: list[bool] = []
        self.eof: set[int] = set()
        self.arrivals: dict[int, list[float]] = collections.defaultdict(list)

    def open(self, port: int, first: bytes) -> None:
        sock = socket.create_connection((HOST, port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(first)
        sock.setblocking(False)
        self.selector.register(sock, selectors.EVENT_READ, len(self.socks))
        self.socks.append(sock)
        self.buffers.append(bytearray())
        self.heads.append(b"")
        self.ready.append(False)

    def pump(self, timeout: float) -> None:
        """One round: read whatever the ready connections have."""
        for key, _ in self.selector.select(timeout=max(0.0, timeout)):
            index: int = key.data
            sock = self.socks[index]
            try:
                chunk = sock.recv(262144)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            now = time.perf_counter()
            if not chunk:
                self.eof.add(index)
                self.selector.unregister(sock)
                continue
            buf = self.buffers[index]
            buf += chunk
            if not self.ready[index]:
                if len(self.heads[index]) < 64:
                    self.heads[index] = bytes(buf[:64])
                at = buf.find(self.ready_marker)
                if at < 0:
                    continue
                self.ready[index] = True
                del buf[: at + len(self.ready_marker)]
            end = 0
            for match in self.pattern.finditer(buf):
                self.arrivals[int(match.group(1))].append(now)
                end = match.end()
            if end:
                del buf[:end]
            elif len(buf) > 65536:
                del buf[:-256]

    def wait_ready(self, timeout: float) -> int:
        deadline = time.perf_counter() + timeout
        while (now := time.perf_counter()) < deadline:
            if sum(self.ready) + len(self.eof) >= len(self.socks):
                break
            self.pump(min(0.2, deadline - now))
        return sum(self.ready)

    def drain(self, seconds: float) -> None:
        deadline = time.perf_counter() + seconds
        while (now := time.perf_counter()) < deadline:
            self.pump(deadline - now)

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                # A reset, not a FIN: the server's next write fails at once and the stream ends.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(sock)
            sock.close()
        self.selector.close()


@dataclass
class DeliveryRun:
    streams: int
    connected: int
    connect_seconds: float
    events: int
    delays: list[float] = field(default_factory=list)  # seconds, every (stream, event) pair
    missing: int = 0  # (stream, event) pairs that did not arrive within the timeout
    commit_ms: list[float] = field(default_factory=list)  # lifeline only
    # Where the time goes, per event: to the first stream (the pipeline: publish, the hub's
    # read, one stream's write, the client), and from the first to the last (the fan-out).
    firsts: list[float] = field(default_factory=list)
    spreads: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "connected": self.connected,
            "connect_s": round(self.connect_seconds, 2),
            "events": self.events,
            "samples": len(self.delays),
            "missing": self.missing,
            "p50_ms": round(percentile(self.delays, 50) * 1000, 2),
            "p99_ms": round(percentile(self.delays, 99) * 1000, 2),
            "max_ms": round(max(self.delays, default=float("nan")) * 1000, 2),
            "first_p50_ms": round(median(self.firsts) * 1000, 2),
            "first_max_ms": round(max(self.firsts, default=float("nan")) * 1000, 2),
            "spread_p50_ms": round(median(self.spreads) * 1000, 2),
            "spread_max_ms": round(max(self.spreads, default=float("nan")) * 1000, 2),
            "commit_p50_ms": round(median(self.commit_ms), 2) if self.commit_ms else None,
        }


def measure_fanout(
    fan: FanOut,
    run: DeliveryRun,
    make_event: Callable[[], tuple[int, float]],
    warmup: int,
    gap: float,
    timeout: float,
) -> None:
    """``warmup`` + ``run.events`` events, ``gap`` seconds apart; each must reach every
    connection within ``timeout`` (else it counts as missing)."""
    n = run.connected
    for i in range(warmup + run.events):
        event_id, t0 = make_event()
        deadline = t0 + timeout
        got = fan.arrivals[event_id]
        while len(got) < n and (now := time.perf_counter()) < deadline:
            fan.pump(min(0.05, deadline - now))
        fan.arrivals.pop(event_id, None)
        if i >= warmup:
            run.delays.extend(t - t0 for t in got)
            run.missing += n - len(got)
            if got:
                run.firsts.append(min(got) - t0)
                run.spreads.append(max(got) - min(got))
        fan.drain(t0 + gap - time.perf_counter())


def lifeline_delivery(
    world: World, port: int, cookies: list[str], args: argparse.Namespace
) -> DeliveryRun:
    fan = FanOut(SSE_ID, b"retry: 3000\n\n")
    try:
        started = time.perf_counter()
        for cookie in cookies:
            fan.open(
                port,
                (
                    f"GET /tutor/events HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                    f"Accept: text/event-stream\r\nCookie: lifeline_session={cookie}\r\n\r\n"
                ).encode(),
            )
            fan.pump(0)
        connected = fan.wait_ready(60)
        run = DeliveryRun(len(cookies), connected, time.perf_counter() - started, args.events)
        bad = [h for h, ok in zip(fan.heads, fan.ready, strict=True) if not ok]
        if connected < len(cookies):
            raise RuntimeError(f"{len(cookies) - connected} streams did not open: {bad[:3]}")
        if not all(h.startswith(b"HTTP/1.1 200") for h in fan.heads):
            raise RuntimeError(f"a stream was refused: {fan.heads[:3]}")
        fan.drain(0.5)

        def make_event() -> tuple[int, float]:
            started = time.perf_counter()
            event_id, done = world.ask()
            run.commit_ms.append((done - started) * 1000)
            return event_id, done

        measure_fanout(fan, run, make_event, args.warmup, args.gap, args.timeout)
        run.commit_ms = run.commit_ms[args.warmup :]
    finally:
        fan.close()
    # The server notices the resets on its next write to those streams: two unmeasured events
    # make sure no dead stream is left subscribed for the next run.
    for _ in range(2):
        world.ask()
        time.sleep(0.25)
    return run


def redis_reference(redis_url: str, count: int, args: argparse.Namespace) -> DeliveryRun:
    client = redis.Redis.from_url(redis_url)
    port = client.connection_pool.connection_kwargs["port"]
    channel = REF_CHANNEL.encode()
    subscribe = b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(channel), channel)
    fan = FanOut(REF_ID, b"$9\r\nsubscribe\r\n")
    try:
        started = time.perf_counter()
        for _ in range(count):
            fan.open(port, subscribe)
            fan.pump(0)
        connected = fan.wait_ready(60)
        if connected < count:
            raise RuntimeError(f"{count - connected} Redis subscribers did not subscribe")
        run = DeliveryRun(count, connected, time.perf_counter() - started, args.events)
        fan.drain(0.2)
        # About the size of a request.created event as the hub reads it.
        padding = "x" * 300
        sequence = iter(range(1, 1_000_000))

        def make_event() -> tuple[int, float]:
            ref_id = next(sequence)
            t0 = time.perf_counter()
            client.publish(REF_CHANNEL, f"ref-id:{ref_id};{padding}")
            return ref_id, t0

        measure_fanout(fan, run, make_event, args.warmup, args.gap, args.timeout)
        return run
    finally:
        fan.close()
        client.close()


# -- claims under contention ---------------------------------------------------------------


@dataclass
class ClaimJob:
    mode: str  # "domain" or "bare"
    database_url: str
    redis_url: str
    tutor_ids: list[int]  # one per thread of this process
    request_ids: list[int]  # every contender tries every one, in this order
    sync_every: int  # all contenders meet before every this many requests
    timeout: float


def _claim_thread(
    job: ClaimJob,
    tutor_id: int,
    barrier: threading.Barrier,
    attempt: Callable[[int, int], bool],
    out: dict[str, Any],
) -> None:
    won: list[int] = []
    lost = 0
    errors: list[str] = []
    error_count = 0
    try:
        for index, request_id in enumerate(job.request_ids):
            if index % job.sync_every == 0:
                barrier.wait(job.timeout)
            try:
                if attempt(tutor_id, request_id):
                    won.append(request_id)
                else:
                    lost += 1
            except Exception as exc:
                error_count += 1
                if len(errors) < 5:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
    except threading.BrokenBarrierError:
        errors.append("the rendezvous broke (another contender failed or timed out)")
        error_count += 1
    out.update(won=won, lost=lost, errors=errors, error_count=error_count)


def _claim_process(
    job: ClaimJob, meet: Any, go: Any, conn: Any
) -> None:  # in a forked child process
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.alarm(0)
    try:
        attempt, close = _attempt_function(job)
        threads_done: list[dict[str, Any]] = [{} for _ in job.tutor_ids]
        barrier = threading.Barrier(len(job.tutor_ids), action=lambda: meet.wait(job.timeout))
        threads = [
            threading.Thread(
                target=_claim_thread,
                args=(job, tutor_id, barrier, attempt, threads_done[i]),
                daemon=True,
            )
            for i, tutor_id in enumerate(job.tutor_ids)
        ]
        conn.send({"ready": True})
        if not go.wait(60):
            raise RuntimeError("no start signal")
        started = time.monotonic()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + job.timeout * 20
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            barrier.abort()
            raise RuntimeError("contender threads did not finish in time")
        close()
        conn.send(
            {
                "started": started,
                "ended": time.monotonic(),
                "won": [r for d in threads_done for r in d.get("won", [])],
                "won_by": [
                    (tid, d.get("won", []))
                    for tid, d in zip(job.tutor_ids, threads_done, strict=True)
                ],
                "lost": sum(d.get("lost", 0) for d in threads_done),
                "errors": [e for d in threads_done for e in d.get("errors", [])][:10],
                "error_count": sum(d.get("error_count", 0) for d in threads_done),
            }
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            conn.send({"fatal": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"})
        with contextlib.suppress(Exception):
            meet.abort()
    finally:
        conn.close()


def _attempt_function(job: ClaimJob) -> tuple[Callable[[int, int], bool], Callable[[], None]]:
    """The attempt each contender makes, with its connections opened before the clock starts
    (the pool of a web worker that has been up for a while is warm too)."""
    if job.mode == "bare":
        connections = {
            tutor_id: psycopg.connect(plain_dsn(job.database_url), autocommit=True)
            for tutor_id in job.tutor_ids
        }

        def bare(tutor_id: int, request_id: int) -> bool:
            cur = connections[tutor_id].execute(
                "UPDATE claim_ref SET holder = %s WHERE id = %s AND holder IS NULL",
                (tutor_id, request_id),
            )
            return cur.rowcount == 1

        def close_bare() -> None:
            for conn in connections.values():
                conn.close()

        return bare, close_bare

    from lti_tool.bus import attach_publisher, make_redis
    from lti_tool.db import Database
    from lti_tool.help import operations as help_ops
    from lti_tool.tutors.models import Tutor
    from lti_tool.tutors.operations import tutor_pool_ids

    database = Database(job.database_url)  # the web tier's engine: pool 10 + 20 overflow
    publisher = make_redis(job.redis_url)
    attach_publisher(database.sessionmaker, publisher)
    warm = [database.engine.connect() for _ in job.tutor_ids]
    for conn in warm:
        conn.close()
    publisher.ping()

    def domain(tutor_id: int, request_id: int) -> bool:
        # What POST /tutor/requests/<id>/claim does with its session: who is asking, their
        # pools, the claim, and a commit (which publishes the event) or a rollback.
        session = database.sessionmaker()
        try:
            tutor = session.get(Tutor, tutor_id)
            assert tutor is not None
            help_ops.claim(session, request_id, tutor, tutor_pool_ids(session, tutor_id))
            session.commit()
            return True
        except help_ops.HelpError:
            session.rollback()
            return False
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def close_domain() -> None:
        database.dispose()
        publisher.close()

    return domain, close_domain


@dataclass
class ClaimRun:
    mode: str
    requests: int
    contenders: int
    seconds: float
    attempts: int
    wins: int
    double_claims: int  # requests with more than one winner
    unclaimed: int  # requests with no winner
    errors: int
    error_samples: list[str]
    db_check: str

    @property
    def attempts_per_s(self) -> float:
        return self.attempts / self.seconds if self.seconds else float("nan")

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "requests": self.requests,
            "contenders": self.contenders,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 2),
            "attempts_per_s": round(self.attempts_per_s, 1),
            "requests_per_s": round(self.requests_per_s, 1),
            "wins": self.wins,
            "double_claims": self.double_claims,
            "unclaimed": self.unclaimed,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "db_check": self.db_check,
        }


def run_claims(
    mode: str,
    database_url: str,
    redis_url: str,
    tutor_ids: list[int],
    request_ids: list[int],
    args: argparse.Namespace,
    children: list[Any],
) -> ClaimRun:
    context = multiprocessing.get_context("fork")
    procs = max(1, min(args.claim_procs, len(tutor_ids)))
    groups = [tutor_ids[i::procs] for i in range(procs)]
    meet = context.Barrier(procs)
    go = context.Event()
    pipes = []
    for group in groups:
        job = ClaimJob(
            mode, database_url, redis_url, group, request_ids, args.sync_every, args.claim_timeout
        )
        parent_end, child_end = context.Pipe(duplex=False)
        proc = context.Process(target=_claim_process, args=(job, meet, go, child_end), daemon=True)
        proc.start()
        children.append(proc)
        child_end.close()
        pipes.append(parent_end)
    finished = False
    try:
        for pipe in pipes:
            if not pipe.poll(60):
                raise RuntimeError("a contender process did not get ready")
            message = pipe.recv()
            if "fatal" in message:
                raise RuntimeError(message["fatal"])
        go.set()
        results = []
        deadline = time.monotonic() + args.claim_timeout * 25
        for pipe in pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError("contenders did not finish in time")
            message = pipe.recv()
            if "fatal" in message:
                raise RuntimeError(message["fatal"])
            results.append(message)
        finished = True
    finally:
        for proc in list(children):
            if not finished:  # interrupted or failed: do not wait for the rest of the race
                proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            children.remove(proc)
    seconds = max(r["ended"] for r in results) - min(r["started"] for r in results)
    winners = collections.Counter(r_id for r in results for r_id in r["won"])
    holder = {r_id: tid for r in results for tid, won in r["won_by"] for r_id in won}
    wins = sum(winners.values())
    errors = sum(r["error_count"] for r in results)
    return ClaimRun(
        mode=mode,
        requests=len(request_ids),
        contenders=len(tutor_ids),
        seconds=seconds,
        attempts=wins + sum(r["lost"] for r in results) + errors,
        wins=wins,
        double_claims=sum(1 for c in winners.values() if c > 1),
        unclaimed=sum(1 for r_id in request_ids if winners[r_id] == 0),
        errors=errors,
        error_samples=[e for r in results for e in r["errors"]][:5],
        db_check=check_claims_in_database(mode, database_url, request_ids, holder),
    )


def check_claims_in_database(
    mode: str, database_url: str, request_ids: list[int], holder: dict[int, int]
) -> str:
    """The database agrees with the winners the contenders reported: one holder each, the
    one that was told it won (and, for the domain claim, exactly one request.claimed event)."""
    with psycopg.connect(plain_dsn(database_url)) as conn:
        if mode == "bare":
            rows = conn.execute(
                "SELECT id, holder FROM claim_ref WHERE id = ANY(%s)", (request_ids,)
            ).fetchall()
            wrong = [r for r in rows if r[1] is None or holder.get(r[0]) != r[1]]
            return "ok" if not wrong and len(rows) == len(request_ids) else f"{len(wrong)} wrong"
        rows = conn.execute(
            "SELECT id, status, tutor_id FROM help_requests WHERE id = ANY(%s)", (request_ids,)
        ).fetchall()
        wrong = [r for r in rows if r[1] != "claimed" or holder.get(r[0]) != r[2]]
        events = conn.execute(
            "SELECT request_id, count(*) FROM help_events WHERE kind = 'request.claimed' "
            "AND request_id = ANY(%s) GROUP BY request_id",
            (request_ids,),
        ).fetchall()
        not_one = len(request_ids) - sum(1 for _, c in events if c == 1)
        if wrong or not_one or len(rows) != len(request_ids):
            return f"{len(wrong)} requests disagree, {not_one} without exactly one claim event"
        return "ok"


def prepare_bare_table(database_url: str, count: int) -> list[int]:
    with psycopg.connect(plain_dsn(database_url), autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS claim_ref (id bigint PRIMARY KEY, holder integer)")
        conn.execute("TRUNCATE claim_ref")
        conn.execute(
            "INSERT INTO claim_ref (id) SELECT g FROM generate_series(1, %s) AS g", (count,)
        )
        conn.execute("VACUUM ANALYZE claim_ref")
    return list(range(1, count + 1))


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    machine: dict[str, Any]
    delivery: dict[int, list[DeliveryRun]] = field(default_factory=dict)
    reference: dict[int, list[DeliveryRun]] = field(default_factory=dict)
    claims: list[ClaimRun] = field(default_factory=list)
    bare: list[ClaimRun] = field(default_factory=list)


def run(args: argparse.Namespace, cleanup: Cleanup, results: Results) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-bench-queue-"))
    cleanup.add("remove work dir", lambda: shutil.rmtree(workdir, ignore_errors=True))
    redis_url = start_redis(cleanup, workdir)
    log(f"own redis-server at {redis_url}; creating database {DB_NAME}")
    cleanup.add("drop database", drop_database)
    database_url = create_database()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_")}
    env.update(
        {
            "LIFELINE_DATABASE_URL": database_url,
            "LIFELINE_REDIS_URL": redis_url,
            "LIFELINE_SECRET_KEY": secrets.token_hex(32),
            "LIFELINE_BASE_URL": f"http://{HOST}:{port}",
            "LIFELINE_INSTANCE_PATH": str(workdir / "instance"),
        }
    )
    log("lifeline db upgrade")
    lifeline(env, "db", "upgrade")
    world = World(env)
    cleanup.add("close the bench's database handle", world.db.dispose)

    if not args.skip_delivery:
        sizes = sorted(set(args.dashboards))
        tutors = world.tutors(max(sizes), world.pool_id)
        cookies = [world.cookie(t) for t in tutors]
        world.add_learners((args.warmup + args.events + 2) * args.runs * len(sizes) * 2 + 50)
        serve = [str(BIN / "lifeline"), "serve", "--host", HOST, "--port", str(port)]
        serve += ["--workers", str(args.workers)]
        serve += ["--worker-connections", str(args.worker_connections)]
        log("starting " + " ".join(serve[1:]))
        server = start_server(cleanup, serve, env, port, workdir / "serve.log")
        head = (workdir / "serve.log").read_text()
        if "Using worker: LifelineWorker" not in head:
            raise RuntimeError(f"lifeline serve did not use its gevent worker:\n{head}")
        # Warm up: the hub starts, the pools fill.
        for _ in range(3):
            world.ask()
        for size in sizes:
            for attempt in range(1, args.runs + 1):
                lrun = lifeline_delivery(world, port, cookies[:size], args)
                results.delivery.setdefault(size, []).append(lrun)
                s = lrun.summary()
                log(
                    f"lifeline {size} dashboards run {attempt}: p50 {s['p50_ms']} ms p99 "
                    f"{s['p99_ms']} ms max {s['max_ms']} ms ({s['samples']} samples, "
                    f"{s['missing']} missing; connected in {s['connect_s']} s; commit p50 "
                    f"{s['commit_p50_ms']} ms); first stream p50 {s['first_p50_ms']} max "
                    f"{s['first_max_ms']} ms, first to last p50 {s['spread_p50_ms']} max "
                    f"{s['spread_max_ms']} ms"
                )
                rrun = redis_reference(redis_url, size, args)
                results.reference.setdefault(size, []).append(rrun)
                r = rrun.summary()
                log(
                    f"redis PUBLISH {size} subscribers run {attempt}: p50 {r['p50_ms']} ms p99 "
                    f"{r['p99_ms']} ms max {r['max_ms']} ms ({r['missing']} missing); first "
                    f"p50 {r['first_p50_ms']} ms, first to last p50 {r['spread_p50_ms']} ms"
                )
        if server.poll() is not None:
            raise RuntimeError("lifeline serve died during the run")
        stop_process_group(server)  # the claims measure the database, not the web tier

    if not args.skip_claims:
        children: list[Any] = []

        def stop_children() -> None:
            for proc in children:
                if proc.is_alive():
                    proc.terminate()
                proc.join(5)

        cleanup.add("stop contender processes", stop_children)
        for attempt in range(1, args.runs + 1):
            course_id, pool_id = world.course(f"claims-{attempt}")
            contenders = world.tutors(args.contenders, pool_id, capacity=10**6)
            started = time.monotonic()
            request_ids = world.queued_requests(args.claim_requests, course_id)
            log(
                f"claims run {attempt}: {len(request_ids)} requests queued in "
                f"{time.monotonic() - started:.1f} s; {args.contenders} contenders racing"
            )
            crun = run_claims(
                "domain", database_url, redis_url, contenders, request_ids, args, children
            )
            results.claims.append(crun)
            c = crun.summary()
            log(
                f"claims run {attempt}: {c['attempts']} attempts in {c['seconds']} s = "
                f"{c['attempts_per_s']} attempts/s ({c['requests_per_s']} requests settled/s); "
                f"wins {c['wins']}, double claims {c['double_claims']}, unclaimed "
                f"{c['unclaimed']}, errors {c['errors']} {c['error_samples'][:2]}; "
                f"database: {c['db_check']}"
            )
            ref_ids = prepare_bare_table(database_url, args.claim_requests)
            brun = run_claims("bare", database_url, redis_url, contenders, ref_ids, args, children)
            results.bare.append(brun)
            b = brun.summary()
            log(
                f"bare UPDATE run {attempt}: {b['attempts']} attempts in {b['seconds']} s = "
                f"{b['attempts_per_s']} attempts/s; wins {b['wins']}, double claims "
                f"{b['double_claims']}, errors {b['errors']} {b['error_samples'][:2]}; "
                f"database: {b['db_check']}"
            )


def report(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": results.machine, "settings": vars(args).copy()}
    out["settings"].pop("json", None)
    targets = {200: 25.0, 1000: 100.0}
    print()
    m = results.machine
    print(f"Machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}")
    print(
        f"Delivery: commit returned -> SSE id line read ({args.workers} workers, "
        f"{args.events} events per run, {args.gap * 1000:.0f} ms apart, {args.runs} runs)"
    )
    print(
        "  dashboards | lifeline p50 / p99 (median of runs) | per run p50/p99 | "
        "Redis PUBLISH p50 / p99 | ratio p99 | target"
    )
    delivery: dict[str, Any] = {}
    for size, runs in sorted(results.delivery.items()):
        refs = results.reference.get(size, [])
        p50 = median([percentile(r.delays, 50) * 1000 for r in runs])
        p99 = median([percentile(r.delays, 99) * 1000 for r in runs])
        r50 = median([percentile(r.delays, 50) * 1000 for r in refs])
        r99 = median([percentile(r.delays, 99) * 1000 for r in refs])
        target = targets.get(size)
        met = None if target is None else p99 <= target
        per_run = ", ".join(
            f"{percentile(r.delays, 50) * 1000:.1f}/{percentile(r.delays, 99) * 1000:.1f}"
            for r in runs
        )
        print(
            f"  {size:>10} | {p50:7.1f} / {p99:7.1f} ms | {per_run} | {r50:5.2f} / {r99:5.2f} ms"
            f" | {p99 / r99 if r99 else float('nan'):5.1f}x | "
            + ("-" if target is None else f"p99 <= {target:g} ms: {'met' if met else 'MISSED'}")
        )
        first = median([median(r.firsts) * 1000 for r in runs])
        spread = median([median(r.spreads) * 1000 for r in runs])
        rfirst = median([median(r.firsts) * 1000 for r in refs])
        rspread = median([median(r.spreads) * 1000 for r in refs])
        print(
            f"  {'':>10}   per event, p50: commit -> first stream {first:.1f} ms, first -> last "
            f"stream {spread:.1f} ms (Redis: {rfirst:.1f} / {rspread:.1f} ms)"
        )
        delivery[str(size)] = {
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "reference_p50_ms": round(r50, 2),
            "reference_p99_ms": round(r99, 2),
            "first_stream_p50_ms": round(first, 2),
            "first_to_last_p50_ms": round(spread, 2),
            "reference_first_p50_ms": round(rfirst, 2),
            "reference_first_to_last_p50_ms": round(rspread, 2),
            "target_p99_ms": target,
            "met": met,
            "runs": [r.summary() for r in runs],
            "reference_runs": [r.summary() for r in refs],
        }
    out["delivery"] = delivery
    if results.claims:
        rate = median([r.attempts_per_s for r in results.claims])
        settled = median([r.requests_per_s for r in results.claims])
        bare = median([r.attempts_per_s for r in results.bare])
        attempts = sum(r.attempts for r in results.claims)
        doubles = sum(r.double_claims for r in results.claims)
        unclaimed = sum(r.unclaimed for r in results.claims)
        errors = sum(r.errors for r in results.claims)
        print(
            f"Claims: {args.contenders} contenders ({args.claim_procs} processes), "
            f"{args.claim_requests} requests per run, rendezvous every {args.sync_every}"
        )
        print(
            f"  domain claim: {rate:.0f} attempts/s ({settled:.0f} requests settled/s), runs "
            + ", ".join(f"{r.attempts_per_s:.0f}" for r in results.claims)
        )
        print(
            f"  bare conditional UPDATE: {bare:.0f} attempts/s, runs "
            + ", ".join(f"{r.attempts_per_s:.0f}" for r in results.bare)
            + (f"; domain / bare = {rate / bare:.2f}" if bare else "")
        )
        print(
            f"  double claims: {doubles} in {attempts} contended attempts "
            f"(bare: {sum(r.double_claims for r in results.bare)}); unclaimed {unclaimed}; "
            f"errors {errors}; database checks: "
            + ", ".join(r.db_check for r in results.claims + results.bare)
        )
        out["claims"] = {
            "attempts_per_s": round(rate, 1),
            "requests_per_s": round(settled, 1),
            "bare_attempts_per_s": round(bare, 1),
            "attempts_total": attempts,
            "double_claims": doubles,
            "unclaimed": unclaimed,
            "errors": errors,
            "runs": [r.summary() for r in results.claims],
            "bare_runs": [r.summary() for r in results.bare],
        }
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--dashboards", type=int, nargs="+", default=[200, 1000], help="open streams"
    )
    parser.add_argument("--runs", type=int, default=3, help="repeats of each measurement")
    parser.add_argument("--events", type=int, default=50, help="measured events per run")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured events per run")
    parser.add_argument("--gap", type=float, default=0.15, help="seconds between events")
    parser.add_argument("--timeout", type=float, default=5.0, help="per event, all streams")
    parser.add_argument("--workers", type=int, default=2, help="lifeline serve --workers")
    parser.add_argument("--worker-connections", type=int, default=2000)
    parser.add_argument("--contenders", type=int, default=50, help="concurrent claimers")
    parser.add_argument(
        "--claim-procs", type=int, default=5, help="processes they run in (10 threads each)"
    )
    parser.add_argument(
        "--claim-attempts",
        type=int,
        default=100_000,
        help="contended attempts in total over all runs (sets the requests per run)",
    )
    parser.add_argument("--claim-requests", type=int, help="requests per run (overrides)")
    parser.add_argument(
        "--sync-every", type=int, default=1, help="contenders meet before every N requests"
    )
    parser.add_argument("--claim-timeout", type=float, default=30.0, help="per rendezvous")
    parser.add_argument("--skip-delivery", action="store_true")
    parser.add_argument("--skip-claims", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--max-seconds", type=int, default=1500, help="abort the run after this")
    parser.add_argument("--lock-wait", type=float, default=300, help="wait for another bench")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if min(args.dashboards) < 1 or args.runs < 1 or args.events < 1 or args.contenders < 2:
        raise SystemExit("--dashboards, --runs, --events must be positive, --contenders >= 2")
    if args.claim_requests is None:
        args.claim_requests = math.ceil(args.claim_attempts / (args.runs * args.contenders))

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Ctrl-C raises KeyboardInterrupt even when started in the background of a script (where
    # SIGINT arrives ignored); SIGTERM, SIGHUP and the --max-seconds alarm do the same.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    lock = acquire_run_lock(args.lock_wait)
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
    summary = report(args, results)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    claims = summary.get("claims", {})
    if claims.get("double_claims") or claims.get("unclaimed") or claims.get("errors"):
        print("FAILED: a request was claimed twice, not at all, or a claim errored")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
