"""Files the toolkit writes: atomic JSON, exclusive locks, a command's output directory and summary.

Everything here writes by temp file + rename, so a reader never sees a partial file, and refuses
before any work rather than clobber what another command (or the user) wrote. No torch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def _json_default(x: Any) -> Any:
    """numpy / torch scalars as numbers, anything else (paths, ...) as its string."""
    return x.item() if hasattr(x, "item") and getattr(x, "ndim", None) == 0 else str(x)


def exclusive_lock(path: Path, busy: str) -> Any:
    """Hold an exclusive lock on `path` (created) until the returned handle is closed or the process
    ends, kill -9 included (the kernel releases it); `busy`: the error when another process holds it."""
    import fcntl

    fh = open(path, "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise FileExistsError(busy) from None
    return fh


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON via temp file + fsync + rename (parent made if missing), so readers never see a
    partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_resolved(cfg: Any, out_dir: str | os.PathLike, name: str = "config.json") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, dataclasses.asdict(cfg))


def check_output(out: Path, overwrite: bool, writes: set[str], command: str) -> bool:
    """Before any work: may `wm <command>` write to `out`? True when it holds an earlier output to
    delete (the caller deletes it after its last refusal, so a refused run loses nothing). Refused:
    an existing output without overwrite=true, and with it a folder holding anything the command does
    not write (a training run, a dataset, your files), which overwrite=true must never delete."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"out={out} is a file; choose a directory path")
    if not any(out.iterdir()):
        return False
    if not overwrite:
        raise FileExistsError(f"output {out} already exists; pass overwrite=true or another out=")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in writes and not p.name.endswith(".tmp"))
    if foreign:
        raise FileExistsError(f"out={out} holds {', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''}, "
                              f"which `wm {command}` does not write: overwrite=true replaces only an earlier "
                              f"`wm {command}` output, never other files. Choose another out=")
    return True


class OutputDir:
    """A command's out= directory, in two steps around the command's refusals: `prepare()` before any
    work refuses an out= the command may not write (`check_output`), `open(cfg)` after the last
    refusal deletes the earlier output being replaced, creates the folder and saves the resolved
    config (config.json). A refused run leaves out= as it found it."""

    def __init__(self, path: str | os.PathLike, command: str, writes: set[str], overwrite: bool) -> None:
        self.path, self.command, self.writes, self.overwrite = Path(path), command, set(writes), overwrite
        self._replace: bool | None = None          # None: not prepared yet

    def prepare(self, resuming: bool = False) -> OutputDir:
        """Refuse an out= this command may not write. `resuming`: out= holds this command's unfinished
        run, to be continued: neither checked nor replaced."""
        self._replace = not resuming and check_output(self.path, self.overwrite, self.writes, self.command)
        return self

    def open(self, cfg: Any) -> Path:
        """After the last refusal: replace an earlier output, create out= and write config.json."""
        if self._replace is None:
            raise RuntimeError(f"OutputDir({self.path}).open() before prepare(): nothing was checked")
        if self._replace:
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        save_resolved(cfg, self.path)
        return self.path


def write_summary(out: Path, summary: dict[str, Any], picture: str, draw: Callable[[dict[str, Any], Path], Any],
                  line: str, supersedes: Iterable[str] = (), redraw: str = "redraw it later with `wm plot`") -> Path:
    """A command's last step: `summary` as out/results.json (atomically), then the files it
    supersedes deleted (an unfinished run's progress), `picture` drawn by draw(summary, path) (a
    picture that cannot be drawn only warns: the results are on disk), and `line` printed with where
    both are. Returns the results.json path."""
    from worldmodel.report.plots import safe_draw

    results = write_json_atomic(out / "results.json", summary)
    for name in supersedes:
        (out / name).unlink()
    safe_draw(draw, summary, out / picture, redraw=redraw)
    print(f"{line}; results in {results}, picture in {out / picture}")
    return results
