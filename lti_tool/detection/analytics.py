"""Where learners get stuck: per exercise of a course, the offers made and accepted, the help
requests, the median wait for a tutor (``claimed_at - created_at``) and the outcomes; a CSV
export and server-rendered SVG bar charts (no script)."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..courses import Exercise
from ..help.models import HelpRequest, Outcome
from .models import Offer, OfferStatus

OUTCOMES = (Outcome.SOLVED, Outcome.PARTLY, Outcome.NOT_SOLVED, Outcome.NO_SHOW)
OUTCOME_LABELS = {
    Outcome.SOLVED: "solved",
    Outcome.PARTLY: "partly",
    Outcome.NOT_SOLVED: "not solved",
    Outcome.NO_SHOW: "no-show",
}
CSV_HEADER = (
    "exercise_id",
    "exercise",
    "flags",
    "offers_accepted",
    "help_requests",
    "median_wait_minutes",
    *(f"outcome_{o.value}" for o in OUTCOMES),
)


@dataclass
class ExerciseStuck:
    exercise_id: int | None  # None: requests that named no exercise
    title: str
    flags: int = 0
    accepted: int = 0
    requests: int = 0
    median_wait_minutes: float | None = None
    outcomes: dict[str, int] = field(default_factory=lambda: {o.value: 0 for o in OUTCOMES})

    @property
    def empty(self) -> bool:
        return not (self.flags or self.accepted or self.requests)


def stuck_by_exercise(session: Session, course_id: int) -> list[ExerciseStuck]:
    """One row per exercise of the course (plus one for requests without an exercise)."""
    rows: dict[int | None, ExerciseStuck] = {
        e.id: ExerciseStuck(e.id, e.title or e.resource_link_id)
        for e in session.scalars(
            select(Exercise).where(Exercise.course_id == course_id).order_by(Exercise.id)
        )
    }

    def row(exercise_id: int | None) -> ExerciseStuck:
        if exercise_id not in rows:
            rows[exercise_id] = ExerciseStuck(exercise_id, "(no exercise)")
        return rows[exercise_id]

    for offered_on, status, count in session.execute(
        select(Offer.exercise_id, Offer.status, func.count())
        .where(Offer.course_id == course_id)
        .group_by(Offer.exercise_id, Offer.status)
    ):
        r = row(offered_on)
        r.flags += count
        if status == OfferStatus.ACCEPTED.value:
            r.accepted += count
    waits: dict[int | None, list[float]] = {}
    for asked_on, outcome, created, claimed in session.execute(
        select(
            HelpRequest.exercise_id,
            HelpRequest.outcome,
            HelpRequest.created_at,
            HelpRequest.claimed_at,
        ).where(HelpRequest.course_id == course_id)
    ):
        r = row(asked_on)
        r.requests += 1
        if outcome in r.outcomes:
            r.outcomes[outcome] += 1
        if claimed is not None:
            waits.setdefault(asked_on, []).append((claimed - created).total_seconds() / 60)
    for exercise_id, values in waits.items():
        rows[exercise_id].median_wait_minutes = round(statistics.median(values), 1)
    return sorted(rows.values(), key=lambda r: (r.exercise_id is None, r.exercise_id or 0))


def outcome_totals(rows: Sequence[ExerciseStuck]) -> list[tuple[str, int]]:
    return [(OUTCOME_LABELS[o], sum(r.outcomes[o.value] for r in rows)) for o in OUTCOMES]


def to_csv(rows: Sequence[ExerciseStuck]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for r in rows:
        title = r.title
        if title[:1] in ("=", "+", "-", "@", "\t", "\r"):
            title = "'" + title  # never a formula in a spreadsheet
        writer.writerow(
            (
                "" if r.exercise_id is None else r.exercise_id,
                title,
                r.flags,
                r.accepted,
                r.requests,
                "" if r.median_wait_minutes is None else f"{r.median_wait_minutes:g}",
                *(r.outcomes[o.value] for o in OUTCOMES),
            )
        )
    return out.getvalue()


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def bar_chart(
    title: str, bars: Sequence[tuple[str, float]], *, unit: str = "", testid: str = "stuck-chart"
) -> Markup:
    """A horizontal bar chart as inline SVG: each bar has a ``<title>`` (the tooltip) and its
    number written next to it."""
    label_w, bar_w, row_h, pad = 180, 300, 24, 8
    height = pad * 2 + row_h * max(1, len(bars)) + 18
    top = max((v for _, v in bars), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" class="chart" '
        f'data-testid="{escape(testid)}" viewBox="0 0 {label_w + bar_w + 70} {height}" '
        f'width="100%" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="14" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not bars:
        parts.append(f'<text x="0" y="{18 + pad + 14}" font-size="12">No data yet.</text>')
    for i, (label, value) in enumerate(bars):
        y = 18 + pad + i * row_h
        width = round(bar_w * value / top, 1) if value > 0 else 0
        shown = f"{_num(value)}{unit}"
        short = label if len(label) <= 26 else label[:25] + "…"
        parts.append(
            '<g class="bar" data-testid="chart-bar">'
            f"<title>{escape(label)}: {escape(shown)}</title>"
            f'<text x="0" y="{y + 15}" font-size="12">{escape(short)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row_h - 8}" '
            f'fill="#3b6fb6"></rect>'
            f'<text x="{label_w + width + 6}" y="{y + 15}" font-size="12" '
            f'data-testid="chart-value">{escape(shown)}</text></g>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (every value in it went through escape())
