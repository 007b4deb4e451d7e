"""Launch benchmark: Lifeline's web tier under gunicorn, driven over real HTTP on 127.0.0.1.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/launch.py --help``). It creates its
own PostgreSQL database (dropped at the end) and uses Redis db 7 (flushed before and after),
runs ``lifeline db upgrade``, registers a bench platform whose JWKS is served over HTTP by this
process, starts ``lifeline serve`` (gunicorn gthread) and a bare Flask "hello" app under the
same gunicorn settings, and measures:

  (a) launch POSTs/s at saturation (pre-run logins, pre-signed id_tokens, keep-alive clients),
      beside the bare Flask requests/s with the same load generator;
  (b) complete launch (login + launch POST) latency p50/p99 at half the measured peak, with
      open-loop (Poisson) arrivals;
  (c) raw RS256 verifies/s with ``cryptography`` and PyJWT decodes/s, for reference;
  (d) the share of launch CPU spent on JWT work (parse, key lookup, signature, times).

The load generator is ``wrk`` when it is installed (apt-get install wrk), with a Lua script
that sends each pre-built launch once; otherwise a small asyncio client in several processes.
Every loop is bounded in count and time, and the whole run by --max-seconds.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path, where a sibling benchmark may be
# named like a standard module (queue.py): drop it before importing anything else.
sys.path[:] = [
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]


import argparse  # noqa: E402
import asyncio  # noqa: E402
import base64  # noqa: E402
import contextlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs, urlencode, urlsplit  # noqa: E402

import jwt  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_ADMIN = os.environ.get(
    "LIFELINE_BENCH_PG_ADMIN", "postgresql://lifeline:lifeline@127.0.0.1:5432/postgres"
)
DB_NAME = os.environ.get("LIFELINE_BENCH_DB", "lifeline_bench")
# Redis db 7: test runs without a redis-server of their own use dbs 8-15 (tests/conftest.py),
# the app defaults to db 0.
REDIS_URL = os.environ.get("LIFELINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/7")

ISSUER = "https://lms.bench.example"
CLIENT_ID = "lifeline-bench"
DEPLOYMENT_ID = "bench-deployment"
KID = "bench-key-1"
CLAIM = "https://purl.imsglobal.org/spec/lti/claim/"
LIS = "http://purl.imsglobal.org/vocab/lis/v2/membership#"

# The user pool: 200 users in 4 courses, each course with 2 exercises (resource links). Every
# launch is one user opening one of their course's 2 exercises, so the 400 (user, exercise)
# pairs repeat as they do in real classes and the per-process caches see realistic hits.
N_USERS = 200
N_COURSES = 4
EXERCISES_PER_COURSE = 2
INSTRUCTOR_EVERY = 40  # users 0, 40, 80, ... are instructors (5 of 200)


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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def rate_loop(fn: Callable[[], object], seconds: float, batch: int = 200) -> float:
    """Calls per second of ``fn``, over about ``seconds`` (bounded in time)."""
    for _ in range(batch // 10):  # warm up
        fn()
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and count < 10_000_000:
        for _ in range(batch):
            fn()
        count += batch
    return count / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


# -- the bench platform: users, keys, JWKS over HTTP -----------------------------------------


@dataclass(frozen=True)
class User:
    sub: str
    name: str
    email: str
    course: int
    instructor: bool


USERS = [
    User(
        sub=f"bench-user-{i:03d}",
        name=f"Learner {i:03d}",
        email=f"learner{i:03d}@bench.example",
        course=i % N_COURSES,
        instructor=i % INSTRUCTOR_EVERY == 0,
    )
    for i in range(N_USERS)
]


def pick_launch(rng: random.Random) -> tuple[User, int]:
    return rng.choice(USERS), rng.randrange(EXERCISES_PER_COURSE)


class Platform:
    """Signs id_tokens like an LMS (RS256 with ``cryptography``) and serves its JWKS."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": KID, "alg": "RS256", "use": "sig"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": KID}).encode())
        self.httpd: ThreadingHTTPServer | None = None

    def serve_jwks(self) -> str:
        body = self.jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if urlsplit(self.path).path != "/jwks.json":
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return f"http://{HOST}:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def claims(self, user: User, exercise: int, nonce: str, base_url: str) -> dict[str, Any]:
        now = int(time.time())
        course = f"course-{user.course}"
        role = "Instructor" if user.instructor else "Learner"
        return {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": user.sub,
            "iat": now,
            "exp": now + 600,
            "nonce": nonce,
            "name": user.name,
            "email": user.email,
            CLAIM + "deployment_id": DEPLOYMENT_ID,
            CLAIM + "message_type": "LtiResourceLinkRequest",
            CLAIM + "version": "1.3.0",
            CLAIM + "roles": [LIS + role],
            CLAIM + "target_link_uri": base_url + "/lti/launch",
            CLAIM + "resource_link": {
                "id": f"{course}-link-{exercise}",
                "title": f"Exercise {exercise + 1}",
            },
            CLAIM + "context": {
                "id": course,
                "label": f"CS10{user.course}",
                "title": f"Programming {user.course}",
                "type": ["http://purl.imsglobal.org/vocab/lis/v2/course#CourseOffering"],
            },
            CLAIM + "launch_presentation": {"document_target": "iframe"},
            CLAIM + "tool_platform": {"guid": "bench-lms", "name": "Bench LMS"},
        }

    def sign(self, claims: dict[str, Any]) -> str:
        payload = b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self.header}.{payload}".encode("ascii")
        signature = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return f"{self.header}.{payload}.{b64url(signature)}"


