"""The instructor's side of stuck detection: trigger settings per course and per exercise (a
form, plus the rule book as JSON), a backtest of candidate rules against the course's past
activity, and where learners get stuck (charts, table, CSV)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.wrappers import Response as BaseResponse

from ..courses import Exercise
from ..detection import analytics, backtest, live
from ..detection.models import DetectionRules
from ..detection.rules import DEFAULT_RULES, RuleBook, default_rules
from ..detection.triggers import KINDS, RuleError
from ..lti.roles import Audience
from .auth import LaunchContext, launch_context
from .transaction import db_session

bp = Blueprint("detection", __name__, url_prefix="/l/<launch_id>/course/detection")

# Per trigger kind: (parameter, takes a peer-relative threshold, what it means).
PARAMS: dict[str, tuple[tuple[str, bool, str], ...]] = {
    "consecutive_failures": (("threshold", True, "failed attempts in a row"),),
    "repeated_error": (
        ("streak", False, "same error this many times in a row"),
        ("eq", False, "Error Quotient at least (0-1)"),
        ("red", False, "Repeated Error Density at least"),
        ("min_pairs", False, "EQ needs this many attempt pairs"),
    ),
    "no_progress": (
        ("attempts", True, "attempts since the last progress"),
        ("minutes", True, "active minutes since the last progress"),
    ),
    "time_on_exercise": (
        ("minutes", True, "active minutes on the exercise"),
        ("min_failures", False, "only after this many failures"),
    ),
    "silent_after_failure": (
        ("minutes", False, "minutes of silence after a failed attempt"),
        ("min_failures", False, "only after this many failures"),
    ),
    "rapid_guessing": (("count", False, "quick failed attempts in a row"),),
    "hints": (
        ("at_least", True, "hints asked at least"),
        ("none_after_failures", False, "no hint asked after this many failures"),
    ),
    "stuck": (),
}
KIND_LABELS = {
    "consecutive_failures": "Consecutive failures",
    "repeated_error": "Repeated error",
    "no_progress": "No progress",
    "time_on_exercise": "Time on exercise",
    "silent_after_failure": "Silent after failing",
    "rapid_guessing": "Rapid guessing",
    "hints": "Hints",
    "stuck": "Learner says \u201cI'm stuck\u201d",
}
PEER_FIELDS = ("pct", "fallback", "min_peers", "floor")
PEER_KEYS = {
    "pct": "peer_percentile",
    "fallback": "fallback",
    "min_peers": "min_peers",
    "floor": "floor",
}
MAX_RULES = 12
MAX_CONDITIONS = 6
assert set(PARAMS) == set(KINDS), "every trigger kind needs its form fields"


class FormError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _context(launch_id: str) -> LaunchContext:
    return launch_context(db_session(), launch_id, Audience.INSTRUCTOR)


def _exercises(ctx: LaunchContext) -> list[Exercise]:
    return list(
        db_session().scalars(
            select(Exercise).where(Exercise.course_id == ctx.course.id).order_by(Exercise.id)
        )
    )


# -- the stored rule book ------------------------------------------------------------------


def stored_raw(course_id: int) -> dict[str, Any]:
    """The course's rules JSON as the form edits it (the defaults when nothing is stored)."""
    row = db_session().get(DetectionRules, course_id)
    raw: dict[str, Any] = copy.deepcopy(row.rules) if row is not None and row.rules else {}
    escalate = bool(raw.pop("escalate", False))
    if not raw:
        raw = copy.deepcopy(DEFAULT_RULES)
    return {"escalate": escalate, **raw}


def book_of(raw: Mapping[str, Any]) -> RuleBook:
    body = {k: v for k, v in raw.items() if k != "escalate"}
    return RuleBook.parse(body) if body else default_rules()


# -- JSON → form values ----------------------------------------------------------------------


def _leaves(when: Any) -> tuple[str, list[dict[str, Any]]] | None:
    """(combine, leaves) when the condition is one leaf or one AND/OR of leaves."""
    if isinstance(when, dict) and "trigger" in when:
        return "all", [when]
    if isinstance(when, dict) and len(when) == 1:
        op = next(iter(when))
        children = when[op]
        if (
            op in ("all", "any")
            and isinstance(children, list)
            and all(isinstance(c, dict) and "trigger" in c for c in children)
        ):
            return op, children
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _condition_values(leaf: Mapping[str, Any]) -> dict[str, str]:
    kind = str(leaf.get("trigger", ""))
    values = {"kind": kind}
    for param, peer, _ in PARAMS.get(kind, ()):
        raw = leaf.get(param)
        base = f"{kind}_{param}"
        if isinstance(raw, dict) and peer:
            values[base + "_mode"] = "peer"
            for short, key in PEER_KEYS.items():
                values[f"{base}_{short}"] = _fmt(raw.get(key))
        else:
            values[base] = _fmt(raw)
            if peer:
                values[base + "_mode"] = "abs"
    return values


