"""The ingestion pipeline: requests are accepted into a Redis stream, a worker stores and
evaluates them in bulk.

Accepting (``accept``, in the web request) is what must be fast. The request is parsed and
validated in process (a 400 names the field), and then ONE Redis round trip (a Lua script)
does the rest atomically: the credential's rate limit, the idempotency check of every item
(a key per source id holding the digest of its content: the same content again is a
``duplicate``, different content a ``conflict``, and a single statement that conflicts is a
409) and the append of the request's items to the stream ``STREAM``. The answer follows at
once: each new valid item is ``queued`` (or ``invalid`` / ``ignored``, known from parsing).
Nothing touches PostgreSQL on the way in (credentials come from a per-process cache).

Storing (``Consumer``, run by ``lifeline worker`` in its own process, and by ``lifeline demo``
on a thread) reads the stream as a consumer group (XREADGROUP, blocking), stores the raw and
normalised rows of many requests at once with ``ingest.store`` (which also runs detection
over the batch, its state loaded for the whole batch), commits, and only then acknowledges
the entries (XACK + XDEL). Offers are published after the commit by the bus, as always.

- *Exactly once into PostgreSQL.* A worker that dies between reading and committing leaves its
  entries pending; the next leader claims them (XAUTOCLAIM) and stores them again. Whatever was
  committed before is recognised by its source id (``raw_events``' unique key): a duplicate,
  stored once, evaluated once. PostgreSQL has the final word on repeats; the Redis keys
  (kept ``ID_TTL``) only let the request answer ``duplicate`` or 409 at once.
- *Order.* One consumer is active at a time (a lease, ``LEADER``; other workers stand by), and
  it handles what it claimed before anything new, so events are evaluated in the order they
  were accepted. (Within a batch they are evaluated in the order they happened.)
- *Poison.* A batch that fails is retried entry by entry; an entry that fails ``MAX_TRIES``
  times (or cannot be decoded) is moved whole to ``ingest_dead_letters`` with the error, and
  the others go on. It is never dropped: ``lifeline activity dead-letters`` lists them and
  ``--retry`` puts them back. A database outage is not a failure of the entries: the worker
  waits and tries again without counting.
- *Durability.* Accepted and not yet stored, an event lives in Redis only: production runs
  Redis with AOF (``appendfsync everysec``) and ``noeviction`` (docker-compose.yml), so a Redis
  crash loses nothing and a power loss of the Redis host at most about one second of accepted
  events. If Redis cannot take a request, the web layer stores it synchronously instead.

The in-process Redis stand-in of the demo (fakeredis) runs no Lua and does not block: there
the same steps run in Python under a process lock, and the consumer is woken by an event.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import redis
from sqlalchemy import delete, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .. import fastjson
from ..db import Database, utcnow
from . import credentials
from .ingest import (
    CONFLICT,
    DUPLICATE,
    IGNORED,
    INVALID,
    ActivityRef,
    ActorRef,
    Item,
    ItemResult,
    Normalised,
    Scope,
    _as_conflict,
    _repeat,
    digest,
    store,
)
from .model import ActivityKind
from .models import IngestDeadLetter

log = logging.getLogger(__name__)

STREAM = "lifeline:ingest:stream"
GROUP = "ingest"
LEADER = "lifeline:ingest:leader"
TRIES = "lifeline:ingest:tries"  # hash: entry id -> attempts so far
ERRORS = "lifeline:ingest:errors"  # hash: entry id -> the last error
ID_PREFIX = "lifeline:ingest:id:"
ID_TTL = 24 * 3600  # seconds a source id is remembered in Redis (PostgreSQL: for ever)
RATE_PREFIX = "lifeline:activity:rate:"

QUEUED = "queued"
NEW, SAME, DIFFERENT = "0", "1", "2"

MAX_TRIES = 3  # attempts before an entry goes to the dead letters
READ_COUNT = 200  # entries per read (an entry is one request: up to 500 items)
MAX_BATCH_ITEMS = 5000  # items per transaction
LINGER_MS = 50  # under steady traffic, wait this long for more entries before a batch
BLOCK_MS = 1000
LEASE_MS = 15_000  # a leader that stops renewing for this long is presumed dead
CLAIM_EVERY = 30.0  # seconds between sweeps for entries left pending by others
CLAIM_IDLE_MS = 2 * LEASE_MS
PAYLOAD_VERSION = 1
STORED, FAILED, DB_DOWN = "stored", "failed", "database down"
PARTITION_MARK = "@"  # a dead letter's stream id: "<entry id>@<partition>" (0: no mark)


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limited, retry in {retry_after} s")
        self.retry_after = retry_after


# -- entries: what one request puts on the stream ----------------------------------------------


def _encode_item(item: Item, compare_digest: str) -> list[Any]:
    actor = item.actor
    activity = item.activity
    event = item.event
    return [
        item.index,
        item.external_id,
        item.body,
        compare_digest,
        item.reply_id,
        None
        if actor is None
        else [actor.describe, actor.keys, actor.subs, actor.emails, actor.learner_id],
        None
        if activity is None
        else [activity.describe, activity.activity_id, activity.iri, activity.exercise_id],
        None
        if event is None
        else [
            event.kind.value,
            event.occurred_at.isoformat(),
            event.correct,
            event.score,
            event.error,
            event.code_length,
            event.order,
        ],
        item.invalid_field,
        item.note,
        item.conflict,
    ]


def _decode_item(raw: list[Any], received_at: dt.datetime) -> Item:
    index, external_id, body, compare, reply_id, actor, activity, event = raw[:8]
    invalid_field, note, conflict = raw[8:11]
    return Item(
        index=int(index),
        external_id=str(external_id),
        body=str(body),
        compare=str(compare),
        reply_id=reply_id,
        actor=None
        if actor is None
        else ActorRef(actor[0], tuple(actor[1]), tuple(actor[2]), tuple(actor[3]), actor[4]),
        activity=None if activity is None else ActivityRef(*activity),
        event=None
        if event is None
        else Normalised(
            kind=ActivityKind(event[0]),
            occurred_at=dt.datetime.fromisoformat(event[1]),
            correct=event[2],
            score=event[3],
            error=event[4],
            code_length=event[5],
            order=int(event[6]),
        ),
        invalid_field=invalid_field,
        note=note,
        conflict=bool(conflict),
        received_at=received_at,
    )


@dataclass
class Entry:
    """One request's items as the consumer reads them back."""

    stream_id: str
    scope: Scope
    source: str
    credential_id: int | None
    received_at: dt.datetime
    items: list[Item]