def login_query(user: User, base_url: str) -> str:
    return urlencode(
        {
            "iss": ISSUER,
            "login_hint": user.sub,
            "target_link_uri": base_url + "/lti/launch",
            "lti_message_hint": "bench",
            "client_id": CLIENT_ID,
            "lti_deployment_id": DEPLOYMENT_ID,
        }
    )


def state_and_nonce(location: str) -> tuple[str, str]:
    query = parse_qs(urlsplit(location).query)
    return query["state"][0], query["nonce"][0]


# -- processes: servers and cleanup ----------------------------------------------------------


class Cleanup:
    """Everything the run started, undone in reverse order even on error or Ctrl-C."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, step: Callable[[], None]) -> None:
        self.steps.append((what, step))

    def run(self) -> None:
        # A second Ctrl-C (or SIGTERM) during cleanup must not leave servers or the database
        # behind: those signals are ignored until every step has run.
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
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def start_server(
    cleanup: Cleanup, name: str, argv: list[str], env: dict[str, str], port: int, log_path: Path
) -> subprocess.Popen[bytes]:
    out = log_path.open("wb")
    proc = subprocess.Popen(
        argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    cleanup.add(f"stop {name}", lambda: (stop_process_group(proc), out.close()))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early; see {log_path}:\n{log_path.read_text()}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/healthz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                # Let every worker finish booting before anything is measured.
                time.sleep(1.0)
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not answer on {HOST}:{port} within 30 s; see {log_path}")


def gunicorn_settings(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """The settings ``lifeline serve`` applies (lti_tool/cli.py), for the bare Flask app.

    ``args.worker_class`` is what the ``lifeline serve`` under test reported using: gthread
    (``threads`` per worker) or a gevent worker (``worker_connections`` per worker).
    """
    settings: dict[str, Any] = {
        "bind": f"{HOST}:{port}",
        "workers": args.workers,
        "accesslog": None,
        "timeout": 60,
        "keepalive": 5,
        "control_socket_disable": True,  # gunicorn >= 25; one per machine by default
    }
    if args.worker_class == "gthread":
        settings.update(worker_class="gthread", threads=args.threads)
    else:
        settings.update(worker_class="gevent", worker_connections=args.worker_connections)
    return settings


def serve_hello(port: int, args: argparse.Namespace) -> None:
    """A minimal Flask app under the same gunicorn settings as ``lifeline serve``; or, with
    ``--serve-app``, Lifeline itself (``--server gthread``: gunicorn gthread workers)."""
    if args.worker_class != "gthread":
        from gevent import monkey

        monkey.patch_all()
    from flask import Flask
    from gunicorn.app.base import BaseApplication

    if args.serve_app:
        from lti_tool import create_app
        from lti_tool.config import settings_from_env

        app = create_app(settings_from_env())
    else:
        app = Flask("hello")

        @app.get("/")
        def hello() -> str:
            return "hello"

        @app.get("/healthz")
        def healthz() -> str:
            return "ok"

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in gunicorn_settings(port, args).items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    Server().run()


# -- preparing launches: real logins, then signed id_tokens ----------------------------------

_PLATFORM: Platform | None = None  # set before forking the preparation workers


def _prepare_chunk(job: tuple[int, int, str, int]) -> list[tuple[str, str]]:
    """Run ``count`` logins over HTTP and sign the id_token each one needs.

    Returns (Cookie header, form body) pairs: exactly what the browser posts to /lti/launch.
    """
    count, port, base_url, seed = job
    assert _PLATFORM is not None
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    out = []
    try:
        for _ in range(count):
            user, exercise = pick_launch(rng)
            conn.request("GET", "/lti/login?" + login_query(user, base_url))
            response = conn.getresponse()
            response.read()
            if response.status != 302:
                raise RuntimeError(f"login answered {response.status}")
            state, nonce = state_and_nonce(response.getheader("Location", ""))
            token = _PLATFORM.sign(_PLATFORM.claims(user, exercise, nonce, base_url))
            cookie = f"lifeline-state-{state}={state}"
            out.append((cookie, urlencode({"id_token": token, "state": state})))
    finally:
        conn.close()
    return out


def prepare_launches(count: int, port: int, base_url: str, procs: int) -> list[tuple[str, str]]:
    per = [count // procs + (1 if i < count % procs else 0) for i in range(procs)]
    jobs = [(n, port, base_url, secrets.randbits(32)) for n in per if n]
    result: list[tuple[str, str]] = []
    for chunk in in_processes(_prepare_chunk, jobs, timeout=120):
        result.extend(chunk)
    return result


# -- load generators -------------------------------------------------------------------------

WRK_SCRIPT = r"""
-- Sends each pre-built request once (bodies are single-use launches), counts statuses, and
-- times the run from the first request to the last response (a thread that runs out of
-- launches stops early, so wrk's own duration would undercount the rate).
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
  local path, nthreads, method, target = args[1], tonumber(args[2]), args[3], args[4]
  reqs = {}
  ok, bad, exhausted, idx, first, last = 0, 0, 0, 0, 0, 0
  if path == "-" then
    reqs[1] = wrk.format(method, target)
    single = true
    return
  end
  local i = 0
  for line in io.lines(path) do
    if i % nthreads == id then
      local cookie, body = line:match("^([^\t]*)\t(.*)$")
      reqs[#reqs + 1] = wrk.format(method, target, {
        ["Content-Type"] = "application/x-www-form-urlencoded",
        ["Cookie"] = cookie,
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
  last = now()
end

function done(summary, latency, requests)
  local o, b, e, t0, t1 = 0, 0, 0, math.huge, 0
  for _, t in ipairs(threads) do
    o = o + t:get("ok"); b = b + t:get("bad"); e = e + t:get("exhausted")
    if t:get("first") > 0 then t0 = math.min(t0, t:get("first")) end
    t1 = math.max(t1, t:get("last"))
  end
  local us = summary.duration
  if t1 > t0 then us = (t1 - t0) * 1e6 end
  io.write(string.format("BENCH ok=%d bad=%d exhausted=%d duration_us=%d\n", o, b, e, us))
end
"""


@dataclass
class LoadResult:
    ok: int
    bad: int
    seconds: float
    exhausted: bool = False
    client_cpu: float = 0.0  # CPU seconds the load generator used
    server_cpu: float = 0.0  # CPU seconds the gunicorn workers used

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def run_wrk(
    port: int,
    seconds: float,
    connections: int,
    threads: int,
    workdir: Path,
    method: str,
    target: str,
    requests_file: Path | None,
) -> LoadResult:
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://{HOST}:{port}{target}",
        "--",
        str(requests_file) if requests_file else "-",
        str(threads),
        method,
        target,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError("wrk did not finish in time") from None
    except BaseException:  # Ctrl-C, SIGTERM, the time limit: wrk must not outlive the run
        proc.kill()
        proc.wait()
        raise
    usage = _child_usage()
    line = next((x for x in stdout.decode().splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout.decode()}{stderr.decode()}")
    values = dict(item.split("=") for item in line.split()[1:])
    return LoadResult(
        ok=int(values["ok"]),
        bad=int(values["bad"]),
        seconds=int(values["duration_us"]) / 1e6,
        exhausted=values["exhausted"] != "0",
        client_cpu=usage,
    )


_last_children_cpu = 0.0


def _child_usage() -> float:
    """CPU seconds used by children reaped since the last call (the load generator)."""
    global _last_children_cpu
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = usage.ru_utime + usage.ru_stime
    delta, _last_children_cpu = total - _last_children_cpu, total
    return delta


class HttpConn:
    """A tiny keep-alive HTTP/1.1 client over asyncio streams (responses with Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> HttpConn:
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> tuple[int, list[tuple[str, str]]]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = []
        length = 0
        for line in lines[1:]:
            if not line:
                continue
            name, _, value = line.partition(":")
            name, value = name.strip().lower(), value.strip()
            headers.append((name, value))
            if name == "content-length":
                length = int(value)
        if length:
            await self.reader.readexactly(length)
        return status, headers

    def close(self) -> None:
        self.writer.close()


def raw_request(method: str, target: str, port: int, cookie: str = "", body: str = "") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}:{port}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if method == "POST":
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode("latin-1")


def _closed_loop_client(job: tuple[int, float, int, list[bytes]]) -> tuple[int, int, float]:
    """Python fallback for wrk: ``connections`` keep-alive connections sending ``raws``."""
    port, seconds, connections, raws = job

    async def main() -> tuple[int, int, float]:
        ok = bad = 0
        queue = iter(raws)
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal ok, bad
            conn = await HttpConn.open(port)
            try:
                for raw in queue:
                    if time.perf_counter() > deadline:
                        break
                    status, _ = await conn.send(raw)
                    if 200 <= status < 300:
                        ok += 1
                    else:
                        bad += 1
            finally:
                conn.close()

        await asyncio.gather(*(worker() for _ in range(connections)))
        return ok, bad, time.perf_counter() - start

    return asyncio.run(main())


def run_python_load(
    procs: int,
    port: int,
    seconds: float,
    connections: int,
    raws_per_proc: list[list[bytes]],
) -> LoadResult:
    _child_usage()
    results = in_processes(
        _closed_loop_client,
        [(port, seconds, max(1, connections // procs), raws) for raws in raws_per_proc],
        timeout=seconds + 60,
    )
    ok = sum(r[0] for r in results)
    bad = sum(r[1] for r in results)
    elapsed = max(r[2] for r in results)
    return LoadResult(ok, bad, elapsed, client_cpu=_child_usage())


def _client_process_signals() -> None:
    """Client processes leave Ctrl-C to the parent, and die plainly on SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)


_LIVE: set[Any] = set()  # client processes running now, killed by the cleanup


def _child_main(fn: Callable[[Any], Any], job: Any, writer: Any) -> None:
    _client_process_signals()
    try:
        writer.send((True, fn(job)))
    except BaseException:
        writer.send((False, traceback.format_exc()))
    finally:
        writer.close()


def in_processes(fn: Callable[[Any], Any], jobs: list[Any], timeout: float) -> list[Any]:
    """``[fn(job) for job in jobs]``, each in its own forked process, all at once."""
    ctx = multiprocessing.get_context("fork")
    running = []
    try:
        for job in jobs:
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child_main, args=(fn, job, writer), daemon=True)
            proc.start()
            _LIVE.add(proc)
            writer.close()
            running.append((proc, reader))
        results = []
        deadline = time.monotonic() + timeout
        for _proc, reader in running:
            if not reader.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"a client process did not finish within {timeout:.0f} s")
            ok, value = reader.recv()
            if not ok:
                raise RuntimeError(f"a client process failed:\n{value}")
            results.append(value)
        return results
    finally:
        for proc, reader in running:
            reader.close()
            proc.join(timeout=5)
            stop_client(proc)


def stop_client(proc: Any) -> None:
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=5)
    _LIVE.discard(proc)


def stop_clients() -> None:
    for proc in list(_LIVE):
        stop_client(proc)


# -- (b) complete launch latency, open loop --------------------------------------------------


def _latency_client(job: tuple[int, str, float, float, int]) -> dict[str, Any]:
    """Poisson arrivals at ``rate``/s for ``seconds``: each is a login then a launch POST.

    Latency of a complete launch = login (from its scheduled start, so a late client counts
    against us) + launch POST (from send). The id_token signing in between is the LMS's work
    and is left out of the latency (it still uses this machine's CPU).
    """
    port, base_url, rate, seconds, seed = job
    assert _PLATFORM is not None
    platform = _PLATFORM
    rng = random.Random(seed)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        idle: list[HttpConn] = []
        complete: list[float] = []
        logins: list[float] = []
        launches: list[float] = []
        failures = 0
        late = 0

        async def request(conn: HttpConn, raw: bytes) -> tuple[HttpConn, int, list[Any]]:
            try:
                status, headers = await conn.send(raw)
                return conn, status, headers
            except (ConnectionError, asyncio.IncompleteReadError):
                # A keep-alive connection the server closed while idle: reconnect once.
                conn.close()
                conn = await HttpConn.open(port)
                status, headers = await conn.send(raw)
                return conn, status, headers

        async def one(scheduled: float) -> None:
            nonlocal failures
            user, exercise = pick_launch(rng)
            conn = idle.pop() if idle else await HttpConn.open(port)
            try:
                conn, status, headers = await request(
                    conn, raw_request("GET", "/lti/login?" + login_query(user, base_url), port)
                )
                login_done = loop.time()
                location = next((v for k, v in headers if k == "location"), "")
                cookie = next(
                    (
                        v.split(";", 1)[0]
                        for k, v in headers
                        if k == "set-cookie" and v.startswith("lifeline-state-")
                    ),
                    "",
                )
                if status != 302 or not location or not cookie:
                    raise RuntimeError(f"login answered {status}")
                state, nonce = state_and_nonce(location)
                token = platform.sign(platform.claims(user, exercise, nonce, base_url))
                body = urlencode({"id_token": token, "state": state})
                sent = loop.time()
                conn, status, _ = await request(
                    conn, raw_request("POST", "/lti/launch", port, cookie, body)
                )
                done = loop.time()
                if status != 200:
                    raise RuntimeError(f"launch answered {status}")
                logins.append(login_done - scheduled)
                launches.append(done - sent)
                complete.append(login_done - scheduled + done - sent)
                idle.append(conn)
            except Exception:
                failures += 1
                conn.close()

        tasks: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.1
        end = start + seconds
        at = start
        while len(tasks) < 10_000:
            at += rng.expovariate(rate)
            if at >= end:
                break
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1
            task = asyncio.create_task(one(at))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        for conn in idle:
            conn.close()
        return {
            "complete": complete,
            "login": logins,
            "launch": launches,
            "failures": failures,
            "late": late,
        }

    return asyncio.run(main())


# -- (c) raw JWT rates, (d) JWT share of launch CPU ------------------------------------------


def jwt_rates(platform: Platform, seconds: float) -> tuple[float, float]:
    token = platform.sign(platform.claims(USERS[1], 0, "n", "http://127.0.0.1"))
    signing_input, _, sig = token.rpartition(".")
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    data = signing_input.encode()
    public = platform.key.public_key()  # a pre-parsed key object, as Lifeline caches it
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    verify = rate_loop(lambda: public.verify(signature, data, pkcs1, sha256), seconds)
    options = {"verify_aud": False}
    decode = rate_loop(
        lambda: jwt.decode(token, public, algorithms=["RS256"], options=options), seconds
    )
    return verify, decode


MEASURE_HOOK: Callable[[], None] | None = None  # for ad-hoc profiling: runs before the timing


def jwt_share_in_process(
    platform: Platform, env: dict[str, str], launches: int, profile: bool
) -> dict[str, float]:
    """Run launches through the app in this process, timing the JWT steps on CPU clocks.

    JWT work = parsing the compact JWS, the algorithm check, the (cached) key lookup and the
    RS256 verification. Whole launch = the app's WSGI call for POST /lti/launch (the gunicorn
    HTTP parsing is outside it, so this share is an upper bound of the share of worker CPU).
    """
    from lti_tool import create_app
    from lti_tool.config import settings_from_env
    from lti_tool.lti import launch as launch_module
    from lti_tool.lti import platform_keys

    settings = settings_from_env(env)
    app = create_app(settings)
    spent = {"jwt": 0.0}
    clock = time.thread_time

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["jwt"] += clock() - start

        return wrapper

    originals = {
        name: getattr(launch_module, name)
        for name in ("parse_token", "check_algorithm", "verify_signature")
    }
    original_key_for = platform_keys.PlatformKeys.key_for
    client = app.test_client()
    rng = random.Random(7)
    base_url = settings.base_url
    prepared = []
    warm = 1200  # covers all 400 (user, exercise) pairs, as a long-running worker has them
    for _ in range(warm + launches):
        user, exercise = pick_launch(rng)
        response = client.get("/lti/login?" + login_query(user, base_url))
        state, nonce = state_and_nonce(response.headers["Location"])
        token = platform.sign(platform.claims(user, exercise, nonce, base_url))
        prepared.append(
            (
                {"Cookie": f"lifeline-state-{state}={state}"},
                {"id_token": token, "state": state},
            )
        )
    environs = []
    from werkzeug.test import EnvironBuilder

    for headers, form in prepared:
        builder = EnvironBuilder(
            path="/lti/launch", method="POST", headers=headers, data=form, base_url=base_url
        )
        environs.append(builder.get_environ())
        builder.close()

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        if not status.startswith("200"):
            raise RuntimeError(f"in-process launch answered {status}")
        return lambda data: None

    profiler = None
    try:
        for name, fn in originals.items():
            setattr(launch_module, name, timed(fn))
        platform_keys.PlatformKeys.key_for = timed(original_key_for)  # type: ignore[method-assign]
        # Warm the per-process caches as a long-running worker has them.
        for environ in environs[:warm]:
            b"".join(app.wsgi_app(environ, start_response))
        spent["jwt"] = 0.0
        if MEASURE_HOOK is not None:
            MEASURE_HOOK()
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.thread_time)  # CPU time, not waits
            profiler.enable()
        start_cpu, start_wall = clock(), time.perf_counter()
        for environ in environs[warm:]:
            b"".join(app.wsgi_app(environ, start_response))
        total_cpu, total_wall = clock() - start_cpu, time.perf_counter() - start_wall
        if profiler is not None:
            profiler.disable()
    finally:
        for name, fn in originals.items():
            setattr(launch_module, name, fn)
        platform_keys.PlatformKeys.key_for = original_key_for  # type: ignore[method-assign]
        app.extensions["lifeline"].db.dispose()
        app.extensions["lifeline"].redis.close()
    measured = len(environs) - warm
    if profiler is not None:
        import pstats

        print("\n-- cProfile of in-process launches (by own time, then cumulative) --")
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(60)
        stats.sort_stats("cumulative").print_stats("lti_tool|templating|sessions.py|wsgi_app", 40)
    return {
        "launches": measured,
        "cpu_us_per_launch": total_cpu / measured * 1e6,
        "wall_us_per_launch": total_wall / measured * 1e6,
        "jwt_us_per_launch": spent["jwt"] / measured * 1e6,
        "jwt_share": spent["jwt"] / total_cpu if total_cpu else float("nan"),
    }


# -- the run ---------------------------------------------------------------------------------


@dataclass
class Results:
    hello: list[LoadResult] = field(default_factory=list)
    launch: list[LoadResult] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    verify: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    share: dict[str, float] = field(default_factory=dict)
    half_rate: float = 0.0
    loads: list[float] = field(default_factory=list)  # 1-minute load average, each round


def acquire_run_lock(wait: float) -> int:
    """One benchmark at a time on this machine (benchmarks/queue.py takes the same lock): runs
    would share the database name and Redis db, and would measure each other."""
    import fcntl

    fd = os.open(Path(tempfile.gettempdir(), "lifeline-bench.lock"), os.O_WRONLY | os.O_CREAT)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise SystemExit("another Lifeline benchmark is running on this machine") from None
            time.sleep(1)


def create_database() -> str:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + DB_NAME


def drop_database() -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def flush_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()


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


def run(args: argparse.Namespace, cleanup: Cleanup, results: Results) -> None:
    global _PLATFORM
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    if args.client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--client wrk: wrk is not installed (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="lifeline-bench-"))
    cleanup.add("remove work dir", lambda: shutil.rmtree(workdir, ignore_errors=True))

    log(f"creating database {DB_NAME}, flushing Redis {REDIS_URL}")
    flush_redis()
    cleanup.add("flush Redis db", flush_redis)
    cleanup.add("drop database", drop_database)
    database_url = create_database()

    platform = Platform()
    _PLATFORM = platform
    jwks_base = platform.serve_jwks()
    cleanup.add("stop JWKS server", platform.stop)

    port, hello_port = free_port(), free_port()
    base_url = f"http://{HOST}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIFELINE_") or k == "PATH"}
    env.update(
        {
            "LIFELINE_DATABASE_URL": database_url,
            "LIFELINE_REDIS_URL": REDIS_URL,
            "LIFELINE_SECRET_KEY": secrets.token_hex(32),
            "LIFELINE_BASE_URL": base_url,
            "LIFELINE_INSTANCE_PATH": str(workdir / "instance"),
        }
    )
    log("lifeline db upgrade")
    lifeline(env, "db", "upgrade")
    log(
        lifeline(
            env,
            "platform",
            "add",
            "--name",
            "Bench LMS",
            "--issuer",
            ISSUER,
            "--client-id",
            CLIENT_ID,
            "--auth-url",
            jwks_base + "/auth",
            "--token-url",
            jwks_base + "/token",
            "--keyset-url",
            jwks_base + "/jwks.json",
            "--deployment-id",
            DEPLOYMENT_ID,
        )
    )

    if args.share_only:
        results.share = jwt_share_in_process(platform, env, args.share_launches, args.profile)
        return

    if args.server == "gthread":
        # Lifeline's app under gunicorn gthread with the settings `lifeline serve` used before
        # it moved to gevent workers: for comparison (lifeline serve --threads is ignored now).
        serve_argv = [sys.executable, str(Path(__file__).resolve()), "--serve-hello", str(port)]
        serve_argv += ["--serve-app", "--worker-class", "gthread"]
        serve_argv += ["--workers", str(args.workers), "--threads", str(args.threads)]
    else:
        serve_argv = [str(BIN / "lifeline"), "serve", "--host", HOST, "--port", str(port)]
        serve_argv += ["--workers", str(args.workers)]
        if "--worker-connections" in lifeline(env, "serve", "--help"):
            serve_argv += ["--worker-connections", str(args.worker_connections)]
        else:
            serve_argv += ["--threads", str(args.threads)]
    log(f"starting {' '.join(serve_argv[1:])}")
    server = start_server(cleanup, "lifeline serve", serve_argv, env, port, workdir / "serve.log")
    used = re.search(r"Using worker: (\S+)", (workdir / "serve.log").read_text())
    args.worker_class = "gthread" if used and used.group(1) == "gthread" else "gevent"
    shape = (
        f"{args.threads} threads"
        if args.worker_class == "gthread"
        else f"{args.worker_connections} connections"
    )
    log(f"  gunicorn worker: {used.group(1) if used else '?'} ({args.workers} x {shape})")
    hello_argv = [sys.executable, str(Path(__file__).resolve()), "--serve-hello", str(hello_port)]
    hello_argv += ["--workers", str(args.workers), "--threads", str(args.threads)]
    hello_argv += ["--worker-connections", str(args.worker_connections)]
    hello_argv += ["--worker-class", args.worker_class]
    log(f"starting the bare Flask app on {HOST}:{hello_port} (same gunicorn settings)")
    hello_server = start_server(
        cleanup, "hello app", hello_argv, env, hello_port, workdir / "hello.log"
    )

    cleanup.add("stop client processes", stop_clients)

    def worker_pids() -> list[int]:
        return children_of(server.pid)

    def measure_launches(count: int) -> LoadResult:
        items = prepare_launches(count, port, base_url, args.client_procs)
        rng = random.Random(len(results.launch))
        rng.shuffle(items)
        pids = worker_pids()
        cpu_before = sum(cpu_seconds(p) for p in pids)
        _child_usage()
        log(f"  {len(items)} launches ready; launch load running")
        if use_wrk:
            requests_file = workdir / "launches.tsv"
            requests_file.write_text("".join(f"{c}\t{b}\n" for c, b in items))
            result = run_wrk(
                port,
                args.seconds,
                args.connections,
                args.client_procs,
                workdir,
                "POST",
                "/lti/launch",
                requests_file,
            )
        else:
            raws = [raw_request("POST", "/lti/launch", port, c, b) for c, b in items]
            split = [raws[i :: args.client_procs] for i in range(args.client_procs)]
            result = run_python_load(args.client_procs, port, args.seconds, args.connections, split)
        result.server_cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        return result

    def measure_hello() -> LoadResult:
        pids = children_of(hello_server.pid)
        cpu_before = sum(cpu_seconds(p) for p in pids)
        _child_usage()
        if use_wrk:
            result = run_wrk(
                hello_port,
                args.seconds,
                args.connections,
                args.client_procs,
                workdir,
                "GET",
                "/",
                None,
            )
        else:
            raw = raw_request("GET", "/", hello_port)
            per = int(args.seconds * 20_000)
            result = run_python_load(
                args.client_procs,
                hello_port,
                args.seconds,
                args.connections,
                [[raw] * per for _ in range(args.client_procs)],
            )
        result.server_cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        return result

    # Warm-up: every worker sees the platform, its keys and the user pool once.
    log("warming up (launches through every worker)")
    warm = measure_launches(args.warmup)
    if warm.bad:
        log(f"warning: {warm.bad} warm-up launches failed; see {workdir / 'serve.log'}")
    estimate = max(warm.rate, 200.0)

    for round_no in range(1, args.rounds + 1):
        hello = measure_hello()
        results.hello.append(hello)
        count = int(min(args.max_pool, max(3000, estimate * args.seconds * 1.4)))
        launch = measure_launches(count)
        if launch.exhausted:
            log("  (the pre-built launches ran out early: the rate is over the time they lasted)")
        results.launch.append(launch)
        results.loads.append(os.getloadavg()[0])
        estimate = max(estimate, launch.rate)
        log(
            f"round {round_no}/{args.rounds}: hello {hello.rate:,.0f} req/s, "
            f"launch {launch.rate:,.0f} /s ({launch.ok} ok, {launch.bad} failed, "
            f"{launch.server_cpu / max(launch.ok, 1) * 1e6:,.0f} us worker CPU per launch, "
            f"client used {launch.client_cpu / launch.seconds:.2f} cores)"
        )
        verify, decode = jwt_rates(platform, args.micro_seconds)
        results.verify.append(verify)
        results.decode.append(decode)

    peak = median([r.rate for r in results.launch])
    results.half_rate = args.latency_rate or peak / 2
    for round_no in range(1, args.latency_rounds + 1):
        per_proc = results.half_rate / args.client_procs
        jobs = [
            (port, base_url, per_proc, args.latency_seconds, secrets.randbits(32))
            for _ in range(args.client_procs)
        ]
        parts = in_processes(_latency_client, jobs, timeout=args.latency_seconds + 60)
        merged: dict[str, Any] = {
            key: [v for part in parts for v in part[key]] for key in ("complete", "login", "launch")
        }
        merged["failures"] = sum(p["failures"] for p in parts)
        merged["late"] = sum(p["late"] for p in parts)
        results.latency.append(merged)
        results.loads.append(os.getloadavg()[0])
        log(
            f"latency round {round_no}/{args.latency_rounds} at {results.half_rate:,.0f} "
            f"complete launches/s: p50 {percentile(merged['complete'], 50) * 1e3:.2f} ms, "
            f"p99 {percentile(merged['complete'], 99) * 1e3:.2f} ms "
            f"({len(merged['complete'])} ok, {merged['failures']} failed)"
        )

    log("measuring the JWT share of launch CPU in-process")
    results.share = jwt_share_in_process(platform, env, args.share_launches, args.profile)


def report(args: argparse.Namespace, results: Results) -> dict[str, Any]:
    hello = [r.rate for r in results.hello]
    launch = [r.rate for r in results.launch]
    ratios = [lr / hr for lr, hr in zip(launch, hello, strict=True)]
    p50 = [percentile(r["complete"], 50) * 1e3 for r in results.latency]
    p99 = [percentile(r["complete"], 99) * 1e3 for r in results.latency]
    launch_p99 = [percentile(r["launch"], 99) * 1e3 for r in results.latency]
    worker_cpu = [r.server_cpu / max(r.ok, 1) * 1e6 for r in results.launch]
    hello_cpu = [r.server_cpu / max(r.ok, 1) * 1e6 for r in results.hello]
    # Worker CPU per request is far less sensitive to other load on the machine than rates
    # are: hello CPU / launch CPU is the ratio the rates would show on an otherwise idle box.
    cpu_ratios = [h / w for h, w in zip(hello_cpu, worker_cpu, strict=True) if w]
    share = results.share
    jwt_of_worker = share["jwt_us_per_launch"] / median(worker_cpu) if worker_cpu else 0.0

    def fmt(values: list[float], spec: str) -> str:
        return ", ".join(format(v, spec) for v in values)

    rows = [
        ("launch POSTs/s at saturation", f"{median(launch):,.0f}", fmt(launch, ",.0f")),
        ("bare Flask hello req/s", f"{median(hello):,.0f}", fmt(hello, ",.0f")),
        ("ratio launch / bare Flask", f"{median(ratios):.0%}", fmt(ratios, ".0%")),
        (
            f"complete launch p50 at {results.half_rate:,.0f}/s (ms)",
            f"{median(p50):.2f}",
            fmt(p50, ".2f"),
        ),
        (
            f"complete launch p99 at {results.half_rate:,.0f}/s (ms)",
            f"{median(p99):.2f}",
            fmt(p99, ".2f"),
        ),
        ("  launch POST alone p99 (ms)", f"{median(launch_p99):.2f}", fmt(launch_p99, ".2f")),
        (
            "RS256 verifies/s (cryptography)",
            f"{median(results.verify):,.0f}",
            fmt(results.verify, ",.0f"),
        ),
        ("PyJWT decodes/s", f"{median(results.decode):,.0f}", fmt(results.decode, ",.0f")),
        (
            "gunicorn worker CPU per launch (us)",
            f"{median(worker_cpu):,.0f}",
            fmt(worker_cpu, ",.0f"),
        ),
        (
            "gunicorn worker CPU per hello (us)",
            f"{median(hello_cpu):,.0f}",
            fmt(hello_cpu, ",.0f"),
        ),
        (
            "CPU-cost ratio hello / launch",
            f"{median(cpu_ratios):.0%}",
            fmt(cpu_ratios, ".0%"),
        ),
        (
            "JWT work per launch (us, in-process)",
            f"{share['jwt_us_per_launch']:,.1f}",
            f"of {share['cpu_us_per_launch']:,.0f} us app CPU",
        ),
        ("JWT share of launch CPU (app)", f"{share['jwt_share']:.1%}", ""),
        ("JWT share of launch CPU (worker)", f"{jwt_of_worker:.1%}", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"{'measure'.ljust(width)}  {'median':>10}  per run")
    print(f"{'-' * width}  {'-' * 10}  {'-' * 30}")
    for name, value, runs in rows:
        print(f"{name.ljust(width)}  {value:>10}  {runs}")
    print()
    targets = [
        ("launch >= 40% of bare Flask", median(ratios) >= 0.40),
        ("complete launch p99 < 20 ms at half peak", median(p99) < 20.0),
        ("JWT work < 10% of launch CPU", share["jwt_share"] < 0.10),
    ]
    for name, met in targets:
        print(f"  target {name}: {'MET' if met else 'NOT MET'}")
    if results.loads:
        print(
            f"  1-minute load average during the rounds: {min(results.loads):.1f} to "
            f"{max(results.loads):.1f} on {os.cpu_count()} CPUs (other load skews the rates)"
        )
    failures = sum(r.bad for r in results.launch) + sum(r["failures"] for r in results.latency)
    if failures:
        print(f"  warning: {failures} requests failed during the measurements")
    return {
        "settings": {
            "worker_class": args.worker_class,
            "workers": args.workers,
            "threads": args.threads,
            "worker_connections": args.worker_connections,
            "connections": args.connections,
            "client_procs": args.client_procs,
            "seconds": args.seconds,
        },
        "launch_per_s": launch,
        "hello_per_s": hello,
        "ratio": ratios,
        "half_rate": results.half_rate,
        "p50_ms": p50,
        "p99_ms": p99,
        "launch_p99_ms": launch_p99,
        "verify_per_s": results.verify,
        "pyjwt_decode_per_s": results.decode,
        "worker_cpu_us_per_launch": worker_cpu,
        "worker_cpu_us_per_hello": hello_cpu,
        "cpu_cost_ratio": cpu_ratios,
        "client_cpu_cores": [r.client_cpu / r.seconds for r in results.launch],
        "share": share,
        "jwt_share_of_worker": jwt_of_worker,
        "failures": failures,
        "load_averages": results.loads,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5, help="saturation rounds (median)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per load run")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument(
        "--latency-rate", type=float, help="complete launches/s (default: half the peak)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--threads", type=int, default=4, help="gunicorn threads per worker")
    parser.add_argument(
        "--worker-connections", type=int, default=2000, help="per gevent worker, if gevent"
    )
    parser.add_argument("--worker-class", default="gthread", help=argparse.SUPPRESS)
    parser.add_argument("--serve-app", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--server",
        choices=["lifeline", "gthread"],
        default="lifeline",
        help="lifeline: `lifeline serve` as shipped; gthread: the app under gunicorn gthread",
    )
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--client-procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--warmup", type=int, default=1500, help="warm-up launches")
    parser.add_argument("--max-pool", type=int, default=40_000, help="most launches per round")
    parser.add_argument("--micro-seconds", type=float, default=0.5)
    parser.add_argument("--share-launches", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="print a cProfile of launches")
    parser.add_argument(
        "--share-only", action="store_true", help="only the in-process JWT share (no servers)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--max-seconds", type=int, default=600, help="abort the run after this")
    parser.add_argument("--lock-wait", type=float, default=300, help="wait for another bench")
    parser.add_argument("--serve-hello", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.serve_hello:
        serve_hello(args.serve_hello, args)
        return 0

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # Started in the background by a non-interactive shell, SIGINT arrives ignored: handle it.
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)
    signal.signal(signal.SIGALRM, interrupt)
    lock = acquire_run_lock(args.lock_wait)
    signal.alarm(args.max_seconds)
    cleanup = Cleanup()
    results = Results()
    started = time.monotonic()
    try:
        run(args, cleanup, results)
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        cleanup.run()
        os.close(lock)
    if args.share_only:
        print(json.dumps(results.share, indent=2))
        return 0
    summary = report(args, results)
    print(f"\n({time.monotonic() - started:.0f} s; {os.cpu_count()} CPUs)")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
