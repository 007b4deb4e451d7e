"""Background jobs on RQ. Jobs take ids, never objects, and are safe to run twice.

The pieces:

* ``JobContext``: the handles a job needs (settings, database, notifiers) and the way to start
  more jobs. The worker installs one for its process (``worker_context``); an app builds one
  from its own handles (``app_context``). Jobs find theirs with ``current()``.
* ``attach_enqueuer``: jobs follow the events the help operations record, and are enqueued
  only after the transaction commits (a job never sees a row that rolled back). A Redis
  outage at that moment is logged and does not fail the user's request: ``sweep`` re-derives
  lost work from the database, which is the source of truth.
* Inline mode (``jobs_inline``, the demo): a job runs in-process at once, with no retry, and
  delayed jobs (SLA checks) are not scheduled: the demo runs ``sweep`` every few seconds on a
  thread (``start_sweeper``), which escalates overdue requests instead.
* ``run_worker``: ``lifeline worker``, an RQ worker tuned so that a job whose worker died is
  retried within about 36 seconds (RQ's defaults: over 10 minutes), and so that a Redis that
  stops answering makes it time out and start again instead of hanging.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.results import Result
from rq.scheduler import RQScheduler
from rq.scripts import release_lock
from rq.utils import import_attribute
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

from .bus import PENDING, attach_publisher
from .config import MEMORY_REDIS_URL, Settings
from .db import Database, utcnow
from .notify import Notifiers, notifiers_from_settings

log = logging.getLogger(__name__)

QUEUE_NAME = "lifeline"

# The jobs, by dotted path (jobs are leaves: only the worker imports them).
PAGE_REQUEST = "lti_tool.tasks.page_request"
CHECK_SLA = "lti_tool.tasks.check_sla"
ALERT_LEARNERS = "lti_tool.tasks.alert_learners"
SWEEP = "lti_tool.tasks.sweep"
SYNC_ROSTER = "lti_tool.tasks.sync_roster"
REPORT_PARTICIPATION = "lti_tool.tasks.report_participation"

# Every job is retried with back-off; a job whose worker died counts as one failure.
RETRY_INTERVALS = (5, 15, 60, 180)
JOB_TIMEOUT = 180  # seconds; a wave of 20 emails at a 5 s timeout each fits
RESULT_TTL = 3600
FAILURE_TTL = 30 * 24 * 3600  # failed jobs stay visible to `lifeline jobs failed` for 30 days

# -- worker tuning: a SIGKILLed worker's job runs again within 20 + 10 + 5 + 1 = 36 s ------
# (measured by tests/test_jobs.py: 26 s on the development machine; RQ defaults: > 10 min).
# RQ counts a started job as abandoned once its execution heartbeat lapses. The worker beats
# every JOB_MONITORING_INTERVAL while a job runs; RQ lets it lapse after that plus 60 s, which
# we shorten to HEARTBEAT_GRACE. Abandoned jobs are found by the registry cleaning every
# MAINTENANCE_INTERVAL (RQ: 10 min), then retried after RETRY_INTERVALS[0] by the scheduler.
JOB_MONITORING_INTERVAL = 5
HEARTBEAT_GRACE = 15
MAINTENANCE_INTERVAL = 10
# A scheduler that died holds its lock for up to 61 s (RQ: interval + 60); a lock not
# refreshed for this long is released so the new worker's scheduler can take over.
SCHEDULER_STALE_AFTER = 15
SCHEDULER_LOCK_LEASE = 1 + 60  # RQScheduler(interval=1) re-leases its lock for interval + 60 s
# worker_ttl sets the blocking dequeue (worker_ttl - 15 s) and the socket timeout RQ insists on
# (dequeue + 10 s): 20 gives a 5 s dequeue and a 15 s socket timeout, so a Redis that stops
# answering is noticed within 15 s, and the worker starts again once it is back.
WORKER_TTL = 20
REDIS_SOCKET_TIMEOUT = WORKER_TTL - 5
REDIS_CONNECT_TIMEOUT = 5
# TCP keepalive finds a peer that vanished (a host down, a dropped NAT entry) in 10 + 3 * 5 s.
KEEPALIVE = {
    name: value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}
# Web processes enqueue with a short timeout: a user's request never waits long on Redis.
ENQUEUE_SOCKET_TIMEOUT = 2
SWEEP_EVERY = 30  # seconds between sweeps, whichever worker does it
SWEEP_KEY = "lifeline:sweep:due"
INLINE_SWEEP_EVERY = 10.0


def make_queue(connection: redis.Redis, inline: bool) -> Queue:
    return Queue(QUEUE_NAME, connection=connection, is_async=not inline)


def enqueue(queue: Queue, func: str, *args: Any, **options: Any) -> Any:
    """Enqueue ``func`` (a dotted path) with plain-value arguments."""
    return queue.enqueue(func, *args, **options)


def make_job_redis(url: str, socket_timeout: float) -> redis.Redis:
    """A Redis client that fails in bounded time: socket and connect timeouts, TCP keepalive,
    a health check on idle connections, and one quick retry on a dropped connection only
    (redis-py's default retries a timeout ten times, which turns 15 s into minutes)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=min(REDIS_CONNECT_TIMEOUT, socket_timeout),
        socket_keepalive=True,
        socket_keepalive_options={getattr(socket, k): v for k, v in KEEPALIVE.items()},
        health_check_interval=10,
        retry=RedisRetry(
            ExponentialBackoff(cap=1.0, base=0.2), 1, supported_errors=(redis.ConnectionError,)
        ),
    )


