"""Training logs: metrics.csv plus an optional TensorBoard mirror.

`RunLogger` writes one CSV row per logged step (train rows and eval rows share one wide table;
missing cells stay empty) and mirrors every scalar to TensorBoard when it is installed. On resume it
drops rows newer than the checkpoint, so replayed steps are not logged twice. Collapse diagnostics
live in worldmodel/training/validation.py.
"""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

METRICS = "metrics.csv"


class RunLogger:
    """CSV (+ TensorBoard) scalar log for one run directory; a no-op on non-zero DDP ranks."""

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(out_dir) / METRICS
        self.fields: list[str] = []
        self.tb = None
        self.t0 = time.time()
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.fields = next(csv.reader(f), [])
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed; logging to metrics.csv only "
                      "(pip install tensorboard, or set tensorboard=false)")
            else:
                self.tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        """Keep only rows with step <= `step` (atomic rewrite)."""
        with open(self.path, newline="") as f:
            rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else []
        keep = [r for r in rows if r.get("step") and int(float(r["step"])) <= step]
        self._rewrite(fields, keep)

    def _rewrite(self, fields: list[str], rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            if fields:
                w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.path)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "") -> None:
        """Append one row {step, time, **metrics}; new keys widen the table (file rewritten once)."""
        if not self.enabled:
            return
        row = {"step": step, "wall_s": round(time.time() - self.t0, 3)}
        row.update({prefix + k: _fmt(v) for k, v in metrics.items()})
        new = [k for k in row if k not in self.fields]
        if new:
            old_rows: list[dict[str, Any]] = []
            if self.path.exists() and self.fields:
                with open(self.path, newline="") as f:
                    old_rows = list(csv.DictReader(f))
            self.fields = self.fields + new
            self._rewrite(self.fields, old_rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(prefix + k, float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def _fmt(v: Any) -> Any:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (for tests, reports and plots)."""
    path = Path(out_dir) / METRICS
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))
