"""Silent after a failure: no event on the exercise for T minutes after a failed attempt.

Time-based: the engine asks ``due_at`` when to look again and checks it on ``Engine.tick``.
"""

from __future__ import annotations

from ..state import ExerciseState
from .base import Context, Fired, Gate, Params, Trigger, plural


class SilentAfterFailure(Trigger):
    """``{"trigger": "silent_after_failure", "minutes": 10, "min_failures": 1}``."""

    kind = "silent_after_failure"
    time_based = True
    minutes: float
    min_failures: int

    def parse(self, params: Params) -> None:
        self.minutes = params.number("minutes", 10, minimum=0, exclusive_minimum=True)
        self.min_failures = int(params.number("min_failures", 1, minimum=1, integer=True))

    def gate(self) -> Gate:
        return ("failures", self.min_failures)

    def _armed(self, state: ExerciseState) -> bool:
        return (
            not state.solved
            and state.last_event_failed
            and state.failures >= self.min_failures
            and state.last_at is not None
        )

    def due_at(self, state: ExerciseState) -> float | None:
        if not self._armed(state):
            return None
        assert state.last_at is not None
        return state.last_at + self.minutes * 60.0

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if not self._armed(state):
            return None
        silent = ctx.now - (state.last_at or ctx.now)
        if silent < self.minutes * 60.0:
            return None
        return Fired(
            0.5,
            f"stopped after {plural(state.failures, 'failed attempt')}"
            f" ({silent / 60.0:.0f} minutes without another try)",
        )