def _job_options(job_id: str | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "retry": Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
        "job_timeout": JOB_TIMEOUT,
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
    }
    if job_id is not None:
        options["job_id"] = job_id
    return options


# -- the context a job runs in -----------------------------------------------------------------


@dataclass
class JobContext:
    settings: Settings
    db: Database
    notifiers: Notifiers
    queue: Queue | None  # None: inline
    # A forking worker runs each job in a fresh child: it must not reuse the parent's pooled
    # database connections, and closes its own before it exits.
    fork_per_job: bool = False
    _pid: int = field(default_factory=os.getpid)

    @property
    def inline(self) -> bool:
        return self.queue is None

    def enqueue(self, func: str, *args: Any, job_id: str | None = None) -> bool:
        """Run ``func(*args)`` as a job soon. False if it could not be enqueued (logged)."""
        if self.queue is None:
            return self.run_now(func, *args)
        try:
            self.queue.enqueue(func, *args, **_job_options(job_id))
        except (redis.RedisError, OSError) as exc:
            log.warning("could not enqueue %s%r (sweep will redo it): %s", func, args, exc)
            return False
        return True

    def enqueue_at(
        self, when: dt.datetime, func: str, *args: Any, job_id: str | None = None
    ) -> bool:
        """Run ``func(*args)`` at ``when``. Inline, nothing is scheduled (sweep covers it)."""
        if self.queue is None:
            log.debug("inline jobs: %s%r at %s is left to sweep()", func, args, when)
            return False
        delay = max(dt.timedelta(0), when - utcnow())
        try:
            self.queue.enqueue_in(delay, func, *args, **_job_options(job_id))
        except (redis.RedisError, OSError) as exc:
            log.warning("could not schedule %s%r (sweep will redo it): %s", func, args, exc)
            return False
        return True

    def run_now(self, func: str, *args: Any) -> bool:
        """Inline: run the job here and now; a failure is logged (sweep redoes lost work)."""
        try:
            with bound(self):
                import_attribute(func)(*args)
        except Exception:
            log.exception("inline job %s%r failed", func, args)
            return False
        return True

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A job's database session: committed on success, rolled back on error."""
        child = self.fork_per_job and os.getpid() != self._pid
        if child:
            self.db.engine.dispose(close=False)  # forget the parent's connections, if any
        session = self.db.sessionmaker()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()
            if child:
                self.db.engine.dispose()  # close ours cleanly before the work horse exits


_bound: ContextVar[JobContext | None] = ContextVar("lifeline_job_context", default=None)
_installed: JobContext | None = None


def install(context: JobContext) -> None:
    """The process-wide context: the worker's."""
    global _installed
    _installed = context


@contextmanager
def bound(context: JobContext) -> Iterator[JobContext]:
    """Run jobs in this block with ``context`` (inline runs, tests)."""
    token = _bound.set(context)
    try:
        yield context
    finally:
        _bound.reset(token)


