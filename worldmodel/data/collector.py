"""`wm collect`: roll out a scripted policy in a simulator into a crash-safe HDF5 dataset.

Each worker process collects a contiguous block of episode indices, stages every episode
atomically and packs its block into one shard (worldmodel.data.dataset). Episode i is seeded by
`episode_seed(seed, i)` alone, so the data depend neither on the worker count nor on a
`shard=`/`num_shards=` split across machines. A killed run loses only the episodes in flight;
`resume=true` finishes the rest.
"""
from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import queue as queue_mod
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from worldmodel.data import dataset as D
from worldmodel.data.config import CollectConfig
from worldmodel.data.rollout import rollout
from worldmodel.io import (MARKER, check_disk, check_output, exclusive_lock, mark_output, save_resolved,
                           write_json_atomic)




def shard_range(episodes: int, shard: int, num_shards: int) -> range:
    """Global episode indices collected by machine `shard` of `num_shards` (contiguous blocks)."""
    return range(shard * episodes // num_shards, (shard + 1) * episodes // num_shards)


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------
def _collect_block(job: dict[str, Any], report: Callable[[tuple], None]) -> None:
    """Collect the episodes `job["indices"]`, staging each, then pack them into one shard."""
    from worldmodel import envs

    writing = _writer_lock(Path(job["out"]), job["shard"])    # held while this process may write
    try:
        if job.get("parent") and not _alive(job["parent"]):
            os._exit(1)                                         # started for a run already killed
        env = envs.make(job["env"], image_size=job["image_size"], **job["env_kwargs"])
        staged, t0 = [], time.perf_counter()
        try:
            for i in job["indices"]:
                if job.get("parent") and not _alive(job["parent"]):
                    os._exit(1)                                 # orphaned: the collection was killed
                ep = rollout(env, job["policy"], job["seed"], i, job["episode_len"], job["policy_kwargs"])
                diverged = ep.pop("diverged")
                staged.append(D.stage_episode(job["out"], ep))
                report(("ep", len(ep["action"]), diverged))
        finally:
            env.close()
        shard = D.pack_shard(job["out"], staged, job["attrs"])
    finally:
        writing.close()
    report(("done", str(shard), len(staged), time.perf_counter() - t0))


def _die_with_parent() -> None:
    """Linux: get SIGKILLed when the parent (the fork server, which exits with the collection)
    dies, so a killed collection leaves no orphan writers."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a killed parent not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def _writer_lock(out: Path, shard: int) -> Any:
    """Shared lock every episode writer holds while it may write; see `_wait_for_writers`."""
    fh = open(out / f".writers-shard{shard:03d}", "a")
    fcntl.flock(fh, fcntl.LOCK_SH)
    return fh


def _wait_for_writers(out: Path, shard: int, timeout: float = 60.0) -> None:
    """Block until no writer of an earlier (killed) run is alive: its workers die with it, but
    not instantly, and a resume must never race them for the same episodes."""
    with open(out / f".writers-shard{shard:03d}", "a") as fh:
        t0 = time.monotonic()
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return                                   # closing the file releases it
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise FileExistsError(
                        f"worker processes of an earlier collection are still writing to {out} after "
                        f"{timeout:.0f} s; find them with `fuser {fh.name}`, stop them, then resume") from None
                time.sleep(0.05)


def _worker(job: dict[str, Any], q: Any) -> None:
    """Process entry point: Ctrl-C is the parent's to handle; errors go back as tracebacks."""
    _die_with_parent()
    if not _alive(job["parent"]):
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["MUJOCO_GL"] = "egl"
    try:
        _collect_block(job, q.put)
    except (OSError, ValueError) as e:   # a full disk, a damaged file: the one line the parent raises
        q.put(("refused", "OSError" if isinstance(e, OSError) else "ValueError", str(e)))
        raise SystemExit(1)
    except BaseException:  # noqa: BLE001 - report everything to the parent
        q.put(("error", traceback.format_exc()))
        raise SystemExit(1)


def _context() -> Any:
    """A forkserver context that has imported the simulators once, so each worker starts without
    re-importing MuJoCo / dm_control as it would under `spawn`.
    Calling it early overlaps that import with the main process's own start-up work."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    ctx = mp.get_context("forkserver")
    from worldmodel import plugins

    ctx.set_forkserver_preload(["worldmodel.data.collector", "worldmodel.envs", *plugins.names()])   # + your envs
    from multiprocessing import forkserver

    forkserver.ensure_running()
    return ctx


def _run_workers(jobs: list[dict[str, Any]], on_msg: Callable[[tuple], None]) -> None:
    """Start one worker process per job and pump their messages until all finish."""
    ctx = _context()
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(j, q), daemon=True, name=f"wm-collect-{k}")
             for k, j in enumerate(jobs)]
    for p in procs:
        p.start()
    done = 0
    try:
        while done < len(procs):
            try:
                msg = q.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"collection worker {dead[0].name} died (exit code {dead[0].exitcode}); "
                                       "finished episodes are kept: re-run with resume=true")
                continue
            if msg[0] == "refused":
                raise (OSError if msg[1] == "OSError" else ValueError)(msg[2])
            if msg[0] == "error":
                raise RuntimeError(f"a collection worker failed:\n{msg[1]}")
            done += msg[0] == "done"
            on_msg(msg)
        for p in procs:
            p.join()
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": sys.version.split()[0]}
    for pkg in ("worldmodel", "numpy", "mujoco", "dm-control", "gymnasium", "h5py", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _probe(cfg: CollectConfig) -> tuple[str, str, Any]:
    """Check env and policy names and kwargs by building them once; returns (name, id, EnvInfo)."""
    from worldmodel import envs
    from worldmodel.envs.registry import IDS

    short, named = envs.resolve(cfg.env.name)   # ValueError listing the envs
    if cfg.policy not in envs.list_policies():
        raise ValueError(f"unknown policy {cfg.policy!r}; choose one of {envs.list_policies()} (policy=...)")
    try:
        env = envs.make(cfg.env.name, image_size=cfg.image_size, **cfg.env.kwargs)
    except TypeError as e:
        raise ValueError(f"env {cfg.env.name!r} rejected env.kwargs {cfg.env.kwargs}: {e}") from None
    try:
        try:
            policy = envs.make_policy(cfg.policy, env, np.random.default_rng(0), **cfg.policy_kwargs)
        except TypeError as e:
            raise ValueError(f"policy {cfg.policy!r} rejected policy_kwargs {cfg.policy_kwargs}: {e}") from None
        info = env.env_info()
    finally:
        env.close()
    from worldmodel.envs.policies import ExpertPolicy, NoisePolicy

    if isinstance(policy, ExpertPolicy) and isinstance(policy.inner, NoisePolicy):
        print(f"note: {cfg.env.name} has no scripted expert; policy=expert collects correlated noise",
              file=sys.stderr)
    if named:           # the name itself says which env (`Hopper-v5`, `dm_control/walker-walk`)
        return cfg.env.name, cfg.env.name, info
    return short, next(i for i, s in IDS.items() if s == short), info


# what `wm collect` writes in out= (besides io.MARKER): overwrite=true replaces nothing else
WRITES = (D.META, "config.json", "config_shard*.json", "shard_*.h5", D.STAGING, ".lock-shard*", ".writers-shard*")


def _prepare_out(cfg: CollectConfig, out: Path) -> None:
    """Refuse to clobber or mix data before any work; honour overwrite / resume."""
    exists = ("pass resume=true to finish that collection or overwrite=true to replace it (or choose "
              "another out=...)")
    if cfg.overwrite:
        if check_output(out, True, WRITES, "collect", exists):
            held = []                           # every shard's lock: never delete a collection being written
            try:
                for lock in sorted(out.glob(".lock-shard*")):
                    held.append(exclusive_lock(lock, f"another `wm collect` is writing {out}; overwrite=true would "
                                                     "delete its data under it: wait for it to finish, or kill it first"))
                shutil.rmtree(out)
            finally:
                for fh in held:
                    fh.close()
        return
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise FileExistsError(f"out={out} is a file; choose a directory path")
    looks_like_data = (out / D.META).exists() or any(out.glob("shard_*.h5")) or (out / D.STAGING).exists()
    if not cfg.resume:
        raise FileExistsError(f"out={out} already exists; pass resume=true to finish that collection or "
                              "overwrite=true to replace it (or choose another out=...)")
    if not (out / D.META).exists():
        started = (".lock", ".writers", D.META, "config", MARKER)     # what a run killed at start-up leaves
        if not looks_like_data and all(p.name.startswith(started) for p in out.iterdir()):
            return                              # killed before anything was written: start afresh
        raise FileExistsError(f"out={out} has no {D.META}; it is not a wm dataset to resume. Use another out=...")
    old = D.read_meta(out / D.META).get("key", {})
    new = cfg.key()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff == ["episodes"]:
        raise ValueError(f"resume=true finishes {out} at its own episodes={old['episodes']}, not {new['episodes']}: "
                         "a dataset is not grown in place (overwrite=true would delete it); collect the extra "
                         "episodes into another out= with another seed=")
    if diff:
        detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
        raise ValueError(f"resume=true with a different config than {out / D.META} ({detail}); "
                         "use the original values, or overwrite=true / another out=... for new data")


def _check_disk(cfg: CollectConfig, out: Path) -> None:
    """Refuse, before anything is written, a collection the disk cannot hold at its peak (each worker's
    staged episodes plus the shard it packs them into), counting what a resume has already and what
    overwrite=true would free."""
    block = shard_range(cfg.episodes, cfg.shard, cfg.num_shards)
    done = freed = 0
    if out.is_dir() and cfg.resume and (out / D.META).exists():
        done = sum(1 for i in D.committed_indices(out) if i in block)
    if out.is_dir() and cfg.overwrite:
        freed = sum(p.stat().st_size for p in out.glob("shard_*.h5"))
    row = cfg.image_size ** 2 * 3 + 256                 # a frame, plus its action/state/proprio row
    need = 2 * (len(block) - done) * cfg.episode_len * row - freed
    check_disk(out, need, f"episodes={cfg.episodes} x episode_len={cfg.episode_len} at image_size={cfg.image_size}",
               "lower episodes=, episode_len= or image_size=, split the collection over disks with "
               "shard=/num_shards=, or choose an out= on a larger disk")


def _lock(out: Path, shard: int) -> Any:
    """One collector per shard of a directory at a time (released by the kernel even on kill -9)."""
    return exclusive_lock(out / f".lock-shard{shard:03d}", f"another `wm collect` is writing shard {shard} of "
                            f"{out}; wait for it to finish (or kill it and re-run with resume=true)")


def collect(cfg: CollectConfig) -> dict[str, Any]:
    """Collect `cfg.episodes` episodes (this machine's shard of them) into `cfg.out`."""
    if cfg.workers > 1:
        _context()                              # start importing in the fork server now
    name, env_id, info = _probe(cfg)
    out = Path(cfg.out)  # type: ignore[arg-type]
    _check_disk(cfg, out)
    _prepare_out(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "wm collect")
    lock = _lock(out, cfg.shard)
    try:
        _wait_for_writers(out, cfg.shard)
        return _collect(cfg, out, name, env_id, info)
    finally:
        lock.close()


def _collect(cfg: CollectConfig, out: Path, name: str, env_id: str, info: Any) -> dict[str, Any]:
    key = cfg.key()
    command = cfg.command()
    if cfg.num_shards > 1:                      # meta.json is identical on every machine
        command = [c if not c.startswith("shard=") else f"shard=0..{cfg.num_shards - 1}" for c in command]
    meta = {"format": D.FORMAT, "env": name, "env_id": env_id, "env_kwargs": cfg.env.kwargs,
            "image_size": cfg.image_size, "action_dim": int(len(info.action_low)),
            "action_low": info.action_low.tolist(), "action_high": info.action_high.tolist(),
            "control_hz": float(info.control_hz), "frameskip": 1, "policy": cfg.policy,
            "policy_kwargs": cfg.policy_kwargs, "seed": cfg.seed, "episodes": cfg.episodes,
            "episode_len": cfg.episode_len, "num_shards": cfg.num_shards,
            "state_names": list(info.state_names), "proprio_names": list(info.proprio_names),
            "env_info": info.to_json(), "versions": _versions(), "command": command, "key": key}
    for tmp in out.glob(f"{D.META}.*.tmp"):     # left by a killed run (its pid is gone)
        pid = tmp.name.split(".")[-2]
        if not pid.isdigit() or not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
    if not (out / D.META).exists():
        write_json_atomic(out / D.META, meta)
    save_resolved(cfg, out, "config.json" if cfg.num_shards == 1 else f"config_shard{cfg.shard:03d}.json")
    attrs = {"format": D.FORMAT, "key": key}
    block = shard_range(cfg.episodes, cfg.shard, cfg.num_shards)
    recovered = D.recover(out, block, attrs)
    committed = D.committed_indices(out)
    remaining = [i for i in block if i not in committed]
    n_workers = min(cfg.workers, len(remaining))
    chunks = [c.tolist() for c in np.array_split(np.array(remaining, np.int64), n_workers)] if remaining else []
    jobs = [{"out": str(out), "env": name, "env_kwargs": cfg.env.kwargs, "image_size": cfg.image_size,
             "policy": cfg.policy, "policy_kwargs": cfg.policy_kwargs, "seed": cfg.seed,
             "episode_len": cfg.episode_len, "indices": c,
             "attrs": attrs, "parent": os.getpid(), "shard": cfg.shard} for c in chunks]
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=len(remaining) * cfg.episode_len, unit="frame", unit_scale=True, smoothing=0.1,
               desc=f"collect {name}", disable=not cfg.progress or not remaining, file=sys.stderr)
    stats = {"frames": 0, "episodes": 0, "diverged": 0, "shards": []}

    def on_msg(msg: tuple) -> None:
        if msg[0] == "ep":
            stats["frames"] += msg[1]
            stats["episodes"] += 1
            stats["diverged"] += int(msg[2])
            bar.update(msg[1])
            bar.set_postfix(episodes=f"{stats['episodes']}/{len(remaining)}", refresh=False)
        elif msg[0] == "done" and msg[1] != "None":
            stats["shards"].append(msg[1])

    try:
        if len(jobs) == 1:                      # one worker: no process to spawn
            _collect_block({**jobs[0], "parent": None}, on_msg)
        elif jobs:
            _run_workers(jobs, on_msg)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    try:
        (out / D.STAGING).rmdir()               # only succeeds when empty
    except OSError:
        pass
    total = sum(1 for i in D.committed_indices(out) if i in block)
    summary = {"out": str(out), "episodes": total, "new_episodes": stats["episodes"],
               "recovered_episodes": recovered, "frames": stats["frames"], "seconds": round(seconds, 3),
               "frames_per_s": round(stats["frames"] / seconds, 1) if stats["frames"] else 0.0,
               "workers": n_workers, "shards": stats["shards"], "diverged_episodes": stats["diverged"]}
    if cfg.progress:
        print(f"collected {stats['episodes']} episodes ({stats['frames']} frames) in {seconds:.1f} s "
              f"({summary['frames_per_s']} frames/s); {total}/{len(block)} episodes in {out}", file=sys.stderr)
    if stats["diverged"]:
        print(f"note: {stats['diverged']} of {stats['episodes']} episodes ended early: the physics diverged "
              f"under policy={cfg.policy} (each kept up to its last valid step). Many is a sign of actions "
              "too violent for this system: another policy= or a shorter episode_len=", file=sys.stderr)
    return summary


__all__ = ["collect", "shard_range"]
