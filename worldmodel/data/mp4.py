"""MP4 files through PyAV: the frames of one file read in order, episode after episode, and an
encoder that writes frames at a fixed rate (temp file + rename). The LeRobot import and export use
both (worldmodel.data.lerobot); any codec FFmpeg decodes is read (LeRobot records AV1), H.264 is written.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _av():
    try:
        import av
    except ImportError:
        raise ValueError("reading and writing MP4 needs PyAV: pip install av") from None
    return av


def probe(path: Path) -> tuple[int, float]:
    """(frames, duration in s) of an MP4's first video stream; refuses a missing or undecodable file
    (it decodes the first frame)."""
    av = _av()
    if not path.is_file():
        raise ValueError(f"video {path} is missing; download the dataset's videos/ (or re-export it)")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                frames, duration = -1, 0.0
            else:
                s = c.streams.video[0]
                next(c.decode(s))
                frames = int(s.frames)
                duration = float(s.duration * s.time_base) if s.duration else float(c.duration or 0) / 1e6
    except Exception as e:  # noqa: BLE001 - av raises its own error classes; any means undecodable
        raise ValueError(f"{path} cannot be decoded ({type(e).__name__}: {e}); re-download or re-encode it") from None
    if frames < 0:
        raise ValueError(f"{path} holds no video stream; re-encode or re-download it")
    return frames, duration


class FrameReader:
    """The frames of one MP4 in order; `take(start_s, n, fps)` returns the n frames shown at
    start_s + k / fps (k = 0 .. n-1), as (n, H, W, 3) uint8. Episodes are read in file order."""

    def __init__(self, path: Path):
        self.path = path
        self._c = _av().open(str(path))
        self._frames = self._decode()
        self._pending: tuple[float, np.ndarray] | None = None

    def _decode(self) -> Iterator[tuple[float, np.ndarray]]:
        s = self._c.streams.video[0]
        s.thread_type = "AUTO"
        for f in self._c.decode(s):
            yield float(f.time), f.to_ndarray(format="rgb24")

    def take(self, start_s: float, n: int, fps: float) -> np.ndarray:
        out: list[np.ndarray | None] = [None] * n
        while True:
            item = self._pending or next(self._frames, None)
            self._pending = None
            if item is None:
                break
            k = round((item[0] - start_s) * fps)
            if k >= n:
                self._pending = item          # the next episode's first frame
                break
            if k >= 0:
                out[k] = item[1]
        missing = [k for k, f in enumerate(out) if f is None]
        if missing:
            raise ValueError(f"{self.path} has no frame at {start_s + missing[0] / fps:.3f} s ({len(missing)} of "
                             f"{n} frames missing from {start_s:.3f} s): the video is shorter than its episodes; "
                             "re-download or re-encode it")
        return np.stack(out)                  # type: ignore[arg-type]

    def close(self) -> None:
        self._c.close()


class Mp4Writer:
    """H.264 MP4 at `fps` frames per second, frame k at k / fps exactly; written under a temporary
    name and renamed by `close()` (a killed writer leaves only the temporary)."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        from fractions import Fraction

        av = _av()
        self.path, self.tmp = path, path.with_name(f"{path.name}.{os.getpid()}.tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._c = av.open(str(self.tmp), "w", format="mp4")
        rate = Fraction(fps).limit_denominator(1001)
        self._s = self._c.add_stream("libx264", rate=rate)
        self._s.width, self._s.height = width, height
        self._s.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self._s.options = {"crf": "18", "g": "2"}    # near-lossless; a keyframe every 2 frames seeks fast
        self._s.codec_context.time_base = 1 / rate
        self.frames = 0
        self._av = av

    @property
    def pix_fmt(self) -> str:
        return str(self._s.pix_fmt)

    def add(self, frames: np.ndarray) -> None:
        for f in frames:
            vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
            vf.pts = self.frames
            self.frames += 1
            self._c.mux(self._s.encode(vf))

    def close(self) -> Path:
        self._c.mux(self._s.encode())
        self._c.close()
        os.replace(self.tmp, self.path)
        return self.path