def current() -> JobContext:
    context = _bound.get() or _installed
    if context is None:
        raise RuntimeError(
            "no job context: jobs run under `lifeline worker`, or inline inside the app"
        )
    return context


def app_context(settings: Settings, database: Database) -> JobContext:
    """The context of an app: inline jobs (demo), or an RQ queue to enqueue on."""
    queue = None
    # The in-process Redis stand-in has no worker on the other side: jobs run inline there.
    if not settings.jobs_inline and settings.redis_url != MEMORY_REDIS_URL:
        connection = make_job_redis(settings.redis_url, ENQUEUE_SOCKET_TIMEOUT)
        queue = Queue(QUEUE_NAME, connection=connection)
    context = JobContext(settings, database, notifiers_from_settings(settings), queue)
    attach_enqueuer(database.sessionmaker, context)
    return context


def worker_context(settings: Settings) -> JobContext:
    connection = make_job_redis(settings.redis_url, REDIS_SOCKET_TIMEOUT)
    database = Database(settings.database_url)
    # Jobs record events too (sweep expires requests): publish them and follow them.
    attach_publisher(database.sessionmaker, connection)
    context = JobContext(
        settings,
        database,
        notifiers_from_settings(settings),
        Queue(QUEUE_NAME, connection=connection),
        fork_per_job=True,
    )
    attach_enqueuer(database.sessionmaker, context)
    return context


# -- jobs follow committed events ------------------------------------------------------------

COMMITTED = "lifeline_jobs_events"
PAGE_ON = frozenset({"request.created", "request.transferred"})
# Events after which learners in a pool may have moved up, or been claimed.
QUEUE_MOVED = frozenset(
    {
        "request.claimed",
        "request.cancelled",
        "request.expired",
        "request.released",
        "request.resolved",
        "request.no_show",
        "request.transferred",
    }
)


def jobs_for_events(events: Iterable[dict[str, Any]]) -> list[tuple[str, tuple[Any, ...]]]:
    planned: list[tuple[str, tuple[Any, ...]]] = []
    for message in events:
        kind, request_id, pool_id = message["kind"], message["request_id"], message["pool_id"]
        if kind in PAGE_ON and request_id is not None:
            planned.append((PAGE_REQUEST, (request_id, 1)))
        if kind in QUEUE_MOVED and pool_id is not None:
            planned.append((ALERT_LEARNERS, (pool_id,)))
        if kind == "request.resolved" and request_id is not None:
            # A completed session: its participation grade (a no-op unless the course opted in).
            planned.append((REPORT_PARTICIPATION, (request_id,)))
    return list(dict.fromkeys(planned))  # once each, in order


def attach_enqueuer(sessions: sessionmaker[Session], context: JobContext) -> None:
    """Enqueue the jobs that the events of a transaction call for, once it has committed.

    The events are the ones ``help.events.record`` queues for the bus; they are copied just
    before the commit (the bus consumes its list after it) and acted on only after it.
    """

    @event.listens_for(sessions, "before_commit")
    def _copy(session: Session) -> None:
        if session.in_nested_transaction():
            return  # a savepoint: only the outermost commit enqueues
        pending = session.info.get(PENDING)
        if pending:
            session.info[COMMITTED] = list(pending)

    @event.listens_for(sessions, "after_commit")
    def _enqueue(session: Session) -> None:
        events: list[dict[str, Any]] = session.info.pop(COMMITTED, [])
        for func, args in jobs_for_events(events):
            try:
                context.enqueue(func, *args)
            except Exception:  # never fail a request that has committed
                log.exception("could not start job %s%r", func, args)

    @event.listens_for(sessions, "after_soft_rollback")
    def _discard(session: Session, previous: Any) -> None:
        if previous.parent is None:
            session.info.pop(COMMITTED, None)


def start_sweeper(context: JobContext, every: float = INLINE_SWEEP_EVERY) -> threading.Thread:
    """Inline mode (demo): run ``sweep`` every few seconds on a daemon thread."""

    def loop() -> None:
        while True:
            time.sleep(every)
            context.run_now(SWEEP)

    thread = threading.Thread(target=loop, name="lifeline-sweeper", daemon=True)
    thread.start()
    return thread


