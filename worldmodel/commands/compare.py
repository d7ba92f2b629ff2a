"""`wm compare A B ...`: evaluations of the same tasks side by side, with paired tests.

    wm compare runs/a/eval runs/b/eval                     # the first is the baseline

The work is `worldmodel.evaluation.compare.compare_runs`; this module only names the config and calls it.
"""
from __future__ import annotations

from typing import Any

from worldmodel.evaluation.config import CompareConfig

CONFIG, CONFIG_NAME = CompareConfig, "compare"


def run(cfg: CompareConfig) -> Any:
    from worldmodel.evaluation.compare import compare_runs

    return compare_runs(cfg)