def form_defaults(raw: Mapping[str, Any], scope: int | None) -> dict[str, str]:
    """The form's field values for a rule book (course scope) or one exercise's override."""
    values: dict[str, str] = {}
    if scope is None:
        rules = list(raw.get("rules", []))
        policy = raw.get("policy", {}) or {}
        values["cooldown_minutes"] = _fmt(policy.get("cooldown_minutes", 30))
        values["daily_limit"] = _fmt(policy.get("daily_limit", 3))
        values["full_capacity_min_severity"] = _fmt(policy.get("full_capacity_min_severity", 0.8))
        if raw.get("escalate"):
            values["escalate"] = "on"
    else:
        override = (raw.get("exercises") or {}).get(str(scope)) or {}
        rules = list(override.get("rules", []))
        if override.get("inherit", True):
            values["inherit"] = "on"
    slots = min(MAX_RULES, len(rules) + 1)
    values["rule_count"] = str(slots)
    for i in range(slots):
        p = f"r{i}_"
        rule = rules[i] if i < len(rules) else {}
        values[p + "name"] = str(rule.get("name", ""))
        values[p + "severity"] = _fmt(rule.get("severity", 0.5))
        if rule.get("escalate", True):
            values[p + "escalate"] = "on"
        values[p + "escalate_after"] = _fmt(rule.get("escalate_after_failures", 2))
        values[p + "message"] = str(rule.get("message") or "")
        split = _leaves(rule.get("when")) if rule else ("all", [])
        if split is None:
            values[p + "when_json"] = json.dumps(rule.get("when"), indent=1)
            values[p + "cond_count"] = "0"
            continue
        combine, leaves = split
        values[p + "combine"] = combine
        count = min(MAX_CONDITIONS, max(2, len(leaves) + 1))
        values[p + "cond_count"] = str(count)
        for j, leaf in enumerate(leaves[:count]):
            for key, value in _condition_values(leaf).items():
                values[f"{p}c{j}_{key}"] = value
    return values


# -- form → JSON -----------------------------------------------------------------------------


def _number(form: Mapping[str, str], field: str, label: str, *, integer: bool = False) -> Any:
    text = form.get(field, "").strip()
    if not text:
        raise FormError(field, f"{label} is required")
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise FormError(field, f"{label} must be {kind}, not {text[:40]!r}") from None
    if not integer and float(value).is_integer():
        return int(value)
    return value


def _count(form: Mapping[str, str], field: str, limit: int) -> int:
    text = form.get(field, "0").strip()
    if not (text.isascii() and text.isdigit()) or int(text) > limit:
        raise FormError(field, f"must be a whole number up to {limit}")
    return int(text)


def _condition(form: Mapping[str, str], p: str, label: str) -> dict[str, Any] | None:
    kind = form.get(p + "kind", "").strip()
    if not kind:
        return None
    if kind not in PARAMS:
        raise FormError(p + "kind", f"{label}: unknown trigger kind {kind[:40]!r}")
    leaf: dict[str, Any] = {"trigger": kind}
    for param, peer, _ in PARAMS[kind]:
        base = f"{p}{kind}_{param}"
        name = f"{label}, {KIND_LABELS[kind]} {param}"
        mode = form.get(base + "_mode", "abs") if peer else "abs"
        if mode not in ("abs", "peer"):
            raise FormError(base + "_mode", f"{name}: choose absolute or peer-relative")
        if mode == "peer":
            threshold: dict[str, Any] = {}
            for short, key in PEER_KEYS.items():
                field = f"{base}_{short}"
                if short in ("pct", "fallback") or form.get(field, "").strip():
                    threshold[key] = _number(
                        form, field, f"{name} {key}", integer=short == "min_peers"
                    )
            leaf[param] = threshold
        elif form.get(base, "").strip():
            leaf[param] = _number(form, base, name)
    return leaf


