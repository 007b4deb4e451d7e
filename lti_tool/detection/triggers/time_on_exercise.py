"""Time on the exercise above what peers who solved it needed (active minutes)."""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, Threshold, Trigger, plural, strength


class TimeOnExercise(Trigger):
    """``{"trigger": "time_on_exercise", "minutes": {"peer_percentile": 90, "fallback": 20}}``.

    Active minutes (idle gaps excluded) against the peers' active time to solve. ``min_failures``
    keeps it quiet for a learner who is taking their time but has not failed yet.
    """

    kind = "time_on_exercise"
    minutes: Threshold
    min_failures: int

    def parse(self, params: Params) -> None:
        self.minutes = params.threshold(
            "minutes", {"peer_percentile": 90, "fallback": 20}, minimum=0
        )
        self.min_failures = int(params.number("min_failures", 1, minimum=0, integer=True))

    def gate(self) -> Gate:
        bound = self.minutes.lower_bound
        if bound > 0:
            # ``check`` compares active_seconds / 60 with the threshold; a hair lower in
            # seconds, so that float rounding can never skip a trigger that would fire.
            return ("active_seconds", bound * 60.0 * (1.0 - 1e-9))
        return ("failures", self.min_failures)

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved or state.failures < self.min_failures:
            return None
        minutes = state.active_seconds / 60.0
        sketch = ctx.peers.sketch("seconds_to_solve")
        met, limit, peers = self.minutes.met(minutes, sketch, scale=60.0)
        if not met:
            return None
        reason = f"{plural(round(minutes), 'active minute')} on this exercise"
        return Fired(strength(minutes, limit), reason + (f" ({peers})" if peers else ""))
