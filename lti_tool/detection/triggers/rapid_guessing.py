"""Rapid guessing: several failed attempts, each close on the heels of the previous one.

"Close" is ``StateSettings.rapid_gap_seconds`` (a measurement setting of the engine).
"""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, Trigger, strength


class RapidGuessing(Trigger):
    """``{"trigger": "rapid_guessing", "count": 3}``."""

    kind = "rapid_guessing"
    count: int

    def parse(self, params: Params) -> None:
        self.count = int(params.number("count", 3, minimum=2, integer=True))

    def gate(self) -> Gate:
        return ("rapid_streak", self.count)

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved or state.rapid_streak < self.count:
            return None
        return Fired(
            strength(state.rapid_streak, self.count),
            f"{state.rapid_streak} quick failed attempts in a row (guessing?)",
        )
