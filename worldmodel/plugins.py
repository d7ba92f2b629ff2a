"""Plugins: your own envs, data policies and planners, visible to the `wm` command.

The registries (`envs.register_env`, `envs.register_policy`, `planners.register_planner`) are
filled by importing modules. The `wm` command imports the built-in ones; it imports yours when
you name them, in either of two ways:

    WM_PLUGINS=my_robot.envs,my_planners wm collect env=my_arm ...      # module names, comma-separated

    # pyproject.toml of your package (pip install it once)
    [project.entry-points."worldmodel.plugins"]
    my_robot = "my_robot.envs"

A module that cannot be imported stops the command before any work, naming the module and the
fix. Collection worker processes import the same modules, so a plugin env collects in parallel
like a built-in one. In Python, just import your module yourself.
"""
from __future__ import annotations

import importlib
import os
from importlib import metadata

ENV_VAR = "WM_PLUGINS"
ENTRY_POINT_GROUP = "worldmodel.plugins"


def names() -> list[str]:
    """The plugin modules to import: those of $WM_PLUGINS, then those of installed packages'
    `worldmodel.plugins` entry points, without repeats."""
    found = [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.append(ep.value.split(":")[0])
    return list(dict.fromkeys(found))


def load() -> list[str]:
    """Import every plugin module (registering what it defines); returns their names."""
    mods = names()
    for name in mods:
        try:
            importlib.import_module(name)
        except Exception as e:   # noqa: BLE001 - any failure of user code: say which module and why
            raise ValueError(f"plugin module {name!r} (from ${ENV_VAR} or a {ENTRY_POINT_GROUP!r} entry "
                             f"point) failed to import: {type(e).__name__}: {e}. Put its directory on "
                             "PYTHONPATH or pip install its package, or remove it") from None
    return mods
