"""worldmodel: action-conditioned JEPA world models trained with SIGReg, and latent MPC planners.

Sub-packages: `model` (encoder, predictor, world model, SIGReg, goal energy, checkpoints), `data`
(dataset format, clips, recorder, rollouts, collection), `training`, `evaluation`, `report` (plots,
videos), `commands` (one module per `wm` command), and `envs`, `planners`, `configs` (installed
from the repository's top-level folders of those names). Importing a package costs nothing: the
names it offers load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `name` from `table[name]` on first use (PEP 562), so a
    package can offer its main names without importing torch until one is asked for."""
    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(table[name]), name)
    return __getattr__
