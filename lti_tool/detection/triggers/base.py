"""What every trigger kind shares: the context it reads, what it answers, thresholds, checks."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ...activity.model import ActivityEvent
from ..peers import ExerciseStats, Sketch
from ..state import ExerciseState, LearnerState


class RuleError(ValueError):
    """A rule or trigger definition is invalid; the message names the offending parameter."""


@dataclass(frozen=True)
class Context:
    """What a trigger may look at: this learner's counters, the peers so far, the time."""

    state: ExerciseState
    learner: LearnerState
    peers: ExerciseStats
    now: float  # POSIX seconds
    event: ActivityEvent | None  # None when the engine checks on a tick


@dataclass(frozen=True)
class Fired:
    """A trigger that fired: how far past its threshold (0..1) and why, in plain words."""

    strength: float
    reason: str


def strength(value: float, threshold: float) -> float:
    """0.5 just at the threshold, 1.0 at twice it (and beyond), 0 well below it."""
    if threshold <= 0:
        return 1.0 if value > 0 else 0.0
    return max(0.0, min(1.0, (value - threshold) / (2.0 * threshold) + 0.5))


class Params:
    """Reads a trigger's parameters, naming the trigger and the parameter in every error."""

    def __init__(self, kind: str, raw: Mapping[str, Any]) -> None:
        self.kind = kind
        self.raw = dict(raw)
        self.used: set[str] = {"trigger"}

    def fail(self, name: str, message: str) -> RuleError:
        return RuleError(f"trigger {self.kind!r}: parameter {name!r} {message}")

    def has(self, name: str) -> bool:
        return self.raw.get(name) is not None

    def number(
        self,
        name: str,
        default: float | None = None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        integer: bool = False,
        exclusive_minimum: bool = False,
    ) -> float:
        self.used.add(name)
        value = self.raw.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(name, f"must be a number, not {value!r}")
        if not math.isfinite(value):
            raise self.fail(name, f"must be a finite number, not {value!r}")
        if integer and value != int(value):
            raise self.fail(name, f"must be a whole number, not {value!r}")
        if minimum is not None:
            if exclusive_minimum and not value > minimum:
                raise self.fail(name, f"must be > {minimum:g}, not {value!r}")
            if not exclusive_minimum and value < minimum:
                raise self.fail(name, f"must be >= {minimum:g}, not {value!r}")
        if maximum is not None and value > maximum:
            raise self.fail(name, f"must be <= {maximum:g}, not {value!r}")
        return float(value)

    def optional_number(self, name: str, **kw: Any) -> float | None:
        self.used.add(name)
        if self.raw.get(name) is None:
            return None
        return self.number(name, **kw)

    def threshold(
        self, name: str, default: Any = None, *, minimum: float = 0.0, integer: bool = False
    ) -> Threshold:
        self.used.add(name)
        value = self.raw.get(name, default)
        if value is None:
            raise self.fail(name, "is required")
        return Threshold.parse(self, name, value, minimum=minimum, integer=integer)

    def optional_threshold(self, name: str, **kw: Any) -> Threshold | None:
        self.used.add(name)
        if self.raw.get(name) is None:
            return None
        return self.threshold(name, **kw)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        self.used.add(name)
        value = self.raw.get(name, default)
        if value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise RuleError(
                f"trigger {self.kind!r}: unknown parameter {unknown[0]!r}"
                f" (known: {', '.join(sorted(self.used - {'trigger'}))})"
            )


