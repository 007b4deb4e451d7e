"""CPU per xAPI statement of the web's in-process work on a batch, without any server:
``xapi.parse_statement`` alone, and parse + ``pipeline.digest`` of the compare text +
``pipeline.encode_entry`` of the batch (what a POST of a batch does before Redis).

time.process_time over --batches batches of --size statements, median of --repeats rounds, in
µs per statement, for two sets of statements:

  ordinary  shaped like ``statement()`` of benchmarks/ingest.py (account actor, ``answered``,
            an Activity, result.success and response, a ``Z`` timestamp, an id)
  mixed     Open edX-like: ``evaluated`` / ``completed`` / ``attempted`` / ``asked`` verbs,
            GroupActivity objects and the questions under them, mbox actors, result.score
            (scaled, raw/min/max), extensions, contextActivities, timestamps with offsets

Each round decodes its statements afresh from JSON text (outside the timing), as the web gets
them. As the reference, in the same run: ``json.loads`` + ``json.dumps(sort_keys=True)`` of the
same statements (a floor for any parser that canonicalises its input).

``--baseline DIR`` also measures the xapi.py and ingest.py in DIR (e.g. copies of an earlier
version) beside the current ones.

    .venv/bin/python benchmarks/xapi_parse_cpu.py [--batches 20] [--size 500] [--repeats 5]
"""

from __future__ import annotations

import os
import sys

sys.path[:] = [  # this folder holds a queue.py: keep it off the path (as benchmarks/ingest.py)
    p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))
]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402
from typing import Any  # noqa: E402

from lti_tool.activity import pipeline, xapi  # noqa: E402
from lti_tool.activity.ingest import Scope  # noqa: E402

LMS = "https://lms.ingest-bench.example"
ADL = "http://adlnet.gov/expapi/verbs/"
EDX = "http://localhost:18000"
ACROSSX = "https://w3id.org/xapi/acrossx/verbs/"
SCOPE = Scope(1, 1)

Parse = Callable[[Any, int, dt.datetime], Any]


def ordinary(rng: random.Random, stamp: str) -> dict[str, Any]:
    """As ``statement()`` in benchmarks/ingest.py."""
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "actor": {
            "objectType": "Agent",
            "account": {"homePage": LMS, "name": f"bench-learner-{rng.randrange(200)}"},
        },
        "verb": {"id": ADL + "answered", "display": {"en-US": "answered"}},
        "object": {
            "objectType": "Activity",
            "id": f"{LMS}/activity/bench-link-{rng.randrange(50)}",
        },
        "result": {"success": rng.random() < 0.5, "response": "print(x)"},
        "timestamp": stamp,
    }


def _edx_block(n: int) -> str:
    return f"block-v1:edX+DemoX+Demo_Course+type@problem+block@{n:032x}"


def mixed(rng: random.Random, stamp: str) -> dict[str, Any]:
    """Open edX-like statements (event-routing-backends' shapes), a mix of verbs and objects."""
    block = _edx_block(rng.randrange(40))
    statement_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if rng.random() < 0.3:
        actor: dict[str, Any] = {
            "objectType": "Agent",
            "mbox": f"mailto:learner{rng.randrange(200)}@example.edu",
            "name": "A Learner",
        }
    else:
        actor = {
            "objectType": "Agent",
            "account": {"homePage": EDX, "name": str(uuid.UUID(int=rng.getrandbits(128)))},
        }
    verb, object_type, object_id = ACROSSX + "evaluated", "Activity", f"{EDX}/xblock/{block}"
    result: dict[str, Any] | None = None
    parents: list[dict[str, Any]] = [
        {
            "id": f"{EDX}/course/course-v1:edX+DemoX+Demo_Course",
            "objectType": "Activity",
            "definition": {
                "name": {"en-US": "Demonstration Course"},
                "type": "http://adlnet.gov/expapi/activities/course",
            },
        }
    ]
    roll = rng.random()
    if roll < 0.3:
        object_type = "GroupActivity"
        raw = rng.randrange(4)
        result = {
            "score": {"min": 0, "max": 3, "raw": raw, "scaled": round(raw / 3, 4)},
            "success": raw == 3,
        }
    elif roll < 0.5:
        object_id = f"{EDX}/xblock/{block}_{rng.randrange(2, 5)}_1"
        result = {"response": rng.choice(["yellow", "a bookshelf", "42"]), "success": False}
        parents = [
            {
                "id": f"{EDX}/xblock/{block}",
                "objectType": "GroupActivity",
                "definition": {"name": {"en-US": "Multiple Choice Questions"}},
            }
        ]
    elif roll < 0.65:
        verb = ADL + "completed"
        result = {"completion": True, "score": {"scaled": rng.random()}, "duration": "PT1M30S"}
    elif roll < 0.75:
        verb = ADL + "attempted"
    elif roll < 0.85:
        verb = ADL + "asked"
        object_id = f"{EDX}/xblock/{block}/hint/1"
    else:
        verb = ADL + "ran"
        result = {
            "extensions": {
                "https://example.edu/xapi/extensions/runtime-error": "NameError: x",
                "https://example.edu/xapi/extensions/attempt": rng.randrange(9),
            }
        }
    statement: dict[str, Any] = {
        "id": statement_id,
        "actor": actor,
        "verb": {"id": verb, "display": {"en": verb.rsplit("/", 1)[-1], "fr": "évalué"}},
        "object": {
            "objectType": object_type,
            "id": object_id,
            "definition": {
                "type": "http://adlnet.gov/expapi/activities/cmi.interaction",
                "name": {"en-US": "Multiple Choice Questions"},
                "interactionType": "other",
            },
        },
        "context": {
            "contextActivities": {"parent": parents},
            "extensions": {
                "https://w3id.org/xapi/openedx/extension/transformer-version": (
                    "event-routing-backends@1.1.1"
                ),
                "https://w3id.org/xapi/openedx/extensions/session-id": f"{rng.getrandbits(56):x}",
            },
        },
        "timestamp": stamp,
        "version": "1.0.3",
    }
    if result is not None:
        statement["result"] = result
    return statement


