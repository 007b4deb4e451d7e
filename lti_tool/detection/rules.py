"""Rules: triggers combined with AND/OR, per course and per exercise, and the alert policy.

A rule book is plain JSON::

    {
      "policy": {"cooldown_minutes": 30, "daily_limit": 3, "full_capacity_min_severity": 0.8},
      "rules": [
        {"name": "failing-more-than-peers", "severity": 0.6, "escalate": true,
         "when": {"any": [{"trigger": "consecutive_failures", "threshold": 4},
                          {"all": [{"trigger": "no_progress", "attempts": 3},
                                   {"trigger": "hints", "none_after_failures": 3}]}]}}
      ],
      "exercises": {
        "ex-42": {"inherit": true, "rules": [ ...rules that replace same-named course rules
                                              or are added to them... ]}
      }
    }

``when`` is a tree whose inner nodes are ``{"all": [...]}`` (AND) or ``{"any": [...]}`` (OR) and
whose leaves are triggers. Exercise rules override course rules of the same name and extend
the rest; ``"inherit": false`` drops the course rules for that exercise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .triggers import Context, Fired, Gate, RuleError, Trigger, build_trigger

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,79}$")


@dataclass(frozen=True)
class Leaf:
    trigger: Trigger

    def evaluate(self, ctx: Context) -> list[Fired] | None:
        fired = self.trigger.check(ctx)
        return None if fired is None else [fired]

    def triggers(self) -> Iterator[Trigger]:
        yield self.trigger

    def gates(self) -> tuple[Gate, ...] | None:
        gate = self.trigger.gate()
        return None if gate is None else (gate,)

    def as_json(self) -> Any:
        return self.trigger.as_json()


@dataclass(frozen=True)
class All:
    children: tuple[Node, ...]

    def evaluate(self, ctx: Context) -> list[Fired] | None:
        out: list[Fired] = []
        for child in self.children:
            fired = child.evaluate(ctx)
            if fired is None:
                return None
            out.extend(fired)
        return out

    def triggers(self) -> Iterator[Trigger]:
        for child in self.children:
            yield from child.triggers()

    def gates(self) -> tuple[Gate, ...] | None:
        # Every child must fire: the gate of any one of them is a gate of the whole.
        for child in self.children:
            gates = child.gates()
            if gates is not None:
                return gates
        return None

    def as_json(self) -> Any:
        return {"all": [c.as_json() for c in self.children]}


@dataclass(frozen=True)
class Any_:
    children: tuple[Node, ...]

    def evaluate(self, ctx: Context) -> list[Fired] | None:
        best: list[Fired] | None = None
        for child in self.children:
            fired = child.evaluate(ctx)
            if fired is not None and (best is None or _top(fired) > _top(best)):
                best = fired
        return best

    def triggers(self) -> Iterator[Trigger]:
        for child in self.children:
            yield from child.triggers()

    def gates(self) -> tuple[Gate, ...] | None:
        # One child firing is enough: the node may fire when any child's gate holds.
        out: list[Gate] = []
        for child in self.children:
            gates = child.gates()
            if gates is None:
                return None
            out.extend(gates)
        return tuple(out)

    def as_json(self) -> Any:
        return {"any": [c.as_json() for c in self.children]}


Node = Leaf | All | Any_


def _top(fired: list[Fired]) -> float:
    return sum(f.strength for f in fired) / len(fired)


def parse_node(raw: Any, where: str) -> Node:
    if not isinstance(raw, Mapping):
        raise RuleError(f"{where}: expected an object with 'all', 'any' or 'trigger', got {raw!r}")
    keys = {"all", "any", "trigger"} & set(raw)
    if len(keys) != 1:
        raise RuleError(f"{where}: give exactly one of 'all', 'any' or 'trigger'")
    if "trigger" in raw:
        try:
            return Leaf(build_trigger(raw))
        except RuleError as exc:
            raise RuleError(f"{where}: {exc}") from None
    op = keys.pop()
    if set(raw) != {op}:
        raise RuleError(f"{where}: {op!r} takes no other keys, got {sorted(set(raw) - {op})}")
    children = raw[op]
    if not isinstance(children, list) or not children:
        raise RuleError(f"{where}.{op}: expected a non-empty list of conditions")
    parsed = tuple(parse_node(c, f"{where}.{op}[{i}]") for i, c in enumerate(children))
    return All(parsed) if op == "all" else Any_(parsed)


@dataclass(frozen=True)
class Rule:
    """A named condition; when it holds, the learner is offered a tutor."""

    name: str
    when: Node
    severity: float = 0.5  # base severity 0..1 (queue order); stronger signals add to it
    escalate: bool = True  # may the offer be escalated if failures continue after it
    escalate_after_failures: int = 2
    message: str | None = None  # shown to the learner instead of the generated reason

    @property
    def time_based(self) -> bool:
        return any(t.time_based for t in self.when.triggers())

    def gates(self) -> tuple[Gate, ...] | None:
        """Necessary conditions, any one of which must hold for the rule to fire: each
        ``(field, bound)`` means "the exercise is unsolved and ``field >= bound``" (see
        ``Trigger.gate``). None: no such condition is known, the rule is always evaluated."""
        return self.when.gates()

    def fire(self, ctx: Context) -> tuple[float, str] | None:
        """Severity and reason if the rule holds now."""
        fired = self.when.evaluate(ctx)
        if fired is None:
            return None
        extra = max(f.strength for f in fired)
        severity = min(1.0, self.severity + (1.0 - self.severity) * 0.5 * extra)
        reason = self.message or "; ".join(dict.fromkeys(f.reason for f in fired))
        return severity, reason

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "severity": self.severity,
            "escalate": self.escalate,
            "escalate_after_failures": self.escalate_after_failures,
            "when": self.when.as_json(),
        }
        if self.message:
            out["message"] = self.message
        return out

    @classmethod
    def parse(cls, raw: Any, where: str, scope: str = "") -> Rule:
        where = scope + where
        if not isinstance(raw, Mapping):
            raise RuleError(f"{where}: a rule is an object, got {raw!r}")
        known = {"name", "when", "severity", "escalate", "escalate_after_failures", "message"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RuleError(
                f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        name = raw.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RuleError(f"{where}: 'name' must be 1-80 letters, digits, spaces or _.:-")
        where = f"{scope}rule {name!r}"
        if "when" not in raw:
            raise RuleError(f"{where}: 'when' is required")
        severity = raw.get("severity", 0.5)
        if (
            isinstance(severity, bool)
            or not isinstance(severity, int | float)
            or not (0.0 <= severity <= 1.0)
        ):
            raise RuleError(f"{where}: 'severity' must be a number from 0 to 1, not {severity!r}")
        escalate = raw.get("escalate", True)
        if not isinstance(escalate, bool):
            raise RuleError(f"{where}: 'escalate' must be true or false, not {escalate!r}")
        after = raw.get("escalate_after_failures", 2)
        if isinstance(after, bool) or not isinstance(after, int) or after < 1:
            raise RuleError(
                f"{where}: 'escalate_after_failures' must be a whole number >= 1, not {after!r}"
            )
        message = raw.get("message")
        if message is not None and (not isinstance(message, str) or len(message) > 500):
            raise RuleError(f"{where}: 'message' must be text of at most 500 characters")
        return cls(
            name=name,
            when=parse_node(raw["when"], f"{where}.when"),
            severity=float(severity),
            escalate=escalate,
            escalate_after_failures=after,
            message=message,
        )


@dataclass(frozen=True)
class Policy:
    """How often a learner may be offered help, and what to do when tutors are all busy."""

    cooldown_minutes: float = 30.0  # per (learner, exercise) between two offers
    daily_limit: int = 3  # offers per learner per UTC day (0 = no limit)
    full_capacity_min_severity: float = 0.8  # with no free tutor, only this strong or more

    @classmethod
    def parse(cls, raw: Any) -> Policy:
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise RuleError(f"policy: expected an object, got {raw!r}")
        known = {"cooldown_minutes", "daily_limit", "full_capacity_min_severity"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise RuleError(
                f"policy: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        cooldown = raw.get("cooldown_minutes", 30.0)
        if isinstance(cooldown, bool) or not isinstance(cooldown, int | float) or cooldown < 0:
            raise RuleError(f"policy: 'cooldown_minutes' must be a number >= 0, not {cooldown!r}")
        limit = raw.get("daily_limit", 3)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise RuleError(f"policy: 'daily_limit' must be a whole number >= 0, not {limit!r}")
        strong = raw.get("full_capacity_min_severity", 0.8)
        if (
            isinstance(strong, bool)
            or not isinstance(strong, int | float)
            or not (0.0 <= strong <= 1.0)
        ):
            raise RuleError(
                f"policy: 'full_capacity_min_severity' must be from 0 to 1, not {strong!r}"
            )
        return cls(float(cooldown), limit, float(strong))

    def as_json(self) -> dict[str, Any]:
        return {
            "cooldown_minutes": self.cooldown_minutes,
            "daily_limit": self.daily_limit,
            "full_capacity_min_severity": self.full_capacity_min_severity,
        }


@dataclass(frozen=True)
class ExerciseRules:
    rules: tuple[Rule, ...] = ()
    inherit: bool = True


def _unique(rules: Sequence[Rule], where: str) -> None:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise RuleError(f"{where}: two rules are named {rule.name!r}")
        seen.add(rule.name)


@dataclass(frozen=True)
class RuleBook:
    """Course rules, per-exercise overrides, and the policy."""

    rules: tuple[Rule, ...]
    exercises: Mapping[str, ExerciseRules] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)

    def __post_init__(self) -> None:
        _unique(self.rules, "course rules")
        for exercise, extra in self.exercises.items():
            _unique(extra.rules, f"exercise {exercise!r}")
        object.__setattr__(self, "_cache", {})

    def for_exercise(self, exercise: str) -> tuple[Rule, ...]:
        cache: dict[str, tuple[Rule, ...]] = self._cache  # type: ignore[attr-defined]
        found = cache.get(exercise)
        if found is None:
            extra = self.exercises.get(exercise)
            if extra is None:
                found = self.rules
            else:
                own = {r.name for r in extra.rules}
                base = [r for r in self.rules if r.name not in own] if extra.inherit else []
                found = (*base, *extra.rules)
            cache[exercise] = found
        return found

    @classmethod
    def parse(cls, raw: Any) -> RuleBook:
        if not isinstance(raw, Mapping):
            raise RuleError(f"rule book: expected an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"rules", "exercises", "policy"})
        if unknown:
            raise RuleError(
                f"rule book: unknown key {unknown[0]!r} (known: exercises, policy, rules)"
            )
        rules = raw.get("rules", [])
        if not isinstance(rules, list):
            raise RuleError("rule book: 'rules' must be a list")
        exercises_raw = raw.get("exercises", {})
        if not isinstance(exercises_raw, Mapping):
            raise RuleError("rule book: 'exercises' must be an object keyed by exercise")
        exercises: dict[str, ExerciseRules] = {}
        for key, value in exercises_raw.items():
            where = f"exercise {key!r}"
            if not isinstance(value, Mapping) or not isinstance(value.get("rules", []), list):
                raise RuleError(f"{where}: expected {{'rules': [...], 'inherit': true|false}}")
            if set(value) - {"rules", "inherit"}:
                raise RuleError(
                    f"{where}: unknown key {sorted(set(value) - {'rules', 'inherit'})[0]!r}"
                )
            inherit = value.get("inherit", True)
            if not isinstance(inherit, bool):
                raise RuleError(f"{where}: 'inherit' must be true or false")
            exercises[str(key)] = ExerciseRules(
                tuple(
                    Rule.parse(r, f"rule #{i + 1}", f"{where}: ")
                    for i, r in enumerate(value.get("rules", []))
                ),
                inherit,
            )
        return cls(
            tuple(Rule.parse(r, f"rule #{i + 1}") for i, r in enumerate(rules)),
            exercises,
            Policy.parse(raw.get("policy")),
        )

    @classmethod
    def load(cls, path: str | Path) -> RuleBook:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise RuleError(f"{path}: not valid JSON ({exc})") from None
        return cls.parse(data)

    def as_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy.as_json(),
            "rules": [r.as_json() for r in self.rules],
            "exercises": {
                k: {"inherit": v.inherit, "rules": [r.as_json() for r in v.rules]}
                for k, v in self.exercises.items()
            },
        }


# -- the defaults ----------------------------------------------------------------------------

DEFAULT_RULES: dict[str, Any] = {
    "policy": {"cooldown_minutes": 30, "daily_limit": 5, "full_capacity_min_severity": 0.8},
    "rules": [
        {
            # The learner said so: always worth an offer, and it jumps the queue.
            "name": "asked-for-help",
            "severity": 0.9,
            "when": {"trigger": "stuck"},
        },
        {
            # Failed, then nothing more on this exercise for 10 minutes: the learner has given up
            # or is staring at it. Catches most learners who never solve it, but only after they
            # stopped: an offer that reaches them (notification, next launch) to come back.
            "name": "stopped-after-failing",
            "severity": 0.4,
            "when": {"trigger": "silent_after_failure", "minutes": 10},
        },
        {
            # Still at it, but the current run of failures is longer than what 90% of the peers
            # who solved this exercise went through (at least 3; 5 until 5 peers have solved it).
            "name": "failing-more-than-peers",
            "severity": 0.6,
            "when": {
                "trigger": "consecutive_failures",
                "threshold": {"peer_percentile": 90, "fallback": 5, "floor": 3, "min_peers": 5},
            },
        },
    ],
}

BASELINE_RULES: dict[str, Any] = {
    "policy": {"cooldown_minutes": 30, "daily_limit": 0},
    "rules": [
        {
            "name": "three-failures-in-a-row",
            "when": {"trigger": "consecutive_failures", "threshold": 3},
        }
    ],
}


def default_rules() -> RuleBook:
    return RuleBook.parse(DEFAULT_RULES)


def baseline_rules() -> RuleBook:
    """The common baseline: three failed submissions in a row."""
    return RuleBook.parse(BASELINE_RULES)
