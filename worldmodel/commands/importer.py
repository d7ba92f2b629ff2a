"""`wm import FORMAT SOURCE out=DATA`: a dataset recorded elsewhere, as a wm dataset.

    wm import lerobot data/so100_pick out=data/so100 camera=observation.images.top image_size=64
    wm import minari mujoco/hopper/expert-v0 out=data/hopper_minari   # a local Minari id or directory
    wm import ... resume=true            # a killed import continues after its last finished episode

Formats: `lerobot` (LeRobotDataset v3.0, v2.x: worldmodel.data.lerobot) and `minari`
(worldmodel.data.minari). Frames are fitted with fit_frame; the source is checked before any work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worldmodel.config import ConfigError

FORMATS = ("lerobot", "minari")


@dataclass
class ImportConfig:
    format: str | None = None               # lerobot | minari (the first positional argument)
    path: str | None = None                 # the source: a LeRobot dataset directory, a Minari directory or local id
    out: str | None = None                  # the wm dataset to write
    camera: str | None = None               # the image feature / observation key; null: the first one
    image_size: int = 64                    # frames are fitted (centre square, area resize) to this size
    action_low: list[float] | None = None   # the recorded action bounds; null: the data's range
    action_high: list[float] | None = None  # (Minari replays: the env's action space)
    control_hz: float | None = None         # Minari only, where the dataset records no rate
    resume: bool = False                    # continue a killed import into the same out=
    overwrite: bool = False                 # replace an existing out=
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.format!r}: wm import lerobot PATH out=DATA")
        if not self.path:
            raise ConfigError(f"no source given: wm import {self.format} PATH out=DATA")
        if not self.out:
            raise ConfigError(f"no out= given: wm import {self.format} {self.path} out=data/<name>")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")
        if self.resume and self.overwrite:
            raise ConfigError("pass only one of resume=true / overwrite=true")
        if self.control_hz is not None and self.format != "minari":
            raise ConfigError("control_hz= is for Minari datasets; a LeRobot dataset records its fps")


CONFIG, CONFIG_NAME = ImportConfig, "import"


def run(cfg: ImportConfig) -> dict[str, Any]:
    kw = {"camera": cfg.camera, "image_size": cfg.image_size, "action_low": cfg.action_low,
          "action_high": cfg.action_high, "resume": cfg.resume, "overwrite": cfg.overwrite, "progress": cfg.progress}
    if cfg.format == "lerobot":
        from worldmodel.data.lerobot import import_lerobot

        summary = import_lerobot(cfg.path, cfg.out, **kw)  # type: ignore[arg-type]
    else:
        from worldmodel.data.minari import import_minari

        summary = import_minari(cfg.path, cfg.out, control_hz=cfg.control_hz, **kw)  # type: ignore[arg-type]
    print(f"wm import: {summary['episodes']} episodes, {summary['frames']} frames -> {cfg.out} "
          f"(wm inspect {cfg.out}; wm train data={cfg.out})")
    return summary
