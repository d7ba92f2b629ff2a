"""Files the toolkit writes: atomic JSON, exclusive locks, a command's output directory and summary,
the marker that proves which command wrote a folder, free-disk checks and full-disk messages.

Everything here writes by temp file + rename, so a reader never sees a partial file, and refuses
before any work rather than clobber what another command (or the user) wrote: overwrite=true
deletes only a folder its own command marked (docs/promises.md). No torch.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

MARKER = ".wm-output.json"     # written by each command into its out=: what overwrite=true may replace


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


@contextlib.contextmanager
def writing(path: str | os.PathLike, tmp: str | os.PathLike | None = None,
            fix: str = "free space, then re-run") -> Iterator[None]:
    """Around the writing of `path`: a full disk (or quota) becomes one OSError line naming the file,
    the free space and `fix`; `tmp`, the temporary being written, is deleted on any failure."""
    try:
        yield
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            free = free_bytes(Path(path).parent)
            raise OSError(e.errno, f"disk full writing {path} ({free / 2 ** 20:.0f} MiB free there; nothing "
                                   f"earlier was lost): {fix}") from None
        raise


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem that holds `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(path: str | os.PathLike, need: int, what: str, fix: str) -> None:
    """Refuse, before anything is written, `need` bytes of `what` where `path`'s disk has less free."""
    free = free_bytes(path)
    if need > free:
        raise OSError(errno.ENOSPC, f"{what} needs about {need / 2 ** 30:.3g} GiB on the disk of {path}, which "
                                    f"has {free / 2 ** 30:.3g} GiB free: {fix}")


def write_atomic(path: str | os.PathLike, write: Callable[[Any], Any],
                 fix: str = "free space, then re-run") -> Path:
    """Write `path` through `write(binary file)` into a temporary beside it, fsync, then rename: a
    reader never sees a partial file, and a failure (a full disk: one line, `writing`) leaves the
    earlier file whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with writing(path, tmp, fix):
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write JSON via temp file + fsync + rename (parent made if missing), so readers never see a
    partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with writing(path, tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return path


def mark_output(out: str | os.PathLike, writer: str) -> None:
    """Record in `out` (an output folder) that `writer` ("wm train", "DatasetWriter") wrote it: the
    only proof overwrite=true accepts before deleting anything there (`check_output`)."""
    if output_owner(out) != writer:
        write_json_atomic(Path(out) / MARKER, {"written_by": writer,
                                               "note": "overwrite=true may replace this folder"})


def output_owner(out: str | os.PathLike) -> str | None:
    """Who wrote `out` per its marker ("wm train", "wm collect", ...), or None (no marker, or damaged)."""
    try:
        who = json.loads((Path(out) / MARKER).read_text()).get("written_by")
    except (OSError, ValueError, AttributeError):
        return None
    return who if isinstance(who, str) else None


def save_resolved(cfg: Any, out_dir: str | os.PathLike, name: str = "config.json") -> Path:
    """Write the resolved config next to a run's outputs (atomically)."""
    path = Path(out_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, dataclasses.asdict(cfg))


def check_output(out: Path, overwrite: bool, writes: Iterable[str], command: str,
                 exists: str = "pass overwrite=true or another out=") -> bool:
    """Before any work: may `command` ("eval" for `wm eval`, or a writer's own name) write to `out`?
    True when it holds an earlier output to delete (the caller deletes it after its last refusal, so a
    refused run loses nothing). Refused: an existing output without overwrite=true (`exists`: the fix
    named), and with it a folder holding anything the command does not write (`writes`: names or glob
    patterns), or without the marker an earlier run of it left there (`mark_output`): overwrite=true
    deletes only what it proves this command wrote, never a folder by the look of its file names."""
    writer = command if not command.islower() else f"wm {command}"
    if not out.exists():
        return False
    if not out.is_dir():
        raise FileExistsError(f"out={out} is a file; choose a directory path")
    if not any(out.iterdir()):
        return False
    if not overwrite:
        raise FileExistsError(f"output {out} already exists; {exists}")
    writes = (*writes, MARKER, "*.tmp")
    foreign = sorted(p.name for p in out.iterdir() if not any(fnmatch.fnmatchcase(p.name, w) for w in writes))
    if foreign:
        raise FileExistsError(f"out={out} holds {', '.join(foreign[:4])}{' ...' if len(foreign) > 4 else ''}, "
                              f"which `{writer}` does not write: overwrite=true replaces only an earlier "
                              f"`{writer}` output, never other files. Choose another out=")
    check_owner(out, writer)
    return True


def check_owner(out: Path, writer: str) -> None:
    """Before overwrite=true deletes anything in `out`: refuse unless `writer`'s marker is there."""
    if output_owner(out) != writer:
        raise FileExistsError(f"out={out} has no {MARKER} saying `{writer}` wrote it (an output from before "
                              f"markers, or another's): overwrite=true deletes only what it knows it wrote. "
                              f"Delete the folder yourself, or choose another out=")


class OutputDir:
    """A command's out= directory, in two steps around the command's refusals: `prepare()` before any
    work refuses an out= the command may not write (`check_output`), `open(cfg)` after the last
    refusal deletes the earlier output being replaced, creates the folder, marks it as this command's
    (`mark_output`) and saves the resolved config (config.json). A refused run leaves out= as it found it."""

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
        mark_output(self.path, f"wm {self.command}")
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
