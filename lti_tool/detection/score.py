"""The learned score: a calibrated, L2-regularised logistic model over the detection counters.

``features`` turns the state the engine already keeps into a fixed vector (constant work);
``LogisticModel.fit`` standardises the features and fits the coefficients by Newton's method
(numpy, no other library); ``predict`` is plain Python so scoring one event costs microseconds.
The model serialises to JSON (names, means, scales, coefficients, the alert threshold).

Every feature is read from state the engine built from events already processed (the
learner's own counters, their history on earlier exercises, and the peers' statistics of the
exercise, which only grow when a peer's event arrives), so a score never depends on a later
event; ``tests/test_score.py`` checks this by changing the future of a replay. Features are
relative or normalised where the scale differs between courses: rates shrunk towards the
course-wide value, code length against the peers' working solutions (log ratio, its absolute
value, and its rank among them), times against the peers' times. Features a source may lack
(scores, runs, error types, code) stay constant there, so they cost nothing and are learned
where a course has them.

The alert threshold is not 0.5: ``threshold_for_budget`` picks the score above which the
expected number of alerts fits the tutors' budget (alerts per tutor-hour) at the observed
event rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .peers import ExerciseStats
from .state import ExerciseState, LearnerState

FEATURES: tuple[str, ...] = (
    "log_attempts",
    "log_failures",
    "log_consecutive_failures",
    "failure_share",
    "last_failed",
    "log_same_error_streak",
    "error_quotient",
    "log_repeated_error_density",
    "log_attempts_since_progress",
    "log_active_minutes_since_progress",
    "log_active_minutes",
    "log_unchanged_streak",
    "log_rapid_streak",
    "log_hints",
    "solved",
    "peer_relative_failures",
    "peer_relative_time",
    "exercise_solve_rate",
    "exercise_struggle_rate",
    "exercise_failure_rate",
    "log_exercise_median_failures",
    "learner_prior_struggle_rate",
    "learner_prior_hint_rate",
    "exercise_hint_rate",
    "code_length_vs_solutions",
    "learner_recent_struggle",
    "log_session_exercises",
    "log_session_minutes",
    "exercise_first_try_rate",
    "exercise_struggle_after_failing",
    "learner_struggle_after_failing",
    "learner_failure_rate",
    "learner_first_try_rate",
    "log_learner_exercises",
    "log_code_length",
    "last_attempt_error",
    "log_idle_minutes",
    # added in the second round (appended, so a model over the names above still applies):
    "code_length_distance",
    "code_length_rank",
    "log_learner_solved",
    "log_learner_struggled",
    "log_learner_hinted",
    "log_code_change",
    "log_runs",
    "best_score",
    "has_score",
)

# The published baseline's inputs (problem difficulty, learner history, code length), scored in
# the same harness as ours for a like-for-like comparison (``lifeline evaluate --report``).
BASELINE_FEATURES: tuple[str, ...] = (
    "exercise_struggle_rate",
    "learner_prior_struggle_rate",
    "log_code_length",
)

# Shrinkage of rates towards the course-wide value while there are few observations.
PRIOR_WEIGHT = 5.0


def features(
    state: ExerciseState,
    learner: LearnerState,
    exercise: ExerciseStats,
    course: ExerciseStats,
    now: float,
) -> list[float]:
    """The feature vector for one (learner, exercise) at time ``now``, in ``FEATURES`` order."""
    log = math.log1p
    attempts = state.attempts
    solve_prior = course.solve_rate(0.75, 1.0)
    struggle_prior = course.struggle_rate(0.25, 1.0)
    fail_prior = course.failure_rate(0.6, 1.0)
    hint_prior = course.hint_rate(0.1, 1.0)
    after_fail_prior = course.struggle_after_failing_rate(0.4, 1.0)
    first_try_prior = course.first_try_rate(0.5, 1.0)
    own_solutions = exercise.sketch("solution_length")
    solutions = own_solutions if own_solutions.n else course.sketch("solution_length")
    code_length = float(state.last_code_length or 0)
    solution_length = solutions.percentile(50) if solutions.n else code_length
    # where the code sits among this exercise's working solutions (0.5 while there are none)
    code_rank = (
        own_solutions.rank(code_length)
        if own_solutions.n and state.last_code_length is not None
        else 0.5
    )
    peer_failures = exercise.sketch("failures_before_solve")
    peer_time = exercise.sketch("seconds_to_solve")
    if peer_failures.n:
        median_failures = peer_failures.percentile(50)
    else:
        median_failures = course.sketch("failures_before_solve").percentile(50)
    if peer_time.n:
        median_seconds = peer_time.percentile(50)
    else:
        median_seconds = course.sketch("seconds_to_solve").percentile(50)
    idle = max(0.0, now - state.last_at) if state.last_at is not None else 0.0
    own = 1 if state.struggle_counted else 0  # the current exercise is not "prior" history
    length_gap = log(code_length) - log(solution_length)
    return [
        log(attempts),
        log(state.failures),
        log(state.consecutive_failures),
        state.failures / attempts if attempts else 0.0,
        1.0 if state.last_event_failed else 0.0,
        log(state.same_error_streak),
        state.error_quotient,
        log(state.repeated_error_density),
        log(state.attempts_since_progress),
        log(state.active_since_progress / 60.0),
        log(state.active_seconds / 60.0),
        log(state.unchanged_streak),
        log(state.rapid_streak),
        log(state.hints),
        1.0 if state.solved else 0.0,
        log(state.failures) - log(median_failures),
        log(state.active_seconds) - log(median_seconds),
        exercise.solve_rate(solve_prior, PRIOR_WEIGHT),
        exercise.struggle_rate(struggle_prior, PRIOR_WEIGHT),
        exercise.failure_rate(fail_prior, PRIOR_WEIGHT),
        log(median_failures),
        learner.prior_struggle_rate(state, struggle_prior, PRIOR_WEIGHT),
        learner.prior_hint_rate(state, hint_prior, PRIOR_WEIGHT),
        exercise.hint_rate(hint_prior, PRIOR_WEIGHT),
        length_gap,
        learner.recent_struggle if learner.recent_struggle >= 0 else struggle_prior,
        log(learner.session_exercises),
        log((now - learner.session_start) / 60.0) if learner.session_start is not None else 0.0,
        exercise.first_try_rate(first_try_prior, PRIOR_WEIGHT),
        exercise.struggle_after_failing_rate(after_fail_prior, PRIOR_WEIGHT),
        learner.prior_struggle_after_failing(state, after_fail_prior, PRIOR_WEIGHT),
        learner.failure_rate(fail_prior, PRIOR_WEIGHT),
        learner.first_try_rate(first_try_prior, PRIOR_WEIGHT),
        log(max(learner.started - 1, 0)),
        log(code_length),
        1.0 if state.prev_attempt_error is not None else 0.0,
        log(idle / 60.0),
        abs(length_gap),
        code_rank,
        log(max(learner.solved - (1 if state.solved else 0), 0)),
        log(max(learner.struggled - own, 0)),
        log(max(learner.hinted - (1 if state.hints else 0), 0)),
        log(state.last_code_change or 0),
        log(max(state.attempts - state.submits, 0)),
        state.best_score if state.best_score is not None else 0.0,
        1.0 if state.best_score is not None else 0.0,
    ]


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass
class LogisticModel:
    """Standardised-feature logistic regression; ``threshold`` is the alert cut-off."""

    names: tuple[str, ...]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    l2: float = 1.0
    threshold: float = 0.5

    @classmethod
    def fit(
        cls,
        x: npt.ArrayLike,
        y: npt.ArrayLike,
        *,
        l2: float = 1.0,
        names: Sequence[str] = FEATURES,
        weights: npt.ArrayLike | None = None,
        max_iter: int = 50,
    ) -> LogisticModel:
        """Maximise the L2-penalised log-likelihood (intercept not penalised) by Newton steps."""
        xa = np.asarray(x, dtype=float)
        ya = np.asarray(y, dtype=float)
        if xa.ndim != 2 or xa.shape[0] != ya.shape[0] or xa.shape[1] != len(names):
            raise ValueError(f"x must be (n, {len(names)}) with one label per row")
        if l2 < 0:
            raise ValueError("l2 must be >= 0")
        w = np.ones(len(ya)) if weights is None else np.asarray(weights, dtype=float)
        mean = np.average(xa, axis=0, weights=w)
        scale = np.sqrt(np.average((xa - mean) ** 2, axis=0, weights=w))
        scale[scale < 1e-9] = 1.0
        z = np.hstack([np.ones((len(ya), 1)), (xa - mean) / scale])
        beta = np.zeros(z.shape[1])
        base = float(np.clip(np.average(ya, weights=w), 1e-6, 1 - 1e-6))
        beta[0] = math.log(base / (1 - base))
        penalty = np.full(z.shape[1], l2)
        penalty[0] = 0.0
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-np.clip(z @ beta, -35, 35)))
            grad = z.T @ (w * (p - ya)) + penalty * beta
            hess = (
                (z * (w * p * (1 - p))[:, None]).T @ z
                + np.diag(penalty)
                + 1e-9 * np.eye(z.shape[1])
            )
            step = np.linalg.solve(hess, grad)
            beta -= step
            if float(np.max(np.abs(step))) < 1e-8:
                break
        return cls(
            names=tuple(names),
            mean=[float(v) for v in mean],
            scale=[float(v) for v in scale],
            coef=[float(v) for v in beta[1:]],
            intercept=float(beta[0]),
            l2=l2,
        )

    def _columns(self, width: int) -> list[int] | None:
        """Where the model's features sit in a vector of ``width`` values: None when the vector
        is already in the model's order, else their positions in ``FEATURES`` (a model fitted
        on a subset, or saved before features were appended, still applies to ``features()``)."""
        if width == len(self.names):
            return None
        if width == len(FEATURES):
            try:
                return [FEATURES.index(n) for n in self.names]
            except ValueError:
                pass
        raise ValueError(
            f"the model expects {len(self.names)} features ({', '.join(self.names[:3])}, ...),"
            f" not a vector of {width}"
        )

    def predict(self, x: Sequence[float]) -> float:
        """P(stuck) for one feature vector (plain Python: a few microseconds)."""
        columns = self._columns(len(x))
        if columns is not None:
            x = [x[i] for i in columns]
        z = self.intercept
        for value, m, s, c in zip(x, self.mean, self.scale, self.coef, strict=True):
            z += c * (value - m) / s
        return _sigmoid(z)

    def predict_many(self, x: npt.ArrayLike) -> npt.NDArray[np.float64]:
        xa = np.asarray(x, dtype=float)
        if xa.ndim == 2:
            columns = self._columns(xa.shape[1])
            if columns is not None:
                xa = xa[:, columns]
        z = self.intercept + ((xa - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(
            self.coef
        )
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -35, 35))), dtype=np.float64)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": "logistic",
            "names": list(self.names),
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": self.intercept,
            "l2": self.l2,
            "threshold": self.threshold,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogisticModel:
        if data.get("kind") != "logistic":
            raise ValueError("not a logistic model (kind must be 'logistic')")
        names = tuple(str(n) for n in data["names"])
        model = cls(
            names=names,
            mean=[float(v) for v in data["mean"]],
            scale=[float(v) for v in data["scale"]],
            coef=[float(v) for v in data["coef"]],
            intercept=float(data["intercept"]),
            l2=float(data.get("l2", 1.0)),
            threshold=float(data.get("threshold", 0.5)),
        )
        if not (len(model.mean) == len(model.scale) == len(model.coef) == len(names)):
            raise ValueError("model arrays do not match its feature names")
        return model

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_json(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LogisticModel:
        return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))


def threshold_for_budget(
    scores: Sequence[float] | npt.ArrayLike,
    *,
    events_per_hour: float,
    alerts_per_tutor_hour: float,
    tutors: float = 1.0,
) -> float:
    """The score threshold whose alert rate fits the tutors' budget.

    ``scores`` are scores of a representative sample of events (one per event, e.g. the
    training replay). At ``events_per_hour`` events, a threshold letting a share ``a`` of events
    through alerts ``a * events_per_hour`` times an hour; we want at most
    ``alerts_per_tutor_hour * tutors``, so the threshold is the ``1 - a`` quantile of the scores.
    (Cooldowns make the real alert rate lower still: the budget is an upper bound.)
    """
    if events_per_hour <= 0:
        raise ValueError("events_per_hour must be > 0")
    if alerts_per_tutor_hour <= 0 or tutors <= 0:
        raise ValueError("alerts_per_tutor_hour and tutors must be > 0")
    values = np.sort(np.asarray(scores, dtype=float))
    if values.size == 0:
        raise ValueError("no scores to set a threshold from")
    share = min(1.0, alerts_per_tutor_hour * tutors / events_per_hour)
    if share >= 1.0:
        return 0.0
    k = min(values.size - 1, math.floor((1.0 - share) * values.size))
    return float(values[k])


def roc_auc(
    labels: Sequence[int] | npt.ArrayLike, scores: Sequence[float] | npt.ArrayLike
) -> float:
    """Area under the ROC curve (ties count one half), by ranks."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    pos = int(y.sum())
    neg = int(y.size - pos)
    if pos == 0 or neg == 0:
        raise ValueError("ROC-AUC needs both classes")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=float)
    sorted_s = s[order]
    i = 0
    while i < s.size:
        j = i
        while j + 1 < s.size and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))
