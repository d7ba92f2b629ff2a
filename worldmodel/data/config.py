"""`wm collect`'s typed config: which simulator, how many episodes, where (presets in configs/env/)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from worldmodel.config import ConfigError


@dataclass
class EnvConfig:
    """configs/env/<name>.yaml: which simulator, its default episode length and data policy."""

    name: str = "tworoom"         # tworoom | pusht | reacher | a gymnasium MuJoCo id | dm_control/<domain>-<task>
    episode_len: int = 100        # default rows per episode for this env
    policy: str = "expert"        # default data policy for this env
    kwargs: dict[str, Any] = field(default_factory=dict)  # constructor kwargs: +env.kwargs.success_threshold=0.2


@dataclass
class CollectConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    episodes: int = 100
    workers: int = 2
    out: str | None = None            # null -> data/<env name>
    seed: int = 0
    image_size: int = 64
    policy: str | None = None         # null -> env.policy
    policy_kwargs: dict[str, Any] = field(default_factory=dict)  # the policy's constructor kwargs: +policy_kwargs.noise=0.6
    episode_len: int | None = None    # null -> env.episode_len (rows per episode)
    shard: int = 0                    # this machine's part of a multi-machine collection ...
    num_shards: int = 1               # ... out of num_shards
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.env, dict):
            self.env = EnvConfig(**self.env)
        self.policy = self.policy or self.env.policy
        self.episode_len = self.episode_len if self.episode_len is not None else self.env.episode_len
        self.out = self.out or f"data/{self.env.name}"
        checks = [
            (self.episodes >= 1, f"episodes must be >= 1, got {self.episodes}"),
            (self.workers >= 1, f"workers must be >= 1, got {self.workers}; e.g. workers={os.cpu_count() or 1}"),
            (self.episode_len >= 2, f"episode_len must be >= 2 (rows per episode), got {self.episode_len}"),
            (self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.num_shards >= 1, f"num_shards must be >= 1, got {self.num_shards}"),
            (0 <= self.shard < self.num_shards,
             f"shard must be in [0, num_shards={self.num_shards}), got shard={self.shard}"),
            (self.num_shards <= self.episodes, f"num_shards={self.num_shards} > episodes={self.episodes}"),
            (not (self.resume and self.overwrite), "pass only one of resume=true / overwrite=true"),
        ]
        from worldmodel.machine import physical_memory

        ram = physical_memory()
        per_worker = self.episode_len * self.image_size ** 2 * 3     # one episode's frames, held until it ends
        if ram and min(self.workers, self.episodes) * per_worker > ram // 2:
            checks.append((False, f"episode_len={self.episode_len} at image_size={self.image_size} holds "
                                  f"{per_worker / 2 ** 30:.1f} GiB of frames per worker ({min(self.workers, self.episodes)} "
                                  f"workers), over half of this machine's {ram / 2 ** 30:.0f} GiB: lower episode_len, "
                                  "image_size or workers"))
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    def key(self) -> dict[str, Any]:
        """What defines the data: a resume must match it exactly (workers may differ)."""
        key = {"env": self.env.name, "env_kwargs": self.env.kwargs, "policy": self.policy,
               "episode_len": self.episode_len, "seed": self.seed, "image_size": self.image_size,
               "episodes": self.episodes, "num_shards": self.num_shards}
        if self.policy_kwargs:          # absent when empty: data collected before the field still resumes
            key["policy_kwargs"] = self.policy_kwargs
        return key

    def command(self) -> list[str]:
        """A `wm collect` command line reproducing this collection."""
        kw = [f"+env.kwargs.{k}={v}" for k, v in self.env.kwargs.items()]
        pkw = [f"+policy_kwargs.{k}={v}" for k, v in self.policy_kwargs.items()]
        return ["wm", "collect", f"env={self.env.name}", *kw, f"episodes={self.episodes}",
                f"workers={self.workers}", f"out={self.out}", f"seed={self.seed}",
                f"image_size={self.image_size}", f"policy={self.policy}", *pkw, f"episode_len={self.episode_len}",
                f"shard={self.shard}", f"num_shards={self.num_shards}"]
