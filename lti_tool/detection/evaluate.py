"""Offline evaluation: replay a ProgSnap2 data set through the engine, with no look-ahead.

Events are replayed in time order (ServerTimestamp, then Order). Before each event the engine's
clock advances (``tick``), then the event is processed, so a decision only ever depends on the
events before it, for the learner and for the peer statistics alike.

Label (the usual proxy, there is no "stuck" label): a (SubjectID, ProblemID) sequence is a
struggle when the learner never solved the problem or asked for a hint. A flag counts only if it
was raised strictly before the first hint request of the sequence (else it reads the answer).

The learned score is cross-validated grouped by learner: the learners are split into folds, the
model is fitted on the other folds' learners only, and each sequence is scored out of fold.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import heapq
import json
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..activity.model import ActivityEvent, ActivityKind
from .engine import Decision, Engine
from .rules import DEFAULT_RULES, RuleBook, baseline_rules, default_rules
from .score import BASELINE_FEATURES, FEATURES, LogisticModel, roc_auc, threshold_for_budget
from .state import ATTEMPT_KINDS, StateSettings

COURSE = "replay"
FOLDS = 10
L2 = 10.0  # an inner grouped CV on the training log-likelihood picks 10 from 1..100 on ITAP
SEED = 20190101
REPEATS = 5  # fold shuffles (SEED, SEED + 1, ...) over which the AUC is also averaged
RESCORE_QUIET = 10 * 60.0  # seconds of silence after a failure at which the score is re-read


@dataclass
class SequenceResult:
    """One learner on one problem, as the replay saw it."""

    learner: str
    exercise: str
    solved: bool = False
    first_hint_order: int | None = None
    first_flag_order: int | None = None
    first_flag_rule: str | None = None
    flag_before_hint: bool = False
    flag_row: int | None = None  # index into Replay.rows of the features at the flag
    rows: list[int] = field(default_factory=list)  # feature rows at each event before a hint
    first_failure_row: int | None = None

    @property
    def label(self) -> bool:
        return not self.solved or self.first_hint_order is not None


@dataclass
class Replay:
    sequences: dict[tuple[str, str], SequenceResult]
    rows: list[list[float]]
    row_learner: list[str]
    decisions: list[Decision]
    events: int
    seconds: float
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None

    def ordered(self) -> list[SequenceResult]:
        return [self.sequences[k] for k in sorted(self.sequences)]


def replay(
    events: Sequence[ActivityEvent],
    rules: RuleBook,
    *,
    collect_features: bool = True,
    settings: StateSettings | None = None,
) -> Replay:
    """Run every event through one engine, in order; note flags and (optionally) features."""
    engine = Engine(rules, settings=settings)
    seqs: dict[tuple[str, str], SequenceResult] = {}
    rows: list[list[float]] = []
    row_learner: list[str] = []
    decisions: list[Decision] = []

    def note(found: list[Decision], now: dt.datetime) -> None:
        for d in found:
            decisions.append(d)
            seq = seqs[(d.learner, d.exercise)]
            if seq.first_flag_order is not None:
                continue
            seq.first_flag_order = d.order
            seq.first_flag_rule = d.rule
            seq.flag_before_hint = seq.first_hint_order is None
            if collect_features and seq.flag_before_hint:
                rows.append(engine.features(COURSE, d.learner, d.exercise, now))
                row_learner.append(d.learner)
                seq.flag_row = len(rows) - 1

    # Score rows also when a failed attempt is followed by RESCORE_QUIET of silence (the engine
    # re-scores on its ticks live); kept in a heap of (due, key, last_at at scheduling).
    quiet: list[tuple[float, tuple[str, str], float]] = []

    def rescore(now: dt.datetime) -> None:
        ts = now.timestamp()
        while quiet and quiet[0][0] <= ts:
            due, key, last_at = heapq.heappop(quiet)
            seq = seqs[key]
            state = engine.store.exercise(COURSE, key[0], key[1])
            if seq.first_hint_order is None and state.last_at == last_at and not state.solved:
                when = dt.datetime.fromtimestamp(due, dt.UTC)
                rows.append(engine.features(COURSE, key[0], key[1], when))
                row_learner.append(key[0])
                seq.rows.append(len(rows) - 1)

    started = time.perf_counter()
    for event in events:
        if collect_features:
            rescore(event.at)
        note(engine.tick(event.at), event.at)
        key = (event.learner, event.exercise)
        seq = seqs.get(key)
        if seq is None:
            seq = seqs[key] = SequenceResult(event.learner, event.exercise)
        if event.kind is ActivityKind.HINT and seq.first_hint_order is None:
            seq.first_hint_order = event.order
        if event.kind is ActivityKind.SUBMIT and event.correct:
            seq.solved = True
        before_hint = seq.first_hint_order is None
        failures_before = engine.store.exercise(COURSE, event.learner, event.exercise).failures
        found = engine.process(COURSE, event)
        if collect_features and before_hint and event.kind in ATTEMPT_KINDS:
            rows.append(engine.features(COURSE, event.learner, event.exercise, event.at))
            row_learner.append(event.learner)
            seq.rows.append(len(rows) - 1)
            state = engine.store.exercise(COURSE, event.learner, event.exercise)
            if state.failures > failures_before:
                if seq.first_failure_row is None:
                    seq.first_failure_row = len(rows) - 1
                if not state.solved and state.last_at is not None:
                    heapq.heappush(quiet, (state.last_at + RESCORE_QUIET, key, state.last_at))
        note(found, event.at)
    seconds = time.perf_counter() - started
    return Replay(
        seqs,
        rows,
        row_learner,
        decisions,
        len(events),
        seconds,
        events[0].at if events else None,
        events[-1].at if events else None,
    )


# -- metrics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlagMetrics:
    sequences: int
    positives: int
    flagged: int
    true_positives: int

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.sequences if self.sequences else 0.0

    @property
    def precision(self) -> float:
        return self.true_positives / self.flagged if self.flagged else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.positives if self.positives else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "sequences": self.sequences,
            "positives": self.positives,
            "flagged": self.flagged,
            "true_positives": self.true_positives,
            "flag_rate": round(self.flag_rate, 4),
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
        }


def flag_metrics(result: Replay) -> FlagMetrics:
    seqs = list(result.sequences.values())
    flagged = [s for s in seqs if s.flag_before_hint]
    return FlagMetrics(
        sequences=len(seqs),
        positives=sum(s.label for s in seqs),
        flagged=len(flagged),
        true_positives=sum(s.label for s in flagged),
    )


def learner_folds(learners: Iterable[str], folds: int = FOLDS, seed: int = SEED) -> dict[str, int]:
    """Learners shuffled (reproducibly) and dealt round-robin into ``folds`` folds."""
    ordered = sorted(set(learners))
    random.Random(seed).shuffle(ordered)
    return {learner: i % folds for i, learner in enumerate(ordered)}


@dataclass
class ScoreResult:
    auc_first_failure: float  # scored once, at the first failed attempt (all folds pooled)
    n_first_failure: int
    fold_auc_first_failure: list[float]  # the same, within each fold (NaN: one class only)
    auc_decision_points: float  # max over every decision point before the first hint ...
    n_decision_points: int  # ... of the sequences with a failed attempt before it
    auc_max_before_hint: float  # the same max, over every sequence with an attempt
    n_max_before_hint: int
    brier_first_failure: float
    folds: int
    names: tuple[str, ...]
    oof: np.ndarray  # out-of-fold score per feature row
    model: LogisticModel  # fitted on everything (what `lifeline evaluate --model` saves)

    @property
    def fold_mean(self) -> float:
        values = [v for v in self.fold_auc_first_failure if math.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def fold_std(self) -> float:
        values = [v for v in self.fold_auc_first_failure if math.isfinite(v)]
        return float(np.std(values)) if values else float("nan")


def _training_set(
    result: Replay, keys: Sequence[tuple[str, str]]
) -> tuple[list[int], list[float], list[float]]:
    """Rows, labels, weights: every row before the first hint, one unit of weight a sequence."""
    idx: list[int] = []
    labels: list[float] = []
    weights: list[float] = []
    for key in keys:
        seq = result.sequences[key]
        if not seq.rows:
            continue
        w = 1.0 / len(seq.rows)
        for r in seq.rows:
            idx.append(r)
            labels.append(float(seq.label))
            weights.append(w)
    return idx, labels, weights


def _matrix(result: Replay, names: Sequence[str]) -> np.ndarray:
    """The feature rows as an array, restricted to the columns ``names``."""
    columns = [FEATURES.index(n) for n in names]
    x = np.asarray(result.rows, dtype=float).reshape(len(result.rows), len(FEATURES))
    return x[:, columns]


def _out_of_fold(
    result: Replay,
    x: np.ndarray,
    fold_of: dict[str, int],
    folds: int,
    l2: float,
    names: Sequence[str],
) -> np.ndarray:
    """Every row scored by the model fitted on the other folds' learners only."""
    idx, labels, weights = _training_set(result, sorted(result.sequences))
    idx_a = np.asarray(idx, dtype=int)
    labels_a = np.asarray(labels, dtype=float)
    weights_a = np.asarray(weights, dtype=float)
    train_fold = np.asarray([fold_of[result.row_learner[r]] for r in idx], dtype=int)
    row_fold = np.asarray([fold_of[learner] for learner in result.row_learner], dtype=int)
    oof = np.full(len(result.rows), np.nan)
    for fold in range(folds):
        train = train_fold != fold
        test = np.flatnonzero(row_fold == fold)
        if train.any() and test.size:
            model = LogisticModel.fit(
                x[idx_a[train]], labels_a[train], l2=l2, weights=weights_a[train], names=names
            )
            oof[test] = model.predict_many(x[test])
    return oof