@dataclass(frozen=True)
class Threshold:
    """An absolute number, or a percentile of what peers who solved the exercise needed.

    JSON: ``3`` or ``{"peer_percentile": 80, "fallback": 3, "min_peers": 5, "floor": 2}``.
    A peer-relative threshold uses ``fallback`` while fewer than ``min_peers`` peers have
    solved the exercise, and never goes below ``floor``.
    """

    value: float | None = None
    peer_percentile: float | None = None
    fallback: float = 0.0
    min_peers: int = 5
    floor: float = 0.0

    @classmethod
    def parse(
        cls, params: Params, name: str, raw: Any, *, minimum: float, integer: bool
    ) -> Threshold:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            sub = Params(params.kind, {name: raw})
            return cls(value=sub.number(name, minimum=minimum, integer=integer))
        if not isinstance(raw, Mapping):
            raise params.fail(name, f"must be a number or a peer threshold object, not {raw!r}")
        sub = Params(params.kind, {f"{name}.{k}": v for k, v in raw.items()})
        pct = sub.number(f"{name}.peer_percentile", minimum=0, maximum=100)
        fallback = sub.number(f"{name}.fallback", minimum=minimum, integer=integer)
        min_peers = sub.number(f"{name}.min_peers", 5, minimum=1, integer=True)
        floor = sub.number(f"{name}.floor", minimum, minimum=minimum)
        unknown = sorted(set(sub.raw) - sub.used)
        if unknown:
            raise params.fail(
                unknown[0],
                "is unknown (a peer threshold takes peer_percentile, fallback, min_peers, floor)",
            )
        return cls(peer_percentile=pct, fallback=fallback, min_peers=int(min_peers), floor=floor)

    @property
    def lower_bound(self) -> float:
        """No value below this can reach the threshold, whatever the peers did (an absolute
        threshold is its value; a peer threshold is never met below its floor)."""
        return self.value if self.value is not None else self.floor

    def met(
        self, value: float, sketch: Sketch | None, scale: float = 1.0
    ) -> tuple[bool, float, str]:
        """Whether ``value`` reaches the threshold in force now, the threshold, a description.

        Absolute thresholds and the fallback are reached at ``value >= threshold``; a peer
        percentile must be exceeded (``value > percentile``, and ``value >= floor``). Peer
        values are divided by ``scale`` first (peers' seconds against a threshold in minutes).
        """
        if self.value is not None:
            return value >= self.value, self.value, ""
        assert self.peer_percentile is not None
        if sketch is None or sketch.n < self.min_peers:
            limit = max(self.fallback, self.floor)
            return value >= limit, limit, ""
        pct = sketch.percentile(self.peer_percentile) / scale
        reached = value > pct and value >= self.floor
        desc = f"more than {self.peer_percentile:g}% of the {sketch.n} classmates who solved it"
        return reached, max(pct, self.floor), desc

    def as_json(self) -> Any:
        if self.value is not None:
            return self.value
        return {
            "peer_percentile": self.peer_percentile,
            "fallback": self.fallback,
            "min_peers": self.min_peers,
            "floor": self.floor,
        }


Gate = tuple[str, float]  # (an ExerciseState field, the least value it needs): see Trigger.gate


class Trigger:
    """One kind of signal. Subclasses set ``kind`` and implement ``parse`` and ``check``."""

    kind: ClassVar[str]
    # True when the answer can change with time alone (then ``due_at`` says when to look).
    time_based: ClassVar[bool] = False

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = {k: v for k, v in raw.items() if k != "trigger"}
        params = Params(self.kind, raw)
        self.parse(params)
        params.done()

    def parse(self, params: Params) -> None:
        raise NotImplementedError

    def check(self, ctx: Context) -> Fired | None:
        raise NotImplementedError

    def due_at(self, state: ExerciseState) -> float | None:
        """When, without another event, this trigger could next fire (time-based kinds)."""
        return None

    def gate(self) -> Gate | None:
        """A cheap necessary condition for ``check`` to fire, or None (always check).

        ``(field, bound)`` promises: ``check`` returns None unless the exercise is unsolved and
        ``getattr(state, field) >= bound``. The engine uses it to skip, in one comparison per
        field, the rules that cannot fire on this event; it must never be wrong (a gate that
        holds does not mean the trigger fires, only that it has to be checked).
        """
        return None

    def as_json(self) -> dict[str, Any]:
        return {"trigger": self.kind, **self.raw}


def plural(n: float, word: str) -> str:
    count = int(n) if float(n).is_integer() else n
    return f"{count:g} {word}" + ("" if count == 1 else "s")