# -- the worker ------------------------------------------------------------------------------


def reclaim_stale_scheduler_locks(
    connection: redis.Redis, queue_names: Iterable[str], stale_after: float
) -> list[str]:
    """Release scheduler locks whose holder stopped refreshing them (it died with its worker).

    A live scheduler re-leases its lock every second for 61 s; one not refreshed for
    ``stale_after`` seconds is dead. The release is a compare-and-delete on the holder's name.
    """
    released = []
    for name in queue_names:
        key = RQScheduler.get_locking_key(name)
        holder = connection.get(key)
        remaining = connection.ttl(key)
        if holder is None or remaining is None or remaining < 0:
            continue
        silent_for = SCHEDULER_LOCK_LEASE - int(remaining)
        owner = holder.decode() if isinstance(holder, bytes) else str(holder)
        if silent_for >= stale_after and release_lock(connection, key, owner):
            log.warning(
                "scheduler lock for %s not refreshed for %d s: released it", name, silent_for
            )
            released.append(name)
    return released


class LifelineWorker(Worker):
    """RQ's forking worker with a shorter heartbeat lapse, stale scheduler locks released,
    and a sweep enqueued every SWEEP_EVERY seconds by whichever worker gets there first."""

    stop_signalled = False
    burst_mode = False

    def get_heartbeat_ttl(self, job: Job) -> int:
        # RQ: min(time left, monitoring interval) + 60. The grace is what separates a slow
        # heartbeat from a dead worker; a false alarm only runs an idempotent job twice.
        if job.timeout and job.timeout > 0:
            left = job.timeout - self.current_job_working_time
            return int(max(1, min(left, self.job_monitoring_interval))) + HEARTBEAT_GRACE
        return int(self.job_monitoring_interval) + HEARTBEAT_GRACE

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)  # type: ignore[no-untyped-call]

    def run_maintenance_tasks(self) -> None:
        reclaim_stale_scheduler_locks(self.connection, self.queue_names(), SCHEDULER_STALE_AFTER)
        scheduler = self.scheduler
        if scheduler is not None and not self.burst_mode and not scheduler.acquired_locks:
            # RQ retries only from the second maintenance on; a lock just released is ours now.
            scheduler.acquire_locks(auto_start=True)  # type: ignore[no-untyped-call]
        super().run_maintenance_tasks()  # type: ignore[no-untyped-call]
        if self.connection.set(SWEEP_KEY, self.name, nx=True, ex=SWEEP_EVERY):
            self.queues[0].enqueue(SWEEP, **_job_options())
        if _ingest_consumer is not None:
            # A consumer that died is started again; a partition the web writes to that this
            # worker does not consume yet (its setting is higher) gets a consumer.
            _ingest_consumer.ensure(self.connection)


