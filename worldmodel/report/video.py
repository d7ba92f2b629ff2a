"""Frames and videos: camera frames fitted to the model, labelled panels, MP4 or GIF.

`fit_frame(frame, size)` turns a camera frame of any shape into the (size, size, 3) uint8 image a
model takes. `write_video(path, frames, fps)` writes an MP4 through imageio-ffmpeg and falls back
to a GIF (same stem) when ffmpeg is unavailable; it returns the path actually written. Frames are
(H, W, 3) uint8.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


def fit_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """A camera frame (H, W, 3) uint8 (or (H, W) grey) -> (size, size, 3) uint8: the centre square
    crop, resized with area averaging. Use the same call on goal images and observations (and on
    the frames you record for training) so that all three see the scene the same way."""
    from PIL import Image

    f = np.asarray(frame)
    if f.ndim == 2:
        f = np.repeat(f[:, :, None], 3, axis=2)
    if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3:
        raise ValueError(f"fit_frame takes an (H, W, 3) or (H, W) uint8 frame, got {f.shape} {f.dtype}")
    h, w = f.shape[:2]
    s = min(h, w)
    crop = np.ascontiguousarray(f[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s])
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BOX))


def upscale(img: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upscale of an (h, w, 3) uint8 image to (size, size*w/h, 3)."""
    k = max(1, size // img.shape[0])
    return np.repeat(np.repeat(img, k, axis=0), k, axis=1)


def label(img: np.ndarray, text: str, color=(255, 255, 255)) -> np.ndarray:
    """Draw `text` on a dark strip above `img` (Pillow's built-in font)."""
    from PIL import Image, ImageDraw

    strip = 14
    canvas = Image.new("RGB", (img.shape[1], img.shape[0] + strip), (20, 20, 20))
    canvas.paste(Image.fromarray(img), (0, strip))
    ImageDraw.Draw(canvas).text((3, 1), text, fill=color)
    return np.asarray(canvas)


def side_by_side(panels: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate equally tall (H, W_i, 3) panels horizontally with a dark gap."""
    h = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        if p.shape[0] < h:
            p = np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0)))
        out.append(p)
        if i < len(panels) - 1:
            out.append(np.full((h, gap, 3), 40, np.uint8))
    return np.concatenate(out, axis=1)


def ffmpeg_available() -> bool:
    """Whether imageio can write MP4 (imageio-ffmpeg installed with a working binary)."""
    try:
        import imageio_ffmpeg

        return os.path.exists(imageio_ffmpeg.get_ffmpeg_exe())
    except Exception:  # noqa: BLE001 - any failure means no ffmpeg
        return False


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 10) -> Path:
    """Write frames as MP4 (a GIF beside it when ffmpeg is missing); atomic; returns the path written."""
    import imageio.v2 as iio

    frames = [np.ascontiguousarray(f) for f in frames]
    if not frames:
        raise ValueError("write_video: no frames")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".gif" and not ffmpeg_available():
        print("ffmpeg unavailable (pip install imageio-ffmpeg); writing a GIF instead", file=sys.stderr)
        path = path.with_suffix(".gif")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix.lower() == ".gif":
        iio.mimwrite(tmp, frames, format="GIF", duration=1000.0 / fps, loop=0)
    else:
        h, w = frames[0].shape[:2]
        frames = [f[: h - h % 2, : w - w % 2] for f in frames]   # even sizes for H.264
        with iio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=8,
                            ffmpeg_log_level="error") as writer:
            for f in frames:
                writer.append_data(f)
    os.replace(tmp, path)
    return path
