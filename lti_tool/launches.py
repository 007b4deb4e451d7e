"""The launches a browser holds: validated launch data kept in Redis, referenced from the
signed session cookie. Losing Redis only means launching again from the LMS."""

from __future__ import annotations

import json
from dataclasses import dataclass

import redis

from .courses import LaunchRecord
from .lti.launch import Launch

MAX_LAUNCHES_PER_BROWSER = 10


@dataclass(frozen=True)
class ActiveLaunch:
    launch: Launch
    record: LaunchRecord


def _key(launch_id: str) -> str:
    return "lifeline:launch:" + launch_id


def store(client: redis.Redis, active: ActiveLaunch, ttl: int) -> None:
    payload = {
        "launch": active.launch.to_json(),
        "record": {
            "person_id": active.record.person_id,
            "course_id": active.record.course_id,
            "exercise_id": active.record.exercise_id,
        },
    }
    client.set(_key(active.launch.launch_id), json.dumps(payload), ex=ttl)


def load(client: redis.Redis, launch_id: str) -> ActiveLaunch | None:
    if len(launch_id) > 64:
        return None
    raw = client.get(_key(launch_id))
    if raw is None:
        return None
    payload = json.loads(raw)
    return ActiveLaunch(Launch.from_json(payload["launch"]), LaunchRecord(**payload["record"]))


def remember(ids: list[str], launch_id: str) -> list[str]:
    """The browser's launch ids, newest last, at most MAX_LAUNCHES_PER_BROWSER."""
    kept = [i for i in ids if i != launch_id][-(MAX_LAUNCHES_PER_BROWSER - 1) :]
    return [*kept, launch_id]
