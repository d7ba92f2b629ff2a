"""`wm export FORMAT DATA out=PATH`: a wm dataset for other tools.

    wm export lerobot data/arm out=exports/arm_lerobot    # loads with lerobot's LeRobotDataset
    wm export minari data/hopper                          # into Minari's folder as wm/hopper-v0
    wm export lerobot ... resume=true    # a killed LeRobot export keeps its finished files

Formats: `lerobot` (v3.0, worldmodel.data.lerobot_export) and `minari` (worldmodel.data.minari).
Nothing appears at out= until the export is complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worldmodel.config import ConfigError

FORMATS = ("lerobot", "minari")


@dataclass
class ExportConfig:
    format: str | None = None       # lerobot | minari (the first positional argument)
    data: str | None = None         # the wm dataset to export (the second positional argument)
    out: str | None = None          # where to write; Minari's default: its dataset folder for dataset_id
    camera: str | None = None       # LeRobot: the image feature's name; null: the imported one, or observation.image
    task: str | None = None         # LeRobot: every episode's task string; null: the imported ones, or the env
    robot_type: str | None = None   # LeRobot: info.json's robot_type
    dataset_id: str | None = None   # Minari: namespace/name-vN; null: wm/<data's name>-v0
    resume: bool = False            # LeRobot: finish a killed export into the same out=
    overwrite: bool = False         # replace an existing out=
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {FORMATS}, got {self.format!r}: wm export lerobot DATA out=PATH")
        if not self.data:
            raise ConfigError(f"no dataset given: wm export {self.format} DATA out=PATH")
        if self.format == "lerobot" and not self.out:
            raise ConfigError(f"no out= given: wm export lerobot {self.data} out=<directory>")
        if self.resume and self.overwrite:
            raise ConfigError("pass only one of resume=true / overwrite=true")
        if self.format == "minari" and self.resume:
            raise ConfigError("a Minari export is rewritten whole; run it again without resume=true")


CONFIG, CONFIG_NAME = ExportConfig, "export"


def run(cfg: ExportConfig) -> dict[str, Any]:
    if cfg.format == "lerobot":
        from worldmodel.data.lerobot_export import export_lerobot

        summary = export_lerobot(cfg.data, cfg.out, camera=cfg.camera, task=cfg.task,  # type: ignore[arg-type]
                                 robot_type=cfg.robot_type, resume=cfg.resume, overwrite=cfg.overwrite,
                                 progress=cfg.progress)
    else:
        from worldmodel.data.minari import export_minari

        summary = export_minari(cfg.data, cfg.out, dataset_id=cfg.dataset_id,  # type: ignore[arg-type]
                                overwrite=cfg.overwrite, progress=cfg.progress)
    print(f"wm export: {summary['episodes']} episodes -> {summary['out']}")
    return summary
