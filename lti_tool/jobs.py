"""Background jobs on RQ. Jobs take ids, never objects, and are safe to run twice.

In the demo (``jobs_inline``) a job runs in-process at once, on the same Redis stand-in.
"""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue

QUEUE_NAME = "lifeline"


def make_queue(connection: redis.Redis, inline: bool) -> Queue:
    return Queue(QUEUE_NAME, connection=connection, is_async=not inline)


def enqueue(queue: Queue, func: str, *args: Any, **options: Any) -> Any:
    """Enqueue ``func`` (a dotted path) with plain-value arguments."""
    return queue.enqueue(func, *args, **options)
