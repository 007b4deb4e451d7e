"""The learner's own "I'm stuck" (an event of kind ``stuck``)."""

from __future__ import annotations

from ...activity.model import ActivityKind
from .base import Context, Fired, Params, Trigger


class SelfReport(Trigger):
    """``{"trigger": "stuck"}``: fires on the learner's own request, whatever else is true."""

    kind = "stuck"

    def parse(self, params: Params) -> None:
        pass

    def check(self, ctx: Context) -> Fired | None:
        if ctx.event is None or ctx.event.kind is not ActivityKind.STUCK:
            return None
        return Fired(1.0, "asked for help")
