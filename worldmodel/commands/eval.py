"""`wm eval`: zero-shot goal reaching under the LeWM protocol, batched over episodes.

    wm eval checkpoint=runs/tworoom/best.pt planner=cem episodes=50 out=runs/tworoom/eval

The work is `worldmodel.evaluation.evaluator.evaluate`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.evaluation.config import EvalConfig

CONFIG, CONFIG_NAME = EvalConfig, "eval"


def run(cfg: EvalConfig) -> Any:
    from worldmodel.evaluation.evaluator import evaluate

    return evaluate(cfg)