def encode_entry(
    scope: Scope,
    source: str,
    credential_id: int | None,
    received_at: dt.datetime,
    items: Sequence[Item],
    digests: Sequence[str],
) -> str:
    return fastjson.dumps(
        {
            "v": PAYLOAD_VERSION,
            "s": source,
            "p": scope.platform_id,
            "c": scope.course_id,
            "k": credential_id,
            "t": received_at.isoformat(),
            "i": [_encode_item(i, d) for i, d in zip(items, digests, strict=True)],
        }
    )


def decode_entry(stream_id: str, fields: dict[str, str]) -> Entry:
    """The entry's items, with the verdicts of the accept script applied: an item already
    known with the same content is left out, one known with other content becomes a conflict
    (kept aside, never replacing the first)."""
    data = fastjson.loads(fields["d"])
    if data.get("v") != PAYLOAD_VERSION:
        raise ValueError(f"unknown entry version {data.get('v')!r}")
    received_at = dt.datetime.fromisoformat(data["t"])
    verdicts = fields.get("m", "")
    items: list[Item] = []
    for n, raw in enumerate(data["i"]):
        verdict = verdicts[n] if n < len(verdicts) else NEW
        if verdict == SAME:
            continue
        item = _decode_item(raw, received_at)
        if verdict == DIFFERENT:
            item = _as_conflict(item, "a different statement is stored under this id")
            item.received_at = received_at
        items.append(item)
    credential = data.get("k")
    return Entry(
        stream_id,
        Scope(int(data["p"]), int(data["c"])),
        str(data["s"]),
        int(credential) if credential is not None else None,
        received_at,
        items,
    )


# -- accepting (the web request) ------------------------------------------------------------------

# KEYS: the rate key, then the stream of each group (G of them), then one id key per item
# (group after group); ARGV: rate limit (0: none), id ttl, strict ("1": a single item that is
# not new is answered without being queued), G, then per group its item count and its entry,
# then one content digest per item. A group is the request's items of one partition: each is
# appended to its own stream when one of its items is to be queued. Returns "1 <verdicts>
# <entry id>[,<entry id>…]" (something queued), "0 <verdicts>" (nothing new) or "-1" (rate
# limited): one string, the cheapest reply to read.
ACCEPT_SCRIPT = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local n = redis.call('INCR', KEYS[1])
  if n == 1 then redis.call('EXPIRE', KEYS[1], 120) end
  if n > limit then return '-1' end
