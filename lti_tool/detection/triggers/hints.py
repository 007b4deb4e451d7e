"""Hints: used heavily (absolute or against peers), or never asked for after k failures."""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, RuleError, Threshold, Trigger, plural, strength


class Hints(Trigger):
    """``{"trigger": "hints", "at_least": 3}`` (heavy use; may be a peer threshold against
    the hints peers took before solving) or ``{"trigger": "hints", "none_after_failures": 4}``
    (a learner who keeps failing and never asks for a hint). Give exactly one."""

    kind = "hints"
    at_least: Threshold | None
    none_after_failures: int | None

    def parse(self, params: Params) -> None:
        self.at_least = params.optional_threshold("at_least", minimum=1, integer=True)
        none_after = params.optional_number("none_after_failures", minimum=1, integer=True)
        self.none_after_failures = None if none_after is None else int(none_after)
        if (self.at_least is None) == (self.none_after_failures is None):
            raise RuleError(
                f"trigger {self.kind!r}: give exactly one of the parameters 'at_least' or"
                " 'none_after_failures'"
            )

    def gate(self) -> Gate:
        if self.at_least is not None:
            return ("hints", self.at_least.lower_bound)
        assert self.none_after_failures is not None
        return ("failures", self.none_after_failures)

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved:
            return None
        if self.at_least is not None:
            met, limit, peers = self.at_least.met(
                state.hints, ctx.peers.sketch("hints_before_solve")
            )
            if not met:
                return None
            reason = f"{plural(state.hints, 'hint')} so far"
            return Fired(strength(state.hints, limit), reason + (f" ({peers})" if peers else ""))
        assert self.none_after_failures is not None
        if state.hints or state.failures < self.none_after_failures:
            return None
        return Fired(
            strength(state.failures, self.none_after_failures),
            f"{plural(state.failures, 'failed attempt')} and no hint asked for",
        )