def rules_from_form(form: Mapping[str, str]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(_count(form, "rule_count", MAX_RULES)):
        p = f"r{i}_"
        if form.get(p + "remove"):
            continue
        name = form.get(p + "name", "").strip()
        label = f"rule {i + 1}" + (f" ({name!r})" if name else "")
        when_text = form.get(p + "when_json", "").strip()
        leaves = [
            leaf
            for j in range(_count(form, p + "cond_count", MAX_CONDITIONS))
            if (leaf := _condition(form, f"{p}c{j}_", f"{label}, condition {j + 1}")) is not None
        ]
        if not name and not leaves and not when_text:
            continue  # an empty slot
        if not name:
            raise FormError(p + "name", f"{label}: give the rule a name")
        if when_text:
            try:
                when: Any = json.loads(when_text)
            except json.JSONDecodeError as exc:
                raise FormError(p + "when_json", f"{label}: invalid JSON ({exc.msg})") from None
        elif not leaves:
            raise FormError(p + "c0_kind", f"{label}: pick at least one trigger")
        elif len(leaves) == 1:
            when = leaves[0]
        else:
            combine = form.get(p + "combine", "all")
            if combine not in ("all", "any"):
                raise FormError(p + "combine", f"{label}: combine with all (AND) or any (OR)")
            when = {combine: leaves}
        rule: dict[str, Any] = {
            "name": name,
            "severity": _number(form, p + "severity", f"{label} severity"),
            "escalate": bool(form.get(p + "escalate")),
            "escalate_after_failures": _number(
                form, p + "escalate_after", f"{label} escalate after failures", integer=True
            ),
            "when": when,
        }
        message = form.get(p + "message", "").strip()
        if message:
            rule["message"] = message
        rules.append(rule)
    return rules


def candidate_from_form(
    current: Mapping[str, Any], form: Mapping[str, str], scope: int | None
) -> dict[str, Any]:
    raw = copy.deepcopy(dict(current))
    rules = rules_from_form(form)
    if scope is None:
        raw["rules"] = rules
        raw["policy"] = {
            "cooldown_minutes": _number(form, "cooldown_minutes", "cooldown (minutes)"),
            "daily_limit": _number(form, "daily_limit", "daily alert limit", integer=True),
            "full_capacity_min_severity": _number(
                form, "full_capacity_min_severity", "minimum severity when tutors are full"
            ),
        }
        raw["escalate"] = bool(form.get("escalate"))
    else:
        exercises = dict(raw.get("exercises") or {})
        inherit = bool(form.get("inherit"))
        if not rules and inherit:
            exercises.pop(str(scope), None)
        else:
            exercises[str(scope)] = {"rules": rules, "inherit": inherit}
        raw["exercises"] = exercises
    if not raw.get("exercises"):
        raw.pop("exercises", None)
    return raw


def check_candidate(raw: Any, exercise_ids: set[int]) -> RuleBook:
    """Validate a whole candidate (``RuleError`` / ``FormError`` name what is wrong)."""
    if not isinstance(raw, dict):
        raise FormError("rules_json", "the rule book must be a JSON object")
    escalate = raw.get("escalate", False)
    if not isinstance(escalate, bool):
        raise FormError("escalate", "'escalate' must be true or false")
    exercises = raw.get("exercises") or {}
    if isinstance(exercises, dict):
        for key in exercises:
            if not (str(key).isdigit() and int(key) in exercise_ids):
                raise FormError("exercises", f"{str(key)[:60]!r} is not an exercise of this course")
    return book_of(raw)


# -- pages -----------------------------------------------------------------------------------


@dataclass
class Page:
    ctx: LaunchContext
    scope: int | None
    exercises: list[Exercise]
    current: dict[str, Any]


def _page_state(launch_id: str, scope_text: str | None) -> Page:
    ctx = _context(launch_id)
    exercises = _exercises(ctx)
    scope: int | None = None
    if scope_text:
        ids = {e.id for e in exercises}
        if not (scope_text.isascii() and scope_text.isdigit() and int(scope_text) in ids):
            raise FormError("exercise", "that is not an exercise of this course")
        scope = int(scope_text)
    return Page(ctx, scope, exercises, stored_raw(ctx.course.id))


def _render(
    page: Page,
    *,
    values: Mapping[str, str] | None = None,
    error: FormError | RuleError | None = None,
    results: tuple[backtest.Backtest, backtest.Backtest] | None = None,
    rules_json: str | None = None,
) -> str:
    exercise = next((e for e in page.exercises if e.id == page.scope), None)
    overrides = set((page.current.get("exercises") or {}).keys())
    return render_template(
        "instructor/detection.html",
        ctx=page.ctx,
        launch=page.ctx.active.launch,
        scope=page.scope,
        exercise=exercise,
        exercises=page.exercises,
        overrides=overrides,
        v=values if values is not None else form_defaults(page.current, page.scope),
        kinds=PARAMS,
        kind_labels=KIND_LABELS,
        error=error,
        error_field=getattr(error, "field", None),
        saved=request.args.get("saved"),
        results=results,
        rules_json=rules_json
        if rules_json is not None
        else json.dumps(page.current, indent=2, sort_keys=True),
        chart=analytics.bar_chart,
    )


@bp.get("/")
def page(launch_id: str) -> str | tuple[str, int]:
    try:
        state = _page_state(launch_id, request.args.get("exercise"))
    except FormError as exc:
        return _render(_page_state(launch_id, None), error=exc), 400
    return _render(state)


def _backtests(page: Page, candidate: RuleBook) -> tuple[backtest.Backtest, backtest.Backtest]:
    db = db_session()
    saved = live.load_rules(db, page.ctx.course.id)[0]
    return backtest.run(db, page.ctx.course.id, candidate), backtest.run(
        db, page.ctx.course.id, saved
    )


def _finish(
    page: Page, candidate: dict[str, Any], values: Mapping[str, str], json_text: str | None
) -> BaseResponse | str | tuple[str, int]:
    try:
        book = check_candidate(candidate, {e.id for e in page.exercises})
        if request.form.get("action") == "backtest":
            return _render(
                page, values=values, results=_backtests(page, book), rules_json=json_text
            )
        live.save_rules(db_session(), page.ctx.course.id, candidate)
    except (FormError, RuleError) as exc:
        return _render(page, values=values, error=exc, rules_json=json_text), 400
    args: dict[str, Any] = {"launch_id": page.ctx.launch_id, "saved": 1}
    if page.scope is not None:
        args["exercise"] = page.scope
    return redirect(url_for(".page", **args), code=303)


@bp.post("/")
def save(launch_id: str) -> BaseResponse | str | tuple[str, int]:
    form = request.form.to_dict()
    try:
        state = _page_state(launch_id, form.get("scope"))
    except FormError as exc:
        return _render(_page_state(launch_id, None), values=form, error=exc), 400
    try:
        candidate = candidate_from_form(state.current, form, state.scope)
    except FormError as exc:
        return _render(state, values=form, error=exc), 400
    return _finish(state, candidate, form, None)


@bp.post("/json")
def save_json(launch_id: str) -> BaseResponse | str | tuple[str, int]:
    state = _page_state(launch_id, None)
    text = request.form.get("rules_json", "")
    try:
        candidate = json.loads(text)
    except json.JSONDecodeError as exc:
        error = FormError("rules_json", f"invalid JSON at line {exc.lineno}: {exc.msg}")
        return _render(state, error=error, rules_json=text), 400
    return _finish(state, candidate, form_defaults(state.current, None), text)


# -- where learners get stuck ------------------------------------------------------------------


@bp.get("/stuck")
def stuck(launch_id: str) -> str:
    ctx = _context(launch_id)
    rows = analytics.stuck_by_exercise(db_session(), ctx.course.id)

    def bars(attr: str) -> list[tuple[str, float]]:
        return [(r.title, getattr(r, attr) or 0) for r in rows]

    charts = [
        analytics.bar_chart("Flags (offers made) per exercise", bars("flags")),
        analytics.bar_chart("Offers accepted per exercise", bars("accepted")),
        analytics.bar_chart("Help requests per exercise", bars("requests")),
        analytics.bar_chart("Median wait for a tutor", bars("median_wait_minutes"), unit=" min"),
        analytics.bar_chart("Outcomes of help sessions", analytics.outcome_totals(rows)),
    ]
    return render_template(
        "instructor/stuck.html",
        ctx=ctx,
        launch=ctx.active.launch,
        rows=rows,
        charts=charts,
        outcomes=analytics.OUTCOMES,
        outcome_labels=analytics.OUTCOME_LABELS,
    )


@bp.get("/stuck.csv")
def stuck_csv(launch_id: str) -> Response:
    ctx = _context(launch_id)
    body = analytics.to_csv(analytics.stuck_by_exercise(db_session(), ctx.course.id))
    return Response(
        body,
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="lifeline-stuck-{ctx.course.id}.csv"',
            "Cache-Control": "no-store",
        },
    )