end
local ttl = tonumber(ARGV[2])
local groups = tonumber(ARGV[4])
local first_key = 2 + groups
local first_digest = 5 + 2 * groups
local verdicts = {}
local ids = {}
local item = 0
for g = 1, groups do
  local size = tonumber(ARGV[3 + 2 * g])
  local group_mask = {}
  local queue = false
  for _ = 1, size do
    item = item + 1
    local key = KEYS[first_key + item - 1]
    local want = ARGV[first_digest + item - 1]
    local have = redis.call('GET', key)
    local verdict
    if not have then
      redis.call('SET', key, want, 'EX', ttl)
      verdict = '0'
      queue = true
    elseif have == want then
      verdict = '1'
    else
      verdict = '2'
      if ARGV[3] ~= '1' then queue = true end
    end
    verdicts[item] = verdict
    group_mask[#group_mask + 1] = verdict
  end
  if queue then
    ids[#ids + 1] = redis.call(
      'XADD', KEYS[1 + g], '*', 'd', ARGV[4 + 2 * g], 'm', table.concat(group_mask))
  end
end
local mask = table.concat(verdicts)
if #ids > 0 then
  return '1 ' .. mask .. ' ' .. table.concat(ids, ',')
end
return '0 ' .. mask
"""

_memory_lock = threading.Lock()
_memory_wakes: dict[int, threading.Event] = {}


def _memory_wake(partition: int) -> threading.Event:
    """Wakes the in-process consumer of a partition (the stand-in cannot block on a read)."""
    return _memory_wakes.setdefault(partition, threading.Event())


def is_memory(client: redis.Redis) -> bool:
    """The demo's in-process stand-in (fakeredis): no Lua, no blocking reads."""
    return type(client).__module__.startswith("fakeredis")


def _accept_in_python(
    client: redis.Redis,
    groups: list[tuple[int, list[str], list[str], str]],
    rate: tuple[str, int] | None,
    strict: bool,
) -> tuple[int, str, str]:
    """``ACCEPT_SCRIPT`` for the in-process stand-in, atomic under a process lock (nothing
    outside this process can reach that Redis). ``groups``: (partition, id keys, digests,
    entry) of each partition the request's items fall in."""
    added: list[tuple[int, str]] = []
    with _memory_lock:
        if rate is not None:
            n = int(client.incr(rate[0]))
            if n == 1:
                client.expire(rate[0], 120)
            if n > rate[1]:
                return -1, "", ""
        verdicts = []
        for partition, keys, digests, payload in groups:
            group_mask = []
            queue = False
            for key, want in zip(keys, digests, strict=True):
                have = client.get(key)
                if have is None:
                    client.set(key, want, ex=ID_TTL)
                    group_mask.append(NEW)
                    queue = True
                elif _text(have) == want:
                    group_mask.append(SAME)
                else:
                    group_mask.append(DIFFERENT)
                    queue = queue or not strict
            verdicts.extend(group_mask)
            if queue:
                entry_id = client.xadd(
                    stream_key(partition), {"d": payload, "m": "".join(group_mask)}
                )
                added.append((partition, _text(entry_id)))
    for partition, _ in added:
        _memory_wake(partition).set()
    mask = "".join(verdicts)
    if not added:
        return 0, mask, ""
    return 1, mask, ",".join(entry_id for _, entry_id in added)


def stream_key(partition: int) -> str:
    """Partition 0 is the stream's first name (one partition: as before partitions)."""
    return STREAM if partition == 0 else f"{STREAM}:{partition}"


def leader_key(partition: int) -> str:
    return LEADER if partition == 0 else f"{LEADER}:{partition}"


def tries_key(partition: int) -> str:
    # Entry ids are unique within a stream only: each partition counts its own.
    return TRIES if partition == 0 else f"{TRIES}:{partition}"


def errors_key(partition: int) -> str:
    return ERRORS if partition == 0 else f"{ERRORS}:{partition}"


def partition_of(item: Item, partitions: int) -> int:
    """Which partition an item goes to: by who did it, so one learner's events stay in one
    stream, in order (an actor named two ways, e.g. by account and by email, may land in two:
    their events are then stored in arrival order per partition, and the state rows, locked
    while a batch uses them, keep every update)."""
    if partitions <= 1:
        return 0
    actor = item.actor
    who = actor.describe if actor is not None else item.external_id
    return zlib.crc32(who.encode("utf-8", "surrogatepass")) % partitions


def id_key(scope: Scope, source: str, external_id: str) -> str:
    return f"{ID_PREFIX}{scope.course_id}:{source}:{external_id}"


def _result(item: Item, verdict: str) -> ItemResult:
    if verdict == SAME:
        return _repeat(item, CONFLICT if item.conflict else DUPLICATE)
    if verdict == DIFFERENT:
        reason = f"id {item.external_id}: a different statement is stored under this id"
        return ItemResult(item.index, item.reply_id, CONFLICT, "id", reason)
    if item.conflict:
        return ItemResult(item.index, item.reply_id, CONFLICT, item.invalid_field, item.note)
    if item.invalid:
        return ItemResult(item.index, item.reply_id, INVALID, item.invalid_field, item.note)
    if item.event is None:
        return ItemResult(item.index, item.reply_id, IGNORED, None, item.note)
    return ItemResult(item.index, item.reply_id, QUEUED)


@dataclass
class Accepted:
    results: list[ItemResult]
    entry_id: str | None = None  # None: nothing new was queued; several: comma-separated

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.results:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts


def accept(
    client: redis.Redis,
    scope: Scope,
    source: str,
    items: Sequence[Item],
    *,
    now: dt.datetime,
    rate: tuple[str, int] | None = None,
    credential_id: int | None = None,
    strict: bool = False,
    partitions: int = 1,
) -> Accepted:
    """Take a request's parsed items into the stream: one Redis round trip. ``rate`` is the
    (bucket, requests per minute) to count the request in; ``strict`` is for a lone item that
    must be answered 409 and not kept when its id holds something else; ``partitions`` is
    the number of streams the items are spread over (``partition_of``), one entry each. Raises
    ``RateLimited``, or a ``redis.RedisError`` when Redis cannot take it."""
    results: dict[int, ItemResult] = {}
    fresh: list[Item] = []
    first_by_id: dict[str, Item] = {}
    for item in items:  # repeats inside the request, as ``ingest.store`` treats them
        seen = first_by_id.get(item.external_id)
        if seen is None:
            first_by_id[item.external_id] = item
            fresh.append(item)
        elif seen.compare == item.compare:
            results[item.index] = _repeat(item, DUPLICATE)
        else:
            fresh.append(_as_conflict(item, "another statement of this batch has the same id"))
    by_partition: dict[int, list[Item]] = {}
    for item in fresh:
        by_partition.setdefault(partition_of(item, partitions), []).append(item)
    groups: list[tuple[int, list[str], list[str], str]] = []
    ordered: list[Item] = []  # the items as the script sees them: group after group
    for partition in sorted(by_partition):
        members = by_partition[partition]
        digests = [digest(i.compare) for i in members]
        keys = [id_key(scope, source, i.external_id) for i in members]
        payload = encode_entry(scope, source, credential_id, now, members, digests)
        groups.append((partition, keys, digests, payload))
        ordered.extend(members)
    rate_key = ""
    limit = 0
    if rate is not None:
        rate_key = f"{RATE_PREFIX}{rate[0]}:{int(time.time() // 60)}"
        limit = rate[1]
    if is_memory(client):
        status, mask, entry_id = _accept_in_python(
            client, groups, (rate_key, limit) if rate else None, strict
        )
    else:
        args: list[Any] = [limit, ID_TTL, "1" if strict else "0", len(groups)]
        for _, keys, _, payload in groups:
            args += (len(keys), payload)
        answer = _text(
            _evalsha(
                client,
                _script(client),
                1 + len(groups) + len(ordered),
                rate_key or STREAM,
                *(stream_key(g[0]) for g in groups),
                *(key for g in groups for key in g[1]),
                *args,
                *(d for g in groups for d in g[2]),
            )
        ).split(" ")
        status = int(answer[0])
        mask = answer[1] if len(answer) > 1 else ""
        entry_id = answer[2] if len(answer) > 2 else ""
    if status < 0:
        raise RateLimited(max(1, 60 - int(time.time()) % 60))
    for item, verdict in zip(ordered, mask, strict=True):
        results[item.index] = _result(item, verdict)
    return Accepted([results[i.index] for i in items], entry_id if status == 1 else None)


_scripts: dict[tuple[int, str], Any] = {}

# HINCRBY of every entry read (ARGV) in TRIES (KEYS[1]); the new counts, in order.
TRIES_SCRIPT = """
local counts = {}
for i, entry_id in ipairs(ARGV) do
  counts[i] = redis.call('HINCRBY', KEYS[1], entry_id, 1)
end
return counts
"""


def _evalsha(client: redis.Redis, script: Any, numkeys: int, *keys_and_args: Any) -> Any:
    """``script(keys=..., args=...)`` without redis-py's wrappers around it: one EVALSHA of the
    preloaded script (loaded again if Redis lost it, e.g. after a restart or SCRIPT FLUSH),
    sent on a pooled connection directly (``_send``). A connection that fails is retried
    through ``client.evalsha``, with the client's own retry policy."""
    try:
        try:
            return _send(client, "EVALSHA", script.sha, numkeys, *keys_and_args)
        except (redis.ConnectionError, redis.TimeoutError):
            return client.evalsha(script.sha, numkeys, *keys_and_args)
    except redis.exceptions.NoScriptError:
        script.sha = client.script_load(script.script)
        return client.evalsha(script.sha, numkeys, *keys_and_args)


def _send(client: redis.Redis, *command: Any) -> Any:
    """One command on a connection of the client's pool: what ``execute_command`` does for
    it, without its per-call retry closures and metrics, which cost more CPU than the round
    trip itself (the accept script is the one Redis call of a request). The reply is not
    parsed further (``_text`` reads it); an error reply raises as usual."""
    if client.connection is not None:  # a single-connection client: its lock and connection
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    pool = client.connection_pool
    conn: Any = pool.get_connection()
    try:
        conn.send_packed_command(conn.pack_command(*command))
        return conn.read_response()
    finally:
        pool.release(conn)


def _script(client: redis.Redis, source: str = ACCEPT_SCRIPT) -> Any:
    """``source`` registered with this client (once per client: its SHA is kept)."""
    found = _scripts.get((id(client), source))
    if found is None or found[0] is not client:
        found = _scripts[(id(client), source)] = (client, client.register_script(source))
    return found[1]


# -- storing (the worker) -------------------------------------------------------------------------


def _compare_for(source: str) -> Callable[[str], str]:
    """How the consumer compares a stored body with an item (whose ``compare`` is a digest)."""
    from . import progsnap2, xapi

    by_source: dict[str, Callable[[str], str]] = {
        "xapi": xapi.compare_stored,
        progsnap2.SOURCE: progsnap2.compare_stored,
    }
    base = by_source.get(source)
    if base is None:
        return digest
    return lambda body: digest(base(body))


def store_entries(session: Session, entries: Sequence[Entry]) -> int:
    """Store the items of these entries (in one transaction, the caller's): one
    ``ingest.store`` per course and source, detection included. Returns the items stored."""
    groups: dict[tuple[int, int, str], list[Item]] = {}
    for entry in entries:
        key = (entry.scope.platform_id, entry.scope.course_id, entry.source)
        groups.setdefault(key, []).extend(entry.items)
    stored = 0
    now = utcnow()
    credentials.touch(
        session, {e.credential_id for e in entries if e.credential_id is not None}, now
    )
    for (platform_id, course_id, source), items in groups.items():
        for n, item in enumerate(items):  # one request's indexes are not unique in a batch
            item.index = n
        store(
            session,
            Scope(platform_id, course_id),
            source,
            items,
            compare=_compare_for(source),
            now=now,
            check_stored=False,  # checked when accepted; the insert finds any repeat
        )
        stored += len(items)
    return stored


TRANSIENT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})  # deadlock, serialization, lock


