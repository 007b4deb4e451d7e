"""What the peers did on each exercise, maintained incrementally as events arrive.

Only events already processed count: when a learner solves an exercise, their numbers
(failures before solving, longest failure streak, attempts, active time) join that exercise's
distributions; nothing is ever read from the future. Distributions are fixed-size histograms
(``Sketch``): exact for small integers, 10 % wide bins above, so a percentile costs a walk
over at most ``Sketch.BINS`` counters (cached until the next solve), whatever the class size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_LINEAR = 32  # values below this are binned by their integer part
_RATIO = 1.1
_LOG_RATIO = math.log(_RATIO)
_TOP = 1e7


class Sketch:
    """A fixed-bin histogram answering percentiles and ranks in bounded time and memory."""

    BINS = _LINEAR + int(math.log(_TOP / _LINEAR) / _LOG_RATIO) + 2

    __slots__ = ("_cache", "counts", "n")

    def __init__(self, counts: dict[int, int] | None = None) -> None:
        self.counts: dict[int, int] = dict(counts or {})
        self.n = sum(self.counts.values())
        self._cache: dict[float, float] = {}

    @staticmethod
    def bin_of(value: float) -> int:
        if value < _LINEAR:
            return max(int(value), 0)
        return min(_LINEAR + int(math.log(value / _LINEAR) / _LOG_RATIO), Sketch.BINS - 1)

    @staticmethod
    def value_of(index: int) -> float:
        if index < _LINEAR:
            return float(index)
        lower = _LINEAR * _RATIO ** (index - _LINEAR)
        return lower * math.sqrt(_RATIO)  # geometric middle of the bin

    def add(self, value: float) -> None:
        b = self.bin_of(value)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.n += 1
        self._cache.clear()

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the values added so far; 0.0 when empty."""
        cached = self._cache.get(q)
        if cached is not None:
            return cached
        result = 0.0
        if self.n:
            rank = max(1, math.ceil(q / 100.0 * self.n))
            seen = 0
            for b in sorted(self.counts):
                seen += self.counts[b]
                if seen >= rank:
                    result = self.value_of(b)
                    break
        self._cache[q] = result
        return result

    def rank(self, value: float) -> float:
        """Share of the values added so far that are <= ``value`` (0.5 when empty)."""
        if not self.n:
            return 0.5
        b = self.bin_of(value)
        return sum(c for k, c in self.counts.items() if k <= b) / self.n

    def as_dict(self) -> dict[str, int]:
        return {str(k): v for k, v in sorted(self.counts.items())}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> Sketch:
        return cls({int(k): int(v) for k, v in data.items()})


# The distributions kept per exercise, over the peers who solved it.
PEER_MEASURES = (
    "failures_before_solve",
    "streak_before_solve",  # the longest run of failures on the way to solving
    "attempts_before_solve",
    "seconds_to_solve",  # active seconds (idle gaps excluded)
    "hints_before_solve",
    "solution_length",  # characters of the code that first passed
)


