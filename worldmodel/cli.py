"""The `wm` command: `wm <command> key=value ...`.

Each command lives in its own module exposing `CONFIG` (the dataclass schema), `CONFIG_NAME`
(the YAML in configs/) and `run(cfg)`; this file only dispatches. `wm inspect PATH`,
`wm preview PATH` and `wm plot PATH` take a positional path (shorthand for `path=PATH`), and
`wm compare A B ...` the evaluations to compare (`runs=[A,B]`). Modules named by $WM_PLUGINS or
`worldmodel.plugins` entry points are imported first (worldmodel/plugins.py).
"""
from __future__ import annotations

import importlib
import os
import sys

from worldmodel.config import quoted as _quoted
from worldmodel.sweep import MULTIRUN_FLAGS

RESUMABLE = {"collect", "train", "eval", "demo"}   # commands whose resume=true continues a killed run
COMMANDS = {
    "collect": ("worldmodel.commands.collect", "collect simulator rollouts into HDF5 shards"),
    "inspect": ("worldmodel.commands.inspect", "summarise a dataset (episodes, frames, statistics)"),
    "preview": ("worldmodel.commands.preview", "write an MP4/GIF of a few dataset episodes"),
    "train": ("worldmodel.commands.train", "train a JEPA world model with SIGReg"),
    "eval": ("worldmodel.commands.eval", "zero-shot goal-reaching evaluation (LeWM protocol)"),
    "check": ("worldmodel.commands.check", "simulator-free planning checks on recorded held-out episodes"),
    "plot": ("worldmodel.commands.plot", "draw a training run's curves or an evaluation's summary as PNG"),
    "compare": ("worldmodel.commands.compare", "evaluations of the same tasks side by side, with paired tests"),
    "demo": ("worldmodel.commands.demo", "collect -> train -> eval on TwoRoom, end to end"),
    "import": ("worldmodel.commands.importer", "a LeRobot or Minari dataset as a wm dataset (wm import lerobot PATH out=DATA)"),
    "export": ("worldmodel.commands.exporter", "a wm dataset as a LeRobot or Minari dataset (wm export lerobot DATA out=PATH)"),
    "distill": ("worldmodel.commands.distill", "a goal-conditioned policy distilled from a world model's latents"),
}

USAGE = "usage: wm <command> [-m] [key=value ...]   (wm <command> --help for its keys; -m: a sweep, " \
        "wm train -m lr=1e-4,3e-4)\n\ncommands:\n" + "\n".join(
    f"  {name:<8} {doc}" for name, (_, doc) in COMMANDS.items()
)


def _line(error: Exception) -> str:
    """An error as the one line wm prints (a library's message may run over several)."""
    return " ".join(part.strip() for part in str(error).splitlines() if part.strip())


def _page(text: str) -> int:
    """Print help text; a reader that leaves early (`wm train --help | head`) is no error."""
    try:
        print(text)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MUJOCO_GL", "egl")
    from worldmodel.machine import keep_freed_host_memory

    keep_freed_host_memory()            # CPU steps stop re-faulting their activations' pages
    if not argv or argv[0] in ("-h", "--help", "help"):
        return _page(USAGE)
    name, args = argv[0], argv[1:]
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    args = [a for a in args if a not in MULTIRUN_FLAGS]
    if name not in COMMANDS:
        print(f"wm: unknown command {name!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from worldmodel import plugins
    from worldmodel.config import ConfigError, compose, load
    from worldmodel.help import describe

    if any(a in ("-h", "--help") for a in args):         # with the overrides given (planner=icem --help)
        try:
            plugins.load()
            given = [a for a in args if "=" in a]
            if multirun:                                  # a sweep's keys: its first run's values
                from worldmodel.sweep import grid

                given = grid(given)[0][1]
            values = compose(module.CONFIG, module.CONFIG_NAME, given)
        except ConfigError as e:
            print(f"wm {name}: config error: {_line(e)}", file=sys.stderr)
            return 2
        text = "\n".join(describe(module.CONFIG, values))
        return _page(f"wm {name}: {COMMANDS[name][1]}\n\nkeys ({module.CONFIG.__name__}'s defaults, with the "
                     f"presets configs/{module.CONFIG_NAME}.yaml picks and your overrides):\n{text}")
    if name in ("inspect", "preview", "plot") and args and "=" not in args[0]:
        args = [f"path={_quoted(args[0])}", *args[1:]]
    if name in ("import", "export"):     # wm import FORMAT SOURCE ..., wm export FORMAT DATA ...
        pos = [a for a in args if "=" not in a]
        args = [f"{k}={_quoted(v)}" for k, v in zip(("format", "path" if name == "import" else "data"), pos)] + \
            [a for a in args if "=" in a]
    if name == "compare" and any("=" not in a for a in args):
        runs = [a for a in args if "=" not in a]
        args = ["runs=[" + ",".join(_quoted(r) for r in runs) + "]", *(a for a in args if "=" in a)]
    try:
        plugins.load()                  # your envs / policies / planners ($WM_PLUGINS, entry points)
        if multirun:                    # the grid, one run after another (worldmodel/sweep.py)
            from worldmodel.sweep import run_sweep

            return run_sweep(name, module.CONFIG, module.CONFIG_NAME, module.run, args)
        cfg = load(module.CONFIG, module.CONFIG_NAME, args)
        result = module.run(cfg)
    except ConfigError as e:
        print(f"wm {name}: config error: {_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:             # `wm inspect data | head`: the reader left; stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, ValueError) as e:  # a bad path (out= under a file, ...), value or file
        if os.environ.get("WM_DEBUG"):
            raise
        print(f"wm {name}: error: {_line(e)}  (WM_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = ("finished work is kept (re-run with resume=true)" if name in RESUMABLE else
                "re-run it (with overwrite=true where it had begun writing out=)")
        print(f"\nwm {name}: interrupted; {kept}.", file=sys.stderr)
        return 130
    return 0 if result is None or result is True or isinstance(result, (dict, str)) else int(result)


if __name__ == "__main__":
    sys.exit(main())
