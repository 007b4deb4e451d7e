"""The same error again and again: a streak of one error, Jadud's EQ, Becker's RED."""

from __future__ import annotations

from .base import Context, Fired, Gate, Params, RuleError, Trigger, strength


class RepeatedError(Trigger):
    """``{"trigger": "repeated_error", "streak": 3}`` and/or ``"eq": 0.6`` (Jadud's Error
    Quotient over at least ``min_pairs`` consecutive attempt pairs) and/or ``"red": 2.0``
    (Becker's Repeated Error Density). Fires when any criterion given is reached."""

    kind = "repeated_error"
    streak: float | None
    eq: float | None
    red: float | None
    min_pairs: int

    def parse(self, params: Params) -> None:
        self.streak = params.optional_number("streak", minimum=2, integer=True)
        self.eq = params.optional_number("eq", minimum=0, maximum=1, exclusive_minimum=True)
        self.red = params.optional_number("red", minimum=0, exclusive_minimum=True)
        self.min_pairs = int(params.number("min_pairs", 3, minimum=1, integer=True))
        if self.streak is None and self.eq is None and self.red is None:
            raise RuleError(
                f"trigger {self.kind!r}: give at least one of the parameters"
                " 'streak', 'eq' or 'red'"
            )

    def gate(self) -> Gate:
        if self.streak is not None and self.eq is None and self.red is None:
            return ("same_error_streak", self.streak)
        return ("attempts", 0)  # only "unsolved"

    def check(self, ctx: Context) -> Fired | None:
        state = ctx.state
        if state.solved:
            return None
        if self.streak is not None and state.same_error_streak >= self.streak:
            return Fired(
                strength(state.same_error_streak, self.streak),
                f"the same error ({state.last_error}) {state.same_error_streak} times in a row",
            )
        if self.eq is not None and state.eq_pairs >= self.min_pairs:
            eq = state.error_quotient
            if eq >= self.eq:
                return Fired(strength(eq, self.eq), f"error quotient {eq:.2f} (errors repeat)")
        if self.red is not None:
            red = state.repeated_error_density
            if red >= self.red:
                return Fired(strength(red, self.red), f"repeated error density {red:.1f}")
        return None