def _transient(exc: BaseException) -> bool:
    """A failure that trying again fixes: a deadlock or serialization failure."""
    orig = getattr(exc, "orig", None)
    return isinstance(exc, DBAPIError) and getattr(orig, "sqlstate", None) in TRANSIENT_SQLSTATES


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, str] | None:
    if not raw:
        return None  # deleted meanwhile (still in the pending list)
    return {_text(k): _text(v) for k, v in raw.items()}


def _batches(entries: list[Entry]) -> Iterator[list[Entry]]:
    """Consecutive runs of entries of at most ``MAX_BATCH_ITEMS`` items (one transaction
    each; an entry is never split)."""
    batch: list[Entry] = []
    items = 0
    for entry in entries:
        if batch and items + len(entry.items) > MAX_BATCH_ITEMS:
            yield batch
            batch, items = [], 0
        batch.append(entry)
        items += len(entry.items)
    if batch:
        yield batch


_names = count(1)


@dataclass
class Consumer:
    """Reads the stream as one consumer of the group and stores what it reads.

    ``run`` loops until ``stop`` is set; ``process_once`` does one read and what follows
    (tests and ``drain`` call it directly)."""

    db: Database
    client: redis.Redis
    name: str = field(
        default_factory=lambda: f"{socket.gethostname()}.{os.getpid()}.{next(_names)}"
    )
    read_count: int = READ_COUNT
    block_ms: int = BLOCK_MS
    lease_ms: int = LEASE_MS
    max_tries: int = MAX_TRIES
    linger_ms: int = LINGER_MS
    partition: int = 0
    pause: Callable[[float], None] = field(default=time.sleep, repr=False)
    _renew_at: float = 0.0
    _claimed_at: float = 0.0
    _group_ready: bool = False
    _own_pending: bool = True  # may have entries read and not acknowledged: look first
    stream: str = field(init=False, default=STREAM)
    leader: str = field(init=False, default=LEADER)
    tries: str = field(init=False, default=TRIES)
    errors: str = field(init=False, default=ERRORS)
    thread: threading.Thread | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.stream = stream_key(self.partition)
        self.leader = leader_key(self.partition)
        self.tries = tries_key(self.partition)
        self.errors = errors_key(self.partition)

    # -- the group and the lease ---------------------------------------------------------
    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def lead(self) -> bool:
        """Whether this consumer is the active one, taking or renewing the lease (every third
        of it). A new leader first claims everything the previous one left pending."""
        now = time.monotonic()
        if now < self._renew_at:
            return True
        lease = self.lease_ms / 1000
        if self.client.set(self.leader, self.name, nx=True, px=self.lease_ms):
            self._renew_at = now + lease / 3
            self.claim(min_idle_ms=0)
            return True
        holder = self.client.get(self.leader)
        if holder is not None and _text(holder) == self.name:
            self.client.pexpire(self.leader, self.lease_ms)
            self._renew_at = now + lease / 3
            return True
        self._renew_at = 0.0
        return False

    def resign(self) -> None:
        with contextlib.suppress(redis.RedisError):
            holder = self.client.get(self.leader)
            if holder is not None and _text(holder) == self.name:
                self.client.delete(self.leader)
        self._renew_at = 0.0

    def claim(self, min_idle_ms: int = CLAIM_IDLE_MS) -> int:
        """Take over the entries other consumers read and never acknowledged."""
        if not self._group_ready:
            self.ensure_group()
        claimed, start = 0, "0-0"
        for _ in range(1000):
            answer = self.client.xautoclaim(
                self.stream, GROUP, self.name, min_idle_ms, start_id=start, count=500
            )
            start = _text(answer[0])
            claimed += len(answer[1])
            if start == "0-0":
                break
        self._claimed_at = time.monotonic()
        self._own_pending = True
        if claimed:
            log.info("ingest consumer %s claimed %d pending entries", self.name, claimed)
        return claimed

    # -- reading ----------------------------------------------------------------------------
    def _read(self, block_ms: int) -> list[tuple[str, dict[str, str] | None]]:
        if not self._group_ready:
            self.ensure_group()
        if self._own_pending:
            own: Any = self.client.xreadgroup(
                GROUP, self.name, {self.stream: "0"}, count=self.read_count
            )
            entries = [(_text(i), _fields(f)) for _, batch in own or [] for i, f in batch]
            if entries:
                return entries
            self._own_pending = False
        if is_memory(self.client):
            if block_ms:
                _memory_wake(self.partition).wait(block_ms / 1000)
            _memory_wake(self.partition).clear()
            block: int | None = None
        else:
            block = block_ms or None
        new: Any = self.client.xreadgroup(
            GROUP, self.name, {self.stream: ">"}, count=self.read_count, block=block
        )
        read = [(_text(i), _fields(f)) for _, batch in new or [] for i, f in batch]
        if 1 < len(read) < self.read_count and self.linger_ms:
            # Steady traffic (more than one entry came while the last batch ran): wait a
            # moment for more, so the batch's fixed cost is shared by more events. A lone
            # entry (quiet traffic) is stored at once: that is when latency shows.
            self.pause(self.linger_ms / 1000)
            more: Any = self.client.xreadgroup(
                GROUP, self.name, {self.stream: ">"}, count=self.read_count - len(read)
            )
            read += [(_text(i), _fields(f)) for _, batch in more or [] for i, f in batch]
        return read

    def process_once(self, block_ms: int | None = None) -> int:
        """Read once (pending entries of our own first) and store what was read. Returns the
        number of entries handled (stored, dead-lettered or acknowledged as gone)."""
        if time.monotonic() - self._claimed_at > CLAIM_EVERY:
            self.claim()
        try:
            read = self._read(self.block_ms if block_ms is None else block_ms)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            log.warning("ingest stream or group missing (Redis lost its data?): recreating")
            self.ensure_group()
            return 0
        if not read:
            return 0
        gone = [i for i, f in read if f is None]
        if gone:
            self._ack(gone)
        entries = [(i, f) for i, f in read if f is not None]
        if not entries:
            return len(gone)
        self._own_pending = True  # until every entry read is acknowledged
        tries = self._count_tries([i for i, _ in entries])
        fresh: list[Entry] = []
        clean = True  # every entry read will have been acknowledged
        for (entry_id, fields), n in zip(entries, tries, strict=True):
            if n > self.max_tries:
                clean = self._dead_letter(entry_id, fields, n - 1) and clean
                continue
            try:
                entry = decode_entry(entry_id, fields)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                reason = f"cannot be decoded: {exc!r}"
                clean = self._dead_letter(entry_id, fields, n, reason) and clean
                continue
            if n > 1:  # failed before: alone, so it cannot hold the others back
                self.pause(min(2.0, 0.5 * (n - 1)))
                outcome = self._store([entry], n)
                if outcome == DB_DOWN:
                    return len(gone)
                clean = outcome == STORED and clean
            else:
                fresh.append(entry)
        for batch in _batches(fresh):
            outcome = self._store(batch, 1)
            if outcome == FAILED and len(batch) > 1:
                for one in batch:  # find the entry that failed the batch
                    if self._store([one], 1) == DB_DOWN:
                        return len(read)
            elif outcome == DB_DOWN:
                return len(read)
            clean = outcome == STORED and clean
        if clean:
            self._own_pending = False  # everything read was stored and acknowledged
        return len(read)

    def drain(self, timeout: float = 30.0) -> int:
        """Process until nothing is left (tests, the demo): the entries handled."""
        if not self.lead():
            raise RuntimeError("another ingest consumer holds the lease")
        handled = 0
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                n = self.process_once(block_ms=0)
                handled += n
                if not n:
                    return handled
        finally:
            self.resign()
        raise TimeoutError(f"the ingest stream was not drained in {timeout} s")

    # -- storing ----------------------------------------------------------------------------
    def _count_tries(self, entry_ids: list[str]) -> list[int]:
        if is_memory(self.client):
            pipe = self.client.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.hincrby(self.tries, entry_id, 1)
            return [int(n) for n in pipe.execute()]
        # One command for the whole read (not one HINCRBY each): the same counts, a fraction
        # of the client's and Redis's CPU when many single-statement entries come at once.
        counted: Any = _script(self.client, TRIES_SCRIPT)(keys=[self.tries], args=entry_ids)
        return [int(n) for n in counted]

    def _store(self, decoded: list[Entry], attempt: int) -> str:
        """Store these entries in one transaction and acknowledge them. On failure they stay
        pending with the error (a lone entry's next attempt counts towards ``max_tries``),
        unless the database itself is unreachable: then the attempt does not count."""
        try:
            with self.db.transaction() as session:
                store_entries(session, decoded)
        except Exception as exc:
            if _transient(exc):
                # Another transaction held what this one needed (partitions share a course's
                # peer rows): not the entries' fault, so the attempt does not count.
                self._uncount([e.stream_id for e in decoded])
                log.warning("ingest consumer: transient conflict (%s); will retry", exc)
                self.pause(0.05)
                return DB_DOWN
            if not self._database_up():
                self._uncount([e.stream_id for e in decoded])
                log.warning("ingest consumer: database unavailable (%s); will retry", exc)
                self.pause(1.0)
                return DB_DOWN
            log.exception(
                "ingest consumer: %d entr%s failed (attempt %d)",
                len(decoded),
                "y" if len(decoded) == 1 else "ies",
                attempt,
            )
            if len(decoded) == 1:
                with contextlib.suppress(redis.RedisError):
                    self.client.hset(
                        self.errors, decoded[0].stream_id, f"{type(exc).__name__}: {exc}"
                    )
            return FAILED
        self._ack([e.stream_id for e in decoded])
        return STORED

    def _database_up(self) -> bool:
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except DBAPIError:
            return False
        except Exception:
            return False
        return True

    def _uncount(self, entry_ids: list[str]) -> None:
        with contextlib.suppress(redis.RedisError):
            pipe = self.client.pipeline(transaction=False)
            for entry_id in entry_ids:
                pipe.hincrby(self.tries, entry_id, -1)
            pipe.execute()

    def _ack(self, entry_ids: list[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xack(self.stream, GROUP, *entry_ids)
        pipe.xdel(self.stream, *entry_ids)
        pipe.hdel(self.tries, *entry_ids)
        pipe.hdel(self.errors, *entry_ids)
        pipe.execute()

    def _dead_letter(
        self, entry_id: str, fields: dict[str, str], tries: int, reason: str | None = None
    ) -> bool:
        """Move an entry to ``ingest_dead_letters`` (then acknowledge it); if the database
        cannot take it, it stays pending and is tried again later: never dropped."""
        if reason is None:
            last = self.client.hget(self.errors, entry_id)
            reason = _text(last) if last is not None else "failed (no error recorded)"
            reason = f"failed {tries} times; last error: {reason}"
        course_id, source, items = None, "", 0
        with contextlib.suppress(Exception):
            data = json.loads(fields["d"])
            course_id, source, items = int(data["c"]), str(data["s"])[:20], len(data["i"])
        try:
            with self.db.transaction() as session:
                session.add(
                    IngestDeadLetter(
                        stream_id=entry_id
                        if self.partition == 0
                        else f"{entry_id}{PARTITION_MARK}{self.partition}",
                        course_id=course_id,
                        source=source,
                        items=items,
                        payload=json.dumps(fields, ensure_ascii=True),
                        reason=reason[:5000],
                        tries=tries,
                    )
                )
        except Exception:
            log.exception("ingest consumer: could not keep dead letter %s; it stays", entry_id)
            return False
        log.error("ingest entry %s moved to the dead letters: %s", entry_id, reason)
        self._ack([entry_id])
        return True

    # -- the loop ---------------------------------------------------------------------------
    def run(self, stop: threading.Event, parent_pid: int | None = None) -> None:
        """Consume until ``stop`` is set (or, given ``parent_pid``, until that process is
        gone). Redis or database trouble is logged and retried with back-off."""
        delay = 0.5
        log.info("ingest consumer %s started (partition %d)", self.name, self.partition)
        try:
            while not stop.is_set():
                if parent_pid is not None and os.getppid() != parent_pid:
                    log.warning("ingest consumer: the worker that started it is gone; stopping")
                    return
                try:
                    if not self.lead():
                        stop.wait(1.0)
                        continue
                    self.process_once()
                    delay = 0.5
                except (redis.RedisError, OSError) as exc:
                    self._renew_at = 0.0
                    self._group_ready = False
                    log.warning("ingest consumer: Redis unavailable (%s); retrying", exc)
                    stop.wait(delay)
                    delay = min(delay * 2, 10.0)
                except Exception:
                    log.exception("ingest consumer: unexpected error; retrying")
                    stop.wait(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            self.resign()
            log.info("ingest consumer %s stopped", self.name)


def start_threads(
    db: Database,
    client: redis.Redis,
    partitions: int,
    stop: threading.Event,
    parent_pid: int | None = None,
    **options: Any,
) -> list[Consumer]:
    """A consumer per partition, each on a daemon thread of this process, until ``stop``
    (``lifeline demo``, ``lifeline activity consume`` without ``--partition``, tests)."""
    consumers = [Consumer(db, client, partition=n, **options) for n in range(partitions)]
    for consumer in consumers:
        consumer.thread = threading.Thread(
            target=consumer.run,
            args=(stop, parent_pid),
            name=f"lifeline-ingest-{consumer.partition}",
            daemon=True,
        )
        consumer.thread.start()
    return consumers


def partitions_in_use(client: redis.Redis, configured: int) -> int:
    """The partitions to consume: the configured ones, and any higher one whose stream still
    holds entries (the setting was lowered: what was accepted before is not left behind)."""
    from ..config import MAX_INGEST_PARTITIONS

    pipe = client.pipeline(transaction=False)
    higher = range(configured, MAX_INGEST_PARTITIONS)
    for partition in higher:
        pipe.exists(stream_key(partition))
    found = [p + 1 for p, exists in zip(higher, pipe.execute(), strict=True) if exists]
    return max([configured, *found])


def run_process(settings: Any, parent_pid: int | None = None, partition: int | None = None) -> None:
    """The consumer as a process of its own (``lifeline worker`` starts one per partition;
    ``lifeline activity consume`` runs one in the foreground: one partition, or every
    partition on threads). Stops on SIGTERM / SIGINT."""
    import signal

    from ..jobs import REDIS_SOCKET_TIMEOUT, install, make_job_redis, worker_context

    if not logging.getLogger().handlers:
        logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(message)s")
    import gc

    context = worker_context(settings)  # its database publishes events and enqueues jobs
    gc.freeze()  # what start-up loaded stays: full collections need not walk it again
    gc.set_threshold(20_000, 50, 1000)  # a batch allocates a lot that dies young
    install(context)
    client = make_job_redis(settings.redis_url, max(REDIS_SOCKET_TIMEOUT, BLOCK_MS / 1000 + 5))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if partition is not None:
            Consumer(context.db, client, partition=partition).run(stop, parent_pid)
            return
        partitions = partitions_in_use(client, settings.stream_partitions)
        consumers = start_threads(context.db, client, partitions, stop, parent_pid)
        threads = [c.thread for c in consumers if c.thread is not None]
        while not stop.wait(1.0):
            if not any(t.is_alive() for t in threads):
                break
        for thread in threads:
            thread.join(timeout=BLOCK_MS / 1000 + 5)
    finally:
        context.db.dispose()


# -- dead letters, for admins --------------------------------------------------------------------


def dead_letters(session: Session, limit: int = 200) -> list[IngestDeadLetter]:
    return list(
        session.scalars(select(IngestDeadLetter).order_by(IngestDeadLetter.id).limit(limit))
    )


def retry_dead_letters(
    session: Session, client: redis.Redis, ids: Sequence[int] | None = None
) -> list[int]:
    """Put dead letters back on the stream (all of them when ``ids`` is None); returns the
    ids put back. Repeats are harmless: PostgreSQL recognises what was stored already."""
    query = select(IngestDeadLetter).order_by(IngestDeadLetter.id)
    if ids is not None:
        query = query.where(IngestDeadLetter.id.in_(list(ids)))
    done: list[int] = []
    for row in session.scalars(query):
        fields = json.loads(row.payload)
        _, mark, partition = row.stream_id.partition(PARTITION_MARK)
        stream = stream_key(int(partition) if mark and partition.isdigit() else 0)
        client.xadd(stream, {k: v for k, v in fields.items() if k in ("d", "m")})
        done.append(row.id)
    if done:
        session.execute(delete(IngestDeadLetter).where(IngestDeadLetter.id.in_(done)))
    return done


@contextlib.contextmanager
def running(db: Database, client: redis.Redis, partitions: int = 1) -> Iterator[Consumer]:
    """A consumer per partition on threads for the duration of the block (tests); yields the
    first partition's."""
    stop = threading.Event()
    consumers = start_threads(db, client, partitions, stop, block_ms=200)
    try:
        yield consumers[0]
    finally:
        stop.set()
        for consumer in consumers:
            if consumer.thread is not None:
                consumer.thread.join(timeout=10)


def drain_all(db: Database, client: redis.Redis, partitions: int, timeout: float = 30.0) -> int:
    """Store everything accepted so far, partition after partition (tests, tools)."""
    return sum(Consumer(db, client, partition=n).drain(timeout) for n in range(partitions))


class ConsumerProcess:
    """The consumer ``lifeline worker`` runs beside its RQ worker: a child process (``lifeline
    activity consume``), so the RQ worker's forks never share its threads or connections.
    ``ensure`` starts it again if it died (the worker calls it from its maintenance)."""

    def __init__(self, partition: int = 0) -> None:
        self.partition = partition
        self.process: subprocess.Popen[bytes] | None = None
        self._next_start = 0.0
        self._delay = 1.0

    def start(self) -> None:
        code = "from lti_tool.cli import main; main()"
        argv = [sys.executable, "-c", code, "activity", "consume", "--parent-pid", str(os.getpid())]
        argv += ["--partition", str(self.partition)]
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # noqa: S603 - our own command
        log.info(
            "ingest consumer process %s started (partition %d)", self.process.pid, self.partition
        )

    def ensure(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        now = time.monotonic()
        if now < self._next_start:
            return
        if self.process is not None:
            log.warning(
                "ingest consumer process exited (%s); starting another", self.process.returncode
            )
            self._delay = min(self._delay * 2, 60.0)
        self._next_start = now + self._delay
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` (a Redis call may block that long; killing
        it is safe: what it read and did not acknowledge is delivered again)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


class ConsumerProcesses:
    """One ``ConsumerProcess`` per partition (``lifeline worker``): partitions are consumed in
    parallel, each by its own process (several cores), one learner's events in order."""

    def __init__(self, partitions: int) -> None:
        self.processes = [ConsumerProcess(n) for n in range(partitions)]

    def start(self) -> None:
        for process in self.processes:
            process.start()

    def ensure(self, client: redis.Redis | None = None) -> None:
        """Start again the processes that died; with ``client``, also one for any partition
        that holds entries and has no process here (the web's setting is higher than this
        worker's: what it accepts must not wait for a restart)."""
        for process in self.processes:
            process.ensure()
        if client is None:
            return
        with contextlib.suppress(redis.RedisError):
            wanted = partitions_in_use(client, len(self.processes))
            for partition in range(len(self.processes), wanted):
                process = ConsumerProcess(partition)
                process.start()
                self.processes.append(process)

    def stop(self, timeout: float = 5.0) -> None:
        for process in self.processes:
            process.stop(timeout)