def cross_validate(
    result: Replay,
    *,
    folds: int = FOLDS,
    l2: float = L2,
    seed: int = SEED,
    names: Sequence[str] = FEATURES,
) -> ScoreResult:
    """Grouped-by-learner CV of the learned score; every row gets an out-of-fold score.

    The learners are dealt into folds; the model of a fold is fitted on the rows of the other
    folds' learners only, so no row of a learner ever trains the model that scores them.
    ``names`` picks a subset of ``FEATURES`` (e.g. ``BASELINE_FEATURES``) for comparisons.
    """
    x = _matrix(result, names)
    fold_of = learner_folds(result.row_learner, folds, seed)
    oof = _out_of_fold(result, x, fold_of, folds, l2, names)
    idx, labels, weights = _training_set(result, sorted(result.sequences))
    if not idx:
        raise ValueError("no attempts before a hint to learn the score from")
    full = LogisticModel.fit(x[idx], labels, l2=l2, weights=weights, names=names)

    first_y: list[int] = []
    first_s: list[float] = []
    first_fold: list[int] = []
    failed_s: list[float] = []
    max_y: list[int] = []
    max_s: list[float] = []
    for seq in result.ordered():
        if seq.first_failure_row is not None:
            first_y.append(int(seq.label))
            first_s.append(float(oof[seq.first_failure_row]))
            first_fold.append(fold_of[seq.learner])
            failed_s.append(float(np.max(oof[seq.rows])))
        if seq.rows:
            max_y.append(int(seq.label))
            max_s.append(float(np.max(oof[seq.rows])))
    brier = (
        float(np.mean((np.asarray(first_s) - np.asarray(first_y)) ** 2))
        if first_y
        else float("nan")
    )
    per_fold = [
        _auc(
            [y for y, f in zip(first_y, first_fold, strict=True) if f == fold],
            [v for v, f in zip(first_s, first_fold, strict=True) if f == fold],
        )
        for fold in range(folds)
    ]
    return ScoreResult(
        auc_first_failure=_auc(first_y, first_s),
        n_first_failure=len(first_y),
        fold_auc_first_failure=per_fold,
        auc_decision_points=_auc(first_y, failed_s),
        n_decision_points=len(first_y),
        auc_max_before_hint=_auc(max_y, max_s),
        n_max_before_hint=len(max_y),
        brier_first_failure=brier,
        folds=folds,
        names=tuple(names),
        oof=oof,
        model=full,
    )


