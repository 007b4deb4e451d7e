"""No progress: N attempts, or T active minutes, since the last sign of progress.

Progress is a correct answer, a better score, an error fixed, or (where the source has no
scores) a code change of at least ``StateSettings.min_edit_chars`` characters; resubmitting the
same code or nudging a character is not progress (wheel-spinning).
"""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, RuleError, Threshold, Trigger, plural, strength


class NoProgress(Trigger):
    """``{"trigger": "no_progress", "attempts": 4}`` and/or ``"minutes": 15`` (either may be a
    peer threshold: attempts against peers' attempts to solve, minutes against their active
    time to solve). Fires when any criterion given is reached."""

    kind = "no_progress"
    attempts: Threshold | None
    minutes: Threshold | None

    def parse(self, params: Params) -> None:
        self.attempts = params.optional_threshold("attempts", minimum=1, integer=True)
        self.minutes = params.optional_threshold("minutes", minimum=0)
        if self.attempts is None and self.minutes is None:
            raise RuleError(
                f"trigger {self.kind!r}: give at least one of the parameters 'attempts' or"
                " 'minutes'"
            )

    def gate(self) -> Gate:
        if self.minutes is None and self.attempts is not None:
            return ("attempts_since_progress", max(self.attempts.lower_bound, 1))
        return ("attempts_since_progress", 1)

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved or not state.attempts_since_progress:
            return None
        if self.attempts is not None:
            n = state.attempts_since_progress
            met, limit, peers = self.attempts.met(n, ctx.peers.sketch("attempts_before_solve"))
            if met:
                reason = f"{plural(n, 'attempt')} without progress"
                return Fired(strength(n, limit), reason + (f" ({peers})" if peers else ""))
        if self.minutes is not None:
            minutes = state.active_since_progress / 60.0
            sketch = ctx.peers.sketch("seconds_to_solve")
            met, limit, peers = self.minutes.met(minutes, sketch, scale=60.0)
            if met:
                reason = f"{minutes:.0f} active minutes without progress"
                return Fired(strength(minutes, limit), reason + (f" ({peers})" if peers else ""))
        return None