@dataclass
class ExerciseStats:
    """Counts and distributions for one exercise of one course."""

    started: int = 0
    solved: int = 0
    struggled: int = 0  # learners who asked for a hint or left it unsolved after failing
    hinted: int = 0  # learners who asked for a hint
    failed: int = 0  # learners who failed at least once
    failed_struggled: int = 0  # ... and then asked for a hint or left it unsolved
    first_tries: int = 0  # learners whose first graded attempt we saw
    first_try_correct: int = 0
    submits: int = 0
    failures: int = 0
    sketches: dict[str, Sketch] = field(
        default_factory=lambda: {name: Sketch() for name in PEER_MEASURES}
    )

    def sketch(self, measure: str) -> Sketch:
        return self.sketches[measure]

    def solve_rate(self, prior: float, weight: float) -> float:
        return (self.solved + prior * weight) / (self.started + weight)

    def struggle_rate(self, prior: float, weight: float) -> float:
        return (self.struggled + prior * weight) / (self.started + weight)

    def struggle_after_failing_rate(self, prior: float, weight: float) -> float:
        return (self.failed_struggled + prior * weight) / (self.failed + weight)

    def first_try_rate(self, prior: float, weight: float) -> float:
        return (self.first_try_correct + prior * weight) / (self.first_tries + weight)

    def hint_rate(self, prior: float, weight: float) -> float:
        return (self.hinted + prior * weight) / (self.started + weight)

    def failure_rate(self, prior: float, weight: float) -> float:
        return (self.failures + prior * weight) / (self.submits + weight)

    def as_dict(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "solved": self.solved,
            "struggled": self.struggled,
            "hinted": self.hinted,
            "failed": self.failed,
            "failed_struggled": self.failed_struggled,
            "first_tries": self.first_tries,
            "first_try_correct": self.first_try_correct,
            "submits": self.submits,
            "failures": self.failures,
            "sketches": {k: v.as_dict() for k, v in self.sketches.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExerciseStats:
        stats = cls(
            started=int(data["started"]),
            solved=int(data["solved"]),
            struggled=int(data["struggled"]),
            hinted=int(data.get("hinted", 0)),
            failed=int(data.get("failed", 0)),
            failed_struggled=int(data.get("failed_struggled", 0)),
            first_tries=int(data.get("first_tries", 0)),
            first_try_correct=int(data.get("first_try_correct", 0)),
            submits=int(data["submits"]),
            failures=int(data["failures"]),
        )
        for name, counts in data.get("sketches", {}).items():
            if name in stats.sketches:
                stats.sketches[name] = Sketch.from_dict(counts)
        return stats


class PeerStats:
    """Per-course, per-exercise peer statistics, plus a course-wide total for priors."""

    def __init__(self) -> None:
        self._exercises: dict[tuple[str, str], ExerciseStats] = {}
        self._courses: dict[str, ExerciseStats] = {}

    def exercise(self, course: str, exercise: str) -> ExerciseStats:
        key = (course, exercise)
        found = self._exercises.get(key)
        if found is None:
            found = self._exercises[key] = ExerciseStats()
        return found

    def course(self, course: str) -> ExerciseStats:
        found = self._courses.get(course)
        if found is None:
            found = self._courses[course] = ExerciseStats()
        return found

    def _both(self, course: str, exercise: str) -> Iterator[ExerciseStats]:
        yield self.exercise(course, exercise)
        yield self.course(course)

    def started(self, course: str, exercise: str) -> None:
        for stats in self._both(course, exercise):
            stats.started += 1

    def attempted(self, course: str, exercise: str, failed: bool) -> None:
        for stats in self._both(course, exercise):
            stats.submits += 1
            stats.failures += int(failed)

    def struggled(self, course: str, exercise: str, delta: int = 1, *, failed: bool) -> None:
        for stats in self._both(course, exercise):
            stats.struggled += delta
            stats.failed_struggled += delta if failed else 0

    def first_failure(self, course: str, exercise: str) -> None:
        for stats in self._both(course, exercise):
            stats.failed += 1

    def first_try(self, course: str, exercise: str, correct: bool) -> None:
        for stats in self._both(course, exercise):
            stats.first_tries += 1
            stats.first_try_correct += int(correct)

    def hinted(self, course: str, exercise: str) -> None:
        for stats in self._both(course, exercise):
            stats.hinted += 1

    def solved(self, course: str, exercise: str, values: dict[str, float]) -> None:
        for stats in self._both(course, exercise):
            stats.solved += 1
            for name, value in values.items():
                stats.sketches[name].add(value)

    def as_dict(self) -> dict[str, Any]:
        return {
            "exercises": [
                {"course": c, "exercise": e, **s.as_dict()}
                for (c, e), s in sorted(self._exercises.items())
            ],
            "courses": {c: s.as_dict() for c, s in sorted(self._courses.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeerStats:
        peers = cls()
        for row in data.get("exercises", []):
            peers._exercises[(str(row["course"]), str(row["exercise"]))] = ExerciseStats.from_dict(
                row
            )
        for course, row in data.get("courses", {}).items():
            peers._courses[str(course)] = ExerciseStats.from_dict(row)
        return peers
