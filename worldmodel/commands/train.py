"""`wm train`: train a JEPA world model with SIGReg on a collected dataset.

    wm train data=runs/tworoom model=tiny steps=3000 out=runs/wm_tiny
    torchrun --nproc_per_node=2 -m worldmodel.cli train data=... model=lewm     # same command, DDP

The work is `worldmodel.training.trainer.train`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.training.config import TrainConfig

CONFIG, CONFIG_NAME = TrainConfig, "train"


def run(cfg: TrainConfig) -> Any:
    from worldmodel.training.trainer import train

    return train(cfg)