def repeated_auc(
    result: Replay,
    *,
    repeats: int = REPEATS,
    seed: int = SEED,
    names: Sequence[str] = FEATURES,
) -> list[float]:
    """Pooled out-of-fold ROC-AUC at the first failed attempt for ``repeats`` fold shuffles.

    Which learners share a fold moves the pooled AUC (on ITAP by about +-0.005, a range of
    0.015 over 30 shuffles); the spread over shuffles says how much of a difference between two
    feature sets is only the split. ``evaluate`` reports SEED .. SEED + REPEATS - 1.
    """
    x = _matrix(result, names)
    seqs = [s for s in result.ordered() if s.first_failure_row is not None]
    labels = [int(s.label) for s in seqs]
    rows = [s.first_failure_row for s in seqs]
    out: list[float] = []
    for i in range(repeats):
        fold_of = learner_folds(result.row_learner, FOLDS, seed + i)
        oof = _out_of_fold(result, x, fold_of, FOLDS, L2, names)
        out.append(_auc(labels, [float(oof[r]) for r in rows if r is not None]))
    return out


def _auc(labels: list[int], scores: list[float]) -> float:
    """ROC-AUC, or NaN where one class is missing (tiny data sets)."""
    if not labels or len(set(labels)) < 2:
        return float("nan")
    return roc_auc(labels, scores)


