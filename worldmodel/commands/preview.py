"""`wm preview PATH`: a video of a few dataset episodes, to see what the model will learn from.

    wm preview data/tworoom episodes=4 out=preview.mp4 fps=10

Episodes are tiled in a grid (`layout=grid`, played side by side; a finished episode holds its
last frame) or played one after another (`layout=sequence`), upscaled to at least `min_tile` px
and labelled with the episode index and step. Writes MP4 through imageio-ffmpeg; where ffmpeg is
unavailable it falls back to an animated GIF (same frames, `.gif` suffix) and says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldmodel.config import ConfigError
from worldmodel.data.dataset import load_dataset
from worldmodel.report.video import write_video


@dataclass
class PreviewConfig:
    path: str | None = None       # dataset directory or .h5 file
    episodes: int = 4             # how many episodes (the first ones, in episode-index order)
    out: str | None = None        # null -> <dataset dir>/preview.mp4 (next to an .h5 file: <name>.mp4)
    fps: float | None = None      # null -> the env's control rate (meta.json), else 10
    layout: str = "grid"          # grid | sequence
    min_tile: int = 128           # upscale each episode tile to at least this many pixels
    max_steps: int | None = None  # cut episodes to this many steps
    labels: bool = True           # draw "ep <index>  t <step>" on each tile

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("no dataset given: wm preview PATH (a directory from `wm collect`, or an .h5 file)")
        if self.episodes < 1:
            raise ConfigError(f"episodes must be >= 1, got {self.episodes}")
        if self.layout not in ("grid", "sequence"):
            raise ConfigError(f"layout must be grid or sequence, got {self.layout!r}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")


CONFIG = PreviewConfig
CONFIG_NAME = "preview"


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw `text` in the top-left corner of an (H, W, 3) uint8 tile."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(tile)
    draw = ImageDraw.Draw(img)
    box = draw.textbbox((2, 1), text)
    draw.rectangle((0, 0, box[2] + 2, box[3] + 1), fill=(0, 0, 0))
    draw.text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(img)


def make_frames(episodes: list[np.ndarray], indices: list[int], layout: str = "grid", scale: int = 1,
                labels: bool = True) -> list[np.ndarray]:
    """Video frames from per-episode pixel arrays [(T_e, H, W, 3)] (grid or one after another)."""
    def tile(e: int, t: int) -> np.ndarray:
        px = episodes[e]
        img = px[min(t, len(px) - 1)]
        img = img.repeat(scale, 0).repeat(scale, 1) if scale > 1 else img  # (H*s, W*s, 3)
        return _label(img, f"ep {indices[e]}  t {min(t, len(px) - 1)}") if labels else img

    frames = []
    if layout == "sequence":
        for e in range(len(episodes)):
            frames += [tile(e, t) for t in range(len(episodes[e]))]
        return frames
    n = len(episodes)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    h, w = episodes[0].shape[1] * scale, episodes[0].shape[2] * scale
    for t in range(max(len(p) for p in episodes)):
        canvas = np.zeros((rows * h + (rows - 1) * 2, cols * w + (cols - 1) * 2, 3), np.uint8)  # 2 px gutters
        for e in range(n):
            r, c = divmod(e, cols)
            canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = tile(e, t)
        frames.append(canvas)
    return frames


def run(cfg: PreviewConfig) -> dict[str, Any]:
    path = Path(cfg.path)  # type: ignore[arg-type]
    ds = load_dataset(path, columns=("pixels",), episodes=cfg.episodes)
    if "pixels" not in ds.columns:
        raise ValueError(f"{path} has no pixels column to preview (columns: {list(ds.available)})")
    eps = [ds.episode(e)["pixels"][:cfg.max_steps] for e in range(ds.num_episodes)]
    idx = [int(i) for i in ds.ep_index]
    scale = max(1, math.ceil(cfg.min_tile / eps[0].shape[1]))
    frames = make_frames(eps, idx, cfg.layout, scale, cfg.labels)
    fps = cfg.fps or float(ds.meta.get("control_hz") or 10.0)
    default = path / "preview.mp4" if path.is_dir() else path.with_suffix(".mp4")
    written = write_video(Path(cfg.out) if cfg.out else default, frames, fps)
    print(f"wrote {written} ({len(frames)} frames, episodes {idx}, {fps:g} fps)")
    return {"out": str(written), "frames": len(frames), "episodes": idx, "fps": fps,
            "format": written.suffix.lstrip(".")}
