"""`wm distill`: a goal-conditioned policy distilled from a trained world model's latents.

    wm distill checkpoint=runs/demo/train/best.pt out=runs/distill/tworoom
    wm eval checkpoint=runs/demo/train/best.pt distilled=runs/distill/tworoom/policy.pt planner=policy

The work is `worldmodel.training.distill.distill`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.training.distill_config import DistillConfig

CONFIG, CONFIG_NAME = DistillConfig, "distill"


def run(cfg: DistillConfig) -> Any:
    from worldmodel.training.distill import distill

    return distill(cfg)
