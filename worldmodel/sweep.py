"""Sweeps: `wm train -m lr=1e-4,3e-4 seed=0,1,2` runs the grid of the values given, one run after another.

Hydra's sweep syntax (`a,b`, `range(3)`, `choice(a,b)`; a value holding a comma is quoted: `key='a,b'`)
expands into every combination. Each run writes to its own subfolder of the sweep's `out=`, named
after its swept values (`out/lr-0.0001_seed-0`). Every run's config is composed and validated before
the first one starts; at the end a table of each run's final metrics is printed and written to
`out/sweep.json`. A run that fails stops the sweep (the table and sweep.json show the runs so far
and the error); `resume=true` continues it, each run from where it stopped.
"""
from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Callable

from worldmodel.config import ConfigError, load, quoted

SWEEPABLE = ("train", "eval")      # commands with one out= per run and final numbers to tabulate
MULTIRUN_FLAGS = ("-m", "--multirun")
# The metrics the printed table shows, where a run has them (sweep.json keeps every number).
SHOWN = ("step", "loss", "val_pred", "val_nochange", "probe_r2", "eff_rank", "std_min",
         "successes", "episodes", "success_rate")


def parse(overrides: list[str]) -> list[tuple[str, list[str] | None]]:
    """Each override as (key, its values when it sweeps, else None), with Hydra's override grammar.
    A syntax error is one ConfigError line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(f"bad override: {str(e).splitlines()[0].rstrip('.')}. Quote a value that holds "
                          "spaces, commas or brackets: key='a b'") from None
    out: list[tuple[str, list[str] | None]] = []
    for ov in parsed:
        key = ov.get_key_element()
        if not ov.is_sweep_override():
            out.append((key, None))
        elif not ov.is_discrete_sweep():
            raise ConfigError(f"{ov.input_line}: an interval is no grid of runs; list the values, "
                              f"e.g. {key}=1e-4,3e-4")
        else:
            out.append((key, list(ov.sweep_string_iterator())))
    return out


def refuse_sweeps(command: str, overrides: list[str]) -> None:
    """A sweep without -m is refused with the fix: add -m, or quote a comma that belongs to the value."""
    for ov, (key, values) in zip(overrides, parse(overrides)):
        if values is not None:
            fix = (f"run the grid with -m (wm {command} -m {ov})" if command in SWEEPABLE
                   else f"wm {command} runs one config; pass one value")
            raise ConfigError(f"{ov} gives {key} {len(values)} values: {fix}, or quote a value that holds "
                              f"a comma: {key}='a,b'")


def grid(overrides: list[str]) -> list[tuple[dict[str, str], list[str]]]:
    """Every combination of the swept values: ({swept key: value}, the run's overrides)."""
    fixed, axes = [], []
    for ov, (key, values) in zip(overrides, parse(overrides)):
        if values is None:
            fixed.append(ov)
        else:
            axes.append([(key, v) for v in values])
    return [(dict(combo), fixed + [f"{k}={v}" for k, v in combo]) for combo in itertools.product(*axes)]


def label(swept: dict[str, str]) -> str:
    """A run's subfolder: its swept values, `lr-0.0001_seed-0` (no `=` or `,`: a path holding them
    would itself read as an override or a sweep)."""
    text = "_".join(f"{k.lstrip('+~')}-{v}" for k, v in swept.items())
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "run"


def run_sweep(command: str, schema: type, config_name: str, run: Callable[[Any], Any],
              overrides: list[str]) -> int:
    """Compose and check every run's config, run them one after another, print and save the summary."""
    from worldmodel.io import write_json_atomic

    if command not in SWEEPABLE:
        raise ConfigError(f"-m sweeps run only for {' and '.join(f'wm {c}' for c in SWEEPABLE)}; "
                          f"run wm {command} once per value")
    points = grid(overrides)
    if any(k.lstrip("+") == "out" for k in points[0][0]):
        raise ConfigError("out= cannot be swept: it names the sweep's folder, and each run gets a subfolder")
    if not points[0][0]:
        raise ConfigError(f"-m but no override gives several values: e.g. wm {command} -m lr=1e-4,3e-4")
    base = Path(load(schema, config_name, points[0][1]).out)
    runs = []
    for swept, ovs in points:                       # every config refused before any work
        out = base / label(swept)
        runs.append((swept, out, load(schema, config_name, [*ovs, f"out={quoted(out)}"])))
    print(f"wm {command}: sweep of {len(runs)} runs into {base}/")
    rows = []
    for i, (swept, out, cfg) in enumerate(runs, 1):
        print(f"\n=== run {i}/{len(runs)}: {' '.join(f'{k}={v}' for k, v in swept.items())} -> {out}", flush=True)
        row: dict[str, Any] = {"overrides": swept, "out": str(out), "metrics": {}, "error": None}
        rows.append(row)
        try:
            result = run(cfg)
            row["metrics"] = {k: v for k, v in (result if isinstance(result, dict) else {}).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool)}
        except BaseException as e:      # the sweep stops here (Ctrl-C too); `wm` prints the error as one line
            row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
            raise
        finally:
            write_json_atomic(base / "sweep.json", {"command": command, "overrides": overrides, "runs": rows})
            if row["error"] is not None or i == len(runs):
                print("\n" + "\n".join(table(rows)) + f"\n\nsummary: {base / 'sweep.json'}", flush=True)
    return 0


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The summary as aligned text: one line per run, its swept values and final metrics."""
    keys = list(rows[0]["overrides"]) if rows else []
    shown = [m for m in SHOWN if any(m in r["metrics"] for r in rows)]
    cells = [[*keys, *shown, "status"]]
    for r in rows:
        nums = [_fmt(r["metrics"].get(m)) for m in shown]
        cells.append([r["overrides"][k] for k in keys] + nums + ["ok" if r["error"] is None else "failed"])
    widths = [max(len(str(row[j])) for row in cells) for j in range(len(cells[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return str(v) if isinstance(v, int) else f"{v:.4g}"
