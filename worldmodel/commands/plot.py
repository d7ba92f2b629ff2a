"""`wm plot PATH`: redraw a training run's curves or an evaluation's summary as PNG."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

@dataclass
class PlotConfig:
    """wm plot: redraw a training run's curves or an evaluation's summary from its files."""

    path: str | None = None   # a training run directory (metrics.csv), an eval directory or its results.json
    out: str | None = None    # the PNG to write; default: curves.png / summary.png beside the input

    def __post_init__(self) -> None:
        if not self.path:
            from worldmodel.config import ConfigError

            raise ConfigError("nothing to plot: wm plot PATH (a `wm train` or `wm eval` out= directory)")


CONFIG, CONFIG_NAME = PlotConfig, "plot"


def run(cfg: PlotConfig) -> str:
    from worldmodel.report.plots import EVAL_SUMMARY, plot_eval, plot_training

    p = Path(cfg.path)
    results = p if p.is_file() else p / "results.json"
    if results.name.endswith(".json") and results.is_file():
        try:
            data = json.loads(results.read_text())
            data["per_episode"][0]["closest_error"]         # what the summary draws, per episode
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ValueError(f"{results} is not a `wm eval` results.json with per-episode outcomes "
                             f"({type(e).__name__}: {e}); pass an eval output directory or a training run "
                             "directory, or re-run `wm eval` to write one") from None
        png = plot_eval(data, cfg.out or results.with_name(EVAL_SUMMARY))
    elif p.is_dir():
        png = plot_training(p, cfg.out or None)
        if png is None:
            raise FileNotFoundError(f"{p} has no metrics.csv rows and no results.json; pass a "
                                    "`wm train` out= directory or a `wm eval` out= directory")
    else:
        raise FileNotFoundError(f"{p} does not exist; pass a `wm train` or `wm eval` out= directory")
    print(f"wrote {png}")
    return str(png)