def sequence_score(seq: SequenceResult, oof: np.ndarray) -> float | None:
    """The score at the flag if flagged before the hint, else the max before the first hint."""
    if seq.flag_row is not None:
        return float(oof[seq.flag_row])
    if seq.rows:
        return float(np.max(oof[seq.rows]))
    return None


def write_flags(path: str | Path, result: Replay, oof: np.ndarray | None) -> int:
    """``SubjectID,ProblemID,flagged,first_flag_order,score`` one row per sequence."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["SubjectID", "ProblemID", "flagged", "first_flag_order", "score"])
        n = 0
        for seq in result.ordered():
            score = sequence_score(seq, oof) if oof is not None else None
            out.writerow(
                [
                    seq.learner,
                    seq.exercise,
                    int(seq.first_flag_order is not None),
                    "" if seq.first_flag_order is None else seq.first_flag_order,
                    "" if score is None or not math.isfinite(score) else f"{score:.4f}",
                ]
            )
            n += 1
    return n


# -- sensitivity ---------------------------------------------------------------------------------


def _variant(path: str, value: Any) -> RuleBook:
    """The default rule book with one parameter changed: ``rule/param[.sub]`` or
    ``policy/key``."""
    raw = copy.deepcopy(DEFAULT_RULES)
    head, _, param = path.partition("/")
    if head == "policy":
        raw["policy"][param] = value
        return RuleBook.parse(raw)
    key, _, sub = param.partition(".")
    for rule in raw["rules"]:
        if rule["name"] == head:
            if sub:
                rule["when"][key][sub] = value
            else:
                rule["when"][key] = value
    return RuleBook.parse(raw)


SENSITIVITY: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("stopped-after-failing/minutes", (5, 10, 20, 60)),
    ("failing-more-than-peers/threshold.peer_percentile", (75, 80, 90, 95)),
    ("failing-more-than-peers/threshold.fallback", (3, 4, 5, 6)),
    ("failing-more-than-peers/threshold.floor", (2, 3, 4)),
    ("policy/daily_limit", (3, 5, 8, 0)),
    ("policy/cooldown_minutes", (10, 30, 120)),
)


def sensitivity(events: Sequence[ActivityEvent]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path, values in SENSITIVITY:
        for value in values:
            m = flag_metrics(replay(events, _variant(path, value), collect_features=False))
            out.append({"parameter": path, "value": value, **m.as_json()})
    return out


# -- the report ------------------------------------------------------------------------------------


def evaluate(
    events: Sequence[ActivityEvent],
    rules: RuleBook | None = None,
    *,
    with_sensitivity: bool = False,
) -> dict[str, Any]:
    """Everything ``lifeline evaluate --report`` prints, as a dict (also JSON-serialisable)."""
    book = rules or default_rules()
    ours = replay(events, book)
    base = replay(events, baseline_rules(), collect_features=False)
    scores = cross_validate(ours)
    baseline_scores = cross_validate(ours, names=BASELINE_FEATURES)
    repeats = [scores.auc_first_failure, *repeated_auc(ours, repeats=REPEATS - 1, seed=SEED + 1)]
    hours = 0.0
    if ours.first_at is not None and ours.last_at is not None:
        hours = (ours.last_at - ours.first_at).total_seconds() / 3600.0
    by_rule: dict[str, int] = {}
    for seq in ours.sequences.values():
        if seq.flag_before_hint and seq.first_flag_rule is not None:
            by_rule[seq.first_flag_rule] = by_rule.get(seq.first_flag_rule, 0) + 1
    active_hours = _active_hours(events)
    events_per_hour = len(events) / active_hours if active_hours else float("nan")
    budget = (
        threshold_for_budget(
            scores.oof[~np.isnan(scores.oof)],
            events_per_hour=events_per_hour,
            alerts_per_tutor_hour=4.0,
        )
        if active_hours
        else float("nan")
    )
    report: dict[str, Any] = {
        "events": ours.events,
        "sequences": len(ours.sequences),
        "learners": len({s.learner for s in ours.sequences.values()}),
        "base_rate": round(flag_metrics(ours).positives / max(len(ours.sequences), 1), 4),
        "baseline": {"rule": "3 failed attempts in a row", **flag_metrics(base).as_json()},
        "ours": {**flag_metrics(ours).as_json(), "first_flag_by_rule": by_rule},
        "score": {
            "folds": scores.folds,
            "grouped_by": "learner",
            "features": len(scores.names),
            "auc_at_first_failure": round(scores.auc_first_failure, 4),
            "auc_at_first_failure_folds": _spread(scores.fold_auc_first_failure),
            "auc_at_first_failure_repeats": _spread(repeats),
            "sequences_with_a_failure_before_hint": scores.n_first_failure,
            "baseline_features": {
                "features": list(BASELINE_FEATURES),
                "auc_at_first_failure": round(baseline_scores.auc_first_failure, 4),
                "auc_at_first_failure_folds": _spread(baseline_scores.fold_auc_first_failure),
            },
            "auc_decision_points_before_first_hint": round(scores.auc_decision_points, 4),
            "auc_max_before_first_hint": round(scores.auc_max_before_hint, 4),
            "sequences_with_an_attempt_before_hint": scores.n_max_before_hint,
            "brier_at_first_failure": round(scores.brier_first_failure, 4),
            "budget_example": {
                "alerts_per_tutor_hour": 4.0,
                "events_per_active_hour": round(events_per_hour, 1),
                "threshold": round(budget, 4),
            },
        },
        "replay": {
            "events_per_second": round(ours.events / ours.seconds) if ours.seconds else None,
            "span_hours": round(hours, 1),
        },
        "rules": book.as_json(),
    }
    if with_sensitivity:
        report["sensitivity"] = sensitivity(events)
    report["_model"] = scores.model
    report["_replay"] = ours
    report["_oof"] = scores.oof
    return report


def _spread(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard deviation, min and max of finite values (per fold or per repeat)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(finite),
        "mean": round(float(np.mean(finite)), 4),
        "std": round(float(np.std(finite)), 4),
        "min": round(min(finite), 4),
        "max": round(max(finite), 4),
    }


def _fmt(spread: dict[str, Any]) -> str:
    if not spread["n"]:
        return "n/a"
    return (
        f"{spread['mean']:.3f} +- {spread['std']:.3f}"
        f" (min {spread['min']:.3f}, max {spread['max']:.3f})"
    )


def _active_hours(events: Sequence[ActivityEvent]) -> float:
    """Clock hours in which at least one event happened (the course's busy time)."""
    return float(len({e.at.replace(minute=0, second=0, microsecond=0) for e in events}))


def format_report(report: dict[str, Any]) -> str:
    b, o, s = report["baseline"], report["ours"], report["score"]
    bf = s["baseline_features"]
    lines = [
        f"{report['events']} events, {report['sequences']} sequences (learner x problem),"
        f" {report['learners']} learners; struggle base rate {report['base_rate']:.3f}",
        "label: never solved the problem or asked for a hint;"
        " flags count only strictly before the sequence's first hint request",
        "",
        f"{'detector':<34}{'flag rate':>10}{'precision':>11}{'recall':>8}{'flagged':>9}",
        f"{'baseline: 3 failures in a row':<34}{b['flag_rate']:>10.3f}{b['precision']:>11.3f}"
        f"{b['recall']:>8.3f}{b['flagged']:>9}",
        f"{'Lifeline rules':<34}{o['flag_rate']:>10.3f}{o['precision']:>11.3f}"
        f"{o['recall']:>8.3f}{o['flagged']:>9}",
        "  first flag by rule: "
        + ", ".join(f"{k} {v}" for k, v in sorted(o["first_flag_by_rule"].items())),
        "",
        f"learned score ({s['features']} features), {s['folds']}-fold CV grouped by learner:",
        f"  ROC-AUC at the first failed attempt: {s['auc_at_first_failure']:.3f} pooled"
        f" ({s['sequences_with_a_failure_before_hint']} sequences; published baseline 0.645)",
        f"    per fold: {_fmt(s['auc_at_first_failure_folds'])}",
        f"    pooled, over {s['auc_at_first_failure_repeats']['n']} fold shuffles:"
        f" {_fmt(s['auc_at_first_failure_repeats'])}",
        f"  the baseline's features alone ({', '.join(bf['features'])}), same harness:"
        f" {bf['auc_at_first_failure']:.3f} pooled",
        f"    per fold: {_fmt(bf['auc_at_first_failure_folds'])}",
        "  ROC-AUC of the max score over the decision points before the first hint (every"
        " attempt, and 10 quiet minutes after a failed one):",
        f"    sequences with a failed attempt: {s['auc_decision_points_before_first_hint']:.3f}"
        f" ({s['sequences_with_a_failure_before_hint']} sequences)",
        f"    every sequence with an attempt: {s['auc_max_before_first_hint']:.3f}"
        f" ({s['sequences_with_an_attempt_before_hint']} sequences)",
        f"  Brier score at the first failed attempt: {s['brier_at_first_failure']:.3f}",
        f"  alert threshold for {s['budget_example']['alerts_per_tutor_hour']:g} alerts per"
        f" tutor-hour at {s['budget_example']['events_per_active_hour']:g} events per active"
        f" hour: {s['budget_example']['threshold']:.3f}",
        "",
        f"replay: {report['replay']['events_per_second']} events/s",
    ]
    if "sensitivity" in report:
        lines += ["", "sensitivity (one parameter of the default rules changed at a time):"]
        for row in report["sensitivity"]:
            lines.append(
                f"  {row['parameter']:<52}= {row['value']!s:<5} flag rate {row['flag_rate']:.3f}"
                f"  precision {row['precision']:.3f}  recall {row['recall']:.3f}"
            )
    return "\n".join(lines)


def public(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the private objects (for JSON output)."""
    return {k: v for k, v in report.items() if not k.startswith("_")}


def run(
    directory: str | Path,
    out: str | Path,
    *,
    rules_path: str | Path | None = None,
    with_sensitivity: bool = False,
    json_path: str | Path | None = None,
    model_path: str | Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """What ``lifeline evaluate`` does: read, replay, cross-validate, write FLAGS.csv."""
    from .progsnap2 import read_progsnap2

    book = RuleBook.load(rules_path) if rules_path is not None else default_rules()
    dataset = read_progsnap2(directory)
    if not dataset.events:
        raise ValueError(f"{directory}: no events to replay")
    report = evaluate(dataset.events, book, with_sensitivity=with_sensitivity)
    rows = write_flags(out, report["_replay"], report["_oof"])
    if json_path is not None:
        Path(json_path).write_text(json.dumps(public(report), indent=2) + "\n", encoding="utf-8")
    if model_path is not None:
        model: LogisticModel = report["_model"]
        model.threshold = report["score"]["budget_example"]["threshold"]
        model.save(model_path)
    if dataset.skipped:
        report["skipped_event_types"] = dict(dataset.skipped)
    return rows, report
