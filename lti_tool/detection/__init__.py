"""Detection: stuck learners spotted from their activity, as pure in-memory domain code.

``Engine`` folds ``ActivityEvent``s into per-(learner, exercise) counters (``state``), keeps
peer statistics per exercise (``peers``), evaluates rules built from trigger kinds
(``rules``, ``triggers``) and returns ``Decision``s; ``score`` is the learned logistic score;
``progsnap2`` and ``evaluate`` replay a ProgSnap2 data set through the same engine.
"""

from .engine import ESCALATE, OFFER, Decision, Engine
from .peers import PeerStats, Sketch
from .rules import Policy, Rule, RuleBook, baseline_rules, default_rules
from .score import LogisticModel, threshold_for_budget
from .state import ExerciseState, InMemoryStore, LearnerState, StateSettings, StateStore
from .triggers import RuleError

__all__ = [
    "ESCALATE",
    "OFFER",
    "Decision",
    "Engine",
    "ExerciseState",
    "InMemoryStore",
    "LearnerState",
    "LogisticModel",
    "PeerStats",
    "Policy",
    "Rule",
    "RuleBook",
    "RuleError",
    "Sketch",
    "StateSettings",
    "StateStore",
    "baseline_rules",
    "default_rules",
    "threshold_for_budget",
]
