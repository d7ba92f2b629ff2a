"""`wm collect`: roll out a data policy in a simulator into a crash-safe HDF5 dataset.

    wm collect env=tworoom episodes=1000 workers=2 out=data/tworoom seed=0 image_size=64

The work is `worldmodel.data.collector.collect`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.data.config import CollectConfig

CONFIG, CONFIG_NAME = CollectConfig, "collect"


def run(cfg: CollectConfig) -> Any:
    from worldmodel.data.collector import collect

    return collect(cfg)
