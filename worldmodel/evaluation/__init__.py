"""Evaluation: the goal-reaching protocol in a simulator, the simulator-free check, comparisons and statistics."""
from worldmodel import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "EvalConfig": "worldmodel.evaluation.config",
    "CheckConfig": "worldmodel.evaluation.config",
    "CompareConfig": "worldmodel.evaluation.config",
    "evaluate": "worldmodel.evaluation.evaluator",
    "wilson": "worldmodel.evaluation.stats",
    "mcnemar": "worldmodel.evaluation.stats",
})