def batches_text(
    make: Callable[[random.Random, str], dict[str, Any]], batches: int, size: int, seed: int
) -> list[str]:
    rng = random.Random(seed)
    now = dt.datetime.now(dt.UTC)
    out = []
    for _ in range(batches):
        items = []
        for _ in range(size):
            when = now - dt.timedelta(seconds=rng.randrange(3600))
            if make is mixed and rng.random() < 0.5:
                stamp = when.astimezone(dt.timezone(dt.timedelta(hours=-5))).isoformat()
            else:
                stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
            items.append(make(rng, stamp))
        out.append(json.dumps(items, separators=(",", ":")))
    return out


def time_parse(parse: Parse, texts: list[str], encode: bool) -> float:
    """CPU seconds for parsing (and digesting + encoding) every batch in ``texts``."""
    decoded = [json.loads(t) for t in texts]
    now = dt.datetime.now(dt.UTC)
    digest, encode_entry = pipeline.digest, pipeline.encode_entry
    start = time.process_time()
    for batch in decoded:
        items = [parse(s, i, now) for i, s in enumerate(batch)]
        if encode:
            digests = [digest(item.compare) for item in items]
            encode_entry(SCOPE, "xapi", 1, now, items, digests)
    return time.process_time() - start


def time_floor(texts: list[str]) -> float:
    """``json.loads`` + ``json.dumps(sort_keys=True)`` of each statement of each batch."""
    decoded = [json.loads(t) for t in texts]
    per_statement = [[json.dumps(s, separators=(",", ":")) for s in batch] for batch in decoded]
    dumps, loads = json.dumps, json.loads
    start = time.process_time()
    for batch in per_statement:
        for text in batch:
            dumps(loads(text), sort_keys=True, separators=(",", ":"))
    return time.process_time() - start


def load_baseline(folder: Path) -> ModuleType:
    """xapi.py of ``folder`` as a module of the package, importing ``folder``'s ingest.py."""
    ingest_name = "lti_tool.activity._baseline_ingest"
    modules: dict[str, ModuleType] = {}
    for name, source in (
        (ingest_name, (folder / "ingest.py").read_text()),
        (
            "lti_tool.activity._baseline_xapi",
            (folder / "xapi.py")
            .read_text()
            .replace("from .ingest import", "from ._baseline_ingest import"),
        ),
    ):
        spec = importlib.util.spec_from_loader(name, loader=None)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "lti_tool.activity"
        sys.modules[name] = module
        exec(compile(source, str(folder / name.rsplit("_", 1)[-1]), "exec"), module.__dict__)
        modules[name] = module
    return modules["lti_tool.activity._baseline_xapi"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", type=Path, help="a folder with xapi.py and ingest.py")
    args = parser.parse_args()

    parsers: dict[str, Parse] = {"current": xapi.parse_statement}
    if args.baseline:
        parsers = {"baseline": load_baseline(args.baseline).parse_statement, **parsers}
    sets = {
        "ordinary": batches_text(ordinary, args.batches, args.size, 1),
        "mixed": batches_text(mixed, args.batches, args.size, 2),
    }
    count = args.batches * args.size
    for set_name, texts in sets.items():
        rounds: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, round by round
            rounds.setdefault("json floor", []).append(time_floor(texts))
            for name, parse in parsers.items():
                rounds.setdefault(f"{name} parse", []).append(time_parse(parse, texts, False))
                rounds.setdefault(f"{name} parse+digest+encode", []).append(
                    time_parse(parse, texts, True)
                )
        print(f"{set_name}: {count} statements, median of {args.repeats}, CPU µs per statement")
        for name, seconds in rounds.items():
            print(f"  {name:34} {statistics.median(seconds) / count * 1e6:7.2f}")


if __name__ == "__main__":
    main()
