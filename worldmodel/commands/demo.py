"""`wm demo`: the whole product on one embedded default, end to end.

    wm demo                      # TwoRoom, 64 px: collect -> train (tiny) -> eval -> table + videos
    wm demo out=runs/demo2 train_steps=4000 device=cuda

Each stage is the library call behind its own command (`wm collect`, `wm train`, `wm eval`), given
a typed config built here from the presets (the eval plans as `wm eval` does by default); the demo
only wires them. Killed midway?
`wm demo resume=true` finishes the collection, resumes training from its last checkpoint, and
re-runs the evaluation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldmodel.config import ConfigError, default_choice, group_options, preset
from worldmodel.data.config import CollectConfig, EnvConfig
from worldmodel.evaluation.config import EvalConfig
from worldmodel.model.config import ModelConfig
from worldmodel.training.config import DataConfig, TrainConfig


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    env: str = "tworoom"
    episodes: int = 300          # collected episodes
    workers: int = 2
    image_size: int = 64
    seed: int = 0
    model: str = "tiny"
    train_steps: int = 2000
    batch_size: int = 128               # LeWM's
    lr: float | None = 1e-4             # TwoRoom's (docs/results.md); null: the model preset's
    eval_episodes: int = 50
    planner: str | None = None          # a planner preset; null: wm eval's default (configs/eval.yaml)
    plan_samples: int | None = None     # null: the planner config's
    plan_iterations: int | None = None  # null: the planner config's
    device: str = "auto"
    precision: str = "auto"             # training and planning: auto (training bf16 on CUDA; fp32 otherwise) |
                                        # fp32 | bf16 (faster on a CPU that multiplies bf16 in hardware)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        from worldmodel import envs
        from worldmodel.machine import check_device
        from worldmodel.planners import planner_from_config

        if self.resume and self.overwrite:
            raise ValueError("choose one of resume=true (continue) and overwrite=true (start over)")
        # Everything the three stages would refuse, refused before minutes of collection, not after.
        check_device(self.device)
        if self.model not in group_options("model"):
            raise ConfigError(f"model={self.model!r}: choose one of {', '.join(group_options('model'))}")
        for k in ("train_steps", "batch_size", "eval_episodes"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be > 0 (or null: the model preset's), got {self.lr}")
        envs.resolve(self.collect_config().env.name)
        planner_from_config(self.planner_config())
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not (self.resume or self.overwrite):
            raise FileExistsError(f"{out} already exists; pass resume=true to continue it or "
                                  "overwrite=true to start over (or another out=)")

    def collect_config(self) -> CollectConfig:
        return CollectConfig(env=EnvConfig(**preset("env", self.env)), episodes=self.episodes,
                             workers=self.workers, out=str(Path(self.out) / "data"), seed=self.seed,
                             image_size=self.image_size, **self._flags())

    def train_config(self) -> TrainConfig:
        model = ModelConfig(**{**preset("model", self.model), "image_size": self.image_size})
        optim = preset("optim", self.model) if self.model in group_options("optim") else {}
        lr = self.lr if self.lr is not None else optim.get("lr", TrainConfig.lr)
        return TrainConfig(model=model, data=DataConfig(path=str(Path(self.out) / "data")),
                           steps=self.train_steps, batch_size=self.batch_size, lr=lr,
                           out=str(Path(self.out) / "train"), seed=self.seed, device=self.device,
                           precision=self.precision, **self._flags())

    def planner_config(self) -> dict[str, Any]:
        extra = {"samples": self.plan_samples, "iterations": self.plan_iterations}
        name = self.planner or default_choice("eval", "planner")
        return {**preset("planner", name), **{k: v for k, v in extra.items() if v}}

    def eval_config(self) -> EvalConfig:
        return EvalConfig(checkpoint=str(Path(self.out) / "train" / "best.pt"), planner=self.planner_config(),
                          episodes=self.eval_episodes, out=str(Path(self.out) / "eval"), device=self.device,
                          precision="bf16" if self.precision == "bf16" else "fp32", overwrite=True,
                          progress=self.progress)

    def _flags(self) -> dict[str, bool]:
        return {"resume": self.resume, "overwrite": self.overwrite, "progress": self.progress}


CONFIG, CONFIG_NAME = DemoConfig, "demo"


def results_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of eval summaries."""
    head = ("| env | planner | success | 95% CI | random floor | planner vs random (p) | "
            "failures came within (x tolerance) | episodes | train time | plan latency p50 | device |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lo, hi = r["ci95"]
        floor = r.get("random_floor") or {}
        pr = floor.get("paired")
        paired = f"+{pr['planner_only']} / -{pr['random_only']} (p={pr['p_value']:.2g})" if pr else "-"
        ge = r.get("goal_error") or {}
        near = f"{ge['closest_failures']:.1f}x" if ge.get("closest_failures") is not None else "-"
        if ge.get("random_closest") is not None:
            near += f" (random {ge['random_closest']:.1f}x)"
        lines.append(
            f"| {r['env']} | {r['planner']} | {r['success_rate']:.0%} | {lo:.0%}-{hi:.0%} | "
            f"{floor.get('success_rate', float('nan')):.0%} | {paired} | {near} | {r['episodes']} | "
            f"{r.get('train_minutes', float('nan')):.1f} min | "
            f"{(r['latency_ms']['p50'] or float('nan')):.0f} ms | {r['device']} |")
    return "\n".join(lines)


def run(cfg: DemoConfig) -> dict[str, Any]:
    from worldmodel.data.collector import collect
    from worldmodel.evaluation.evaluator import evaluate
    from worldmodel.io import save_resolved, write_json_atomic
    from worldmodel.report.plots import CURVES, EVAL_SUMMARY
    from worldmodel.training.trainer import train

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out, "demo_config.json")
    timings: dict[str, float] = {}
    stages = (("collect", collect, cfg.collect_config), ("train", train, cfg.train_config),
              ("eval", evaluate, cfg.eval_config))        # eval's config needs the trained checkpoint
    results: dict[str, Any] = {}
    configs: dict[str, Any] = {}
    for name, call, config in stages:
        t = time.perf_counter()
        configs[name] = config()
        results[name] = call(configs[name])
        timings[f"{name}_s"] = time.perf_counter() - t
    ev = results["eval"]
    ev["train_minutes"] = timings["train_s"] / 60
    table = results_table([ev])
    summary = {"collect": results["collect"], "train": results["train"],
               "eval": {k: v for k, v in ev.items() if k != "per_episode"},
               "timings_s": timings, "total_s": sum(timings.values())}
    write_json_atomic(out / "summary.json", summary)
    run_dir, eval_dir = Path(configs["train"].out), Path(configs["eval"].out)
    pictures = [p.relative_to(out).as_posix() for p in (run_dir / CURVES, eval_dir / EVAL_SUMMARY) if p.exists()]
    (out / "results.md").write_text(table + "\n\n" + "".join(f"![{p}]({p})\n" for p in pictures))
    print("\n" + table)
    print(f"\ndemo done in {summary['total_s'] / 60:.1f} min: {out / 'results.md'}, "
          f"pictures {', '.join(str(out / p) for p in pictures)}, videos in {eval_dir / 'videos'}")
    return summary


__all__ = ["DemoConfig", "CONFIG", "CONFIG_NAME", "run", "results_table"]
