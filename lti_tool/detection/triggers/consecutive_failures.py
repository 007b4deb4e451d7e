"""Consecutive failures: the learner failed N times in a row (absolute or peer-relative)."""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, Threshold, Trigger, plural, strength


class ConsecutiveFailures(Trigger):
    """``{"trigger": "consecutive_failures", "threshold": 3}``, or relative to peers:
    ``"threshold": {"peer_percentile": 80, "fallback": 4, "floor": 2}`` compares the current
    run of failures with the longest run the peers who solved the exercise went through."""

    kind = "consecutive_failures"
    threshold: Threshold

    def parse(self, params: Params) -> None:
        self.threshold = params.threshold("threshold", 3, minimum=1, integer=True)

    def gate(self) -> Gate:
        return ("consecutive_failures", max(self.threshold.lower_bound, 1))

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved or not state.consecutive_failures:
            return None
        run = state.consecutive_failures
        met, limit, peers = self.threshold.met(run, ctx.peers.sketch("streak_before_solve"))
        if not met:
            return None
        reason = f"{plural(run, 'failed attempt')} in a row"
        return Fired(strength(run, limit), reason + (f" ({peers})" if peers else ""))
