"""`wm check`: will this model plan? Simulator-free checks on recorded, held-out episodes.

    wm check checkpoint=runs/arm/best.pt                      # the training data's held-out episodes
    wm check checkpoint=runs/arm/best.pt data=data/arm_test   # every episode of another recording

The work is `worldmodel.evaluation.check.check`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.evaluation.config import CheckConfig

CONFIG, CONFIG_NAME = CheckConfig, "check"


def run(cfg: CheckConfig) -> Any:
    from worldmodel.evaluation.check import check

    return check(cfg)