def _reap(pids: list[int]) -> list[int]:
    """Collect work horses left running by a worker that gave up; return those still alive."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                alive.append(pid)
    return alive


_ingest_consumer: Any = None  # activity.pipeline.ConsumerProcesses of ``lifeline worker``


def run_worker(
    settings: Settings,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    name: str | None = None,
    logging_level: str = "INFO",
    ingest: bool = True,
) -> bool:
    """``lifeline worker``: the RQ worker (``_run_rq_worker``) and, in "stream" ingest mode,
    the activity ingestion consumer as a child process, started again if it dies."""
    global _ingest_consumer
    if not ingest or burst or settings.ingest_mode != "stream":
        return _run_rq_worker(
            settings,
            burst=burst,
            with_scheduler=with_scheduler,
            name=name,
            logging_level=logging_level,
        )
    from .activity.pipeline import ConsumerProcesses

    # Any partition beyond the setting that holds entries gets a process at the worker's first
    # maintenance, which RQ runs as it starts (``ConsumerProcesses.ensure``).
    _ingest_consumer = ConsumerProcesses(settings.stream_partitions)
    _ingest_consumer.start()
    try:
        return _run_rq_worker(
            settings,
            burst=burst,
            with_scheduler=with_scheduler,
            name=name,
            logging_level=logging_level,
        )
    finally:
        consumer, _ingest_consumer = _ingest_consumer, None
        consumer.stop()


def _run_rq_worker(
    settings: Settings,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
    name: str | None = None,
    logging_level: str = "INFO",
) -> bool:
    """The RQ worker: work until SIGTERM / SIGINT (or, with ``burst``, an empty queue).

    RQ's worker quits when Redis times out; this loop starts a new one (back-off 1 s doubling
    to 30 s), so a Redis that hung or restarted costs seconds, not a worker. Returns whether
    the last worker stopped cleanly.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging_level, format="%(asctime)s %(name)s %(message)s")
    if not settings.smtp_url:
        log.warning("LIFELINE_SMTP_URL is not set: emails are written to this log, not sent")
    context = worker_context(settings)
    install(context)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    prefix = name or f"{socket.gethostname()}.{os.getpid()}"
    delay, generation, orphans = 1.0, 0, []
    while True:
        generation += 1
        started = time.monotonic()
        worker: LifelineWorker | None = None
        try:
            worker = LifelineWorker(
                [QUEUE_NAME],
                name=f"{prefix}.{generation}",
                connection=context.queue.connection if context.queue else None,
                worker_ttl=WORKER_TTL,
                job_monitoring_interval=JOB_MONITORING_INTERVAL,
                maintenance_interval=MAINTENANCE_INTERVAL,
            )
            worker.burst_mode = burst
            worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level)
            clean = True
        except (redis.RedisError, OSError) as exc:
            log.error("worker lost Redis: %s: %s", type(exc).__name__, exc)
            clean = False
        finally:
            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        if worker is not None and worker.stop_signalled:
            return True
        if burst:
            return clean
        if worker is not None and worker.horse_pid:
            orphans.append(worker.horse_pid)
        orphans = _reap(orphans)
        if time.monotonic() - started > 60:
            delay = 1.0
        log.warning(
            "worker stopped (Redis timed out or failed, see above); a new one starts in %.0f s",
            delay,
        )
        if stop.wait(delay):
            return True
        delay = min(delay * 2, 30.0)


# -- failed jobs, for admins -----------------------------------------------------------------


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def failed_jobs(connection: redis.Redis) -> list[dict[str, Any]]:
    """The jobs that used up their retries (or had none), newest last, with their error."""
    registry = FailedJobRegistry(QUEUE_NAME, connection=connection)
    ids = registry.get_job_ids()
    rows: list[dict[str, Any]] = []
    for job_id, job in zip(ids, Job.fetch_many(ids, connection=connection), strict=True):
        if job is None:
            rows.append({"id": job_id, "func": None, "args": [], "error": "job data expired"})
            continue
        result = job.latest_result()
        failed = result is not None and result.type == Result.Type.FAILED
        trace = (result.exc_string or "") if failed and result is not None else ""
        rows.append(
            {
                "id": job.id,
                "func": job.func_name,
                "args": list(job.args),
                "enqueued_at": job.enqueued_at.isoformat() if job.enqueued_at else None,
                "failed_at": job.ended_at.isoformat() if job.ended_at else None,
                "retries_left": job.retries_left,
                "error": _last_line(trace),
                "traceback": trace,
            }
        )
    return rows


def retry_failed(
    connection: redis.Redis, job_ids: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """Put failed jobs back on the queue (all of them when ``job_ids`` is None).
    Returns (requeued, not found)."""
    registry = FailedJobRegistry(QUEUE_NAME, connection=connection)
    wanted = list(job_ids) if job_ids is not None else registry.get_job_ids()
    requeued, missing = [], []
    for job_id in wanted:
        try:
            registry.requeue(job_id)
        except (NoSuchJobError, InvalidJobOperation):
            missing.append(job_id)
        else:
            requeued.append(job_id)
    return requeued, missing


def give_up() -> None:
    """Called by a job about to fail for a reason retrying cannot fix (the LMS refused with a
    4xx, a malformed answer): RQ records the failure at once instead of retrying it with
    back-off. Outside an RQ job (inline mode, tests calling the task) it does nothing."""
    from rq import get_current_job

    job = get_current_job()
    if job is not None:
        job.retries_left = 0
