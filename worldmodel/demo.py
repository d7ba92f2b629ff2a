"""`wm demo`: the whole product on one embedded default, end to end.

    wm demo                      # TwoRoom, 64 px: collect -> train (tiny) -> eval (CEM) -> table + videos
    wm demo out=runs/demo2 train_steps=4000 device=cuda

Each stage is the same code as its own command (`wm collect`, `wm train`, `wm eval`) with the
overrides below; the demo only wires them. Killed midway? `wm demo resume=true` finishes the
collection, resumes training from its last checkpoint, and re-runs the evaluation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worldmodel import collect, evaluate, train
from worldmodel.config import load, save_resolved
from worldmodel.dataset import write_json_atomic
from worldmodel.plots import CURVES, EVAL_SUMMARY


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
    batch_size: int = 128               # LeWM's (configs/demo.yaml)
    lr: float | None = 1e-4             # TwoRoom's (configs/demo.yaml); null: the model preset's
    eval_episodes: int = 50
    planner: str = "cem"
    plan_samples: int | None = None     # null: the planner config's (CEM: 300, LeWM's setting)
    plan_iterations: int | None = None  # null: the planner config's (CEM: 30)
    device: str = "auto"
    precision: str = "auto"             # training and planning: auto (training bf16 on CUDA; fp32 otherwise) |
                                        # fp32 | bf16 (on a CPU that multiplies bf16 in hardware, ~1.7x faster)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        import envs
        from planners import planner_from_config
        from worldmodel.config import ConfigError, compose, group_options
        from worldmodel.distributed import check_device

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
        envs.resolve(load(collect.CONFIG, collect.CONFIG_NAME, self.collect_overrides()).env.name)
        planner_from_config(compose(evaluate.CONFIG_NAME, self.planner_overrides())["planner"])
        out = Path(self.out)
        if out.exists() and any(out.iterdir()) and not (self.resume or self.overwrite):
            raise FileExistsError(f"{out} already exists; pass resume=true to continue it or "
                                  "overwrite=true to start over (or another out=)")

    def collect_overrides(self) -> list[str]:
        return [f"env={self.env}", f"episodes={self.episodes}", f"workers={self.workers}",
                f"out={Path(self.out) / 'data'}", f"seed={self.seed}", f"image_size={self.image_size}", *_flags(self)]

    def planner_overrides(self) -> list[str]:
        return [f"planner={self.planner}",
                *([f"planner.samples={self.plan_samples}"] if self.plan_samples else []),
                *([f"planner.iterations={self.plan_iterations}"] if self.plan_iterations else [])]


CONFIG, CONFIG_NAME = DemoConfig, "demo"


def _flags(cfg: DemoConfig) -> list[str]:
    return [f"resume={str(cfg.resume).lower()}", f"overwrite={str(cfg.overwrite).lower()}",
            f"progress={str(cfg.progress).lower()}"]


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
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out, "demo_config.json")
    timings: dict[str, float] = {}
    data, run_dir, eval_dir = out / "data", out / "train", out / "eval"

    t = time.perf_counter()
    col = collect.run(load(collect.CONFIG, collect.CONFIG_NAME, cfg.collect_overrides()))
    timings["collect_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tr = train.run(load(train.CONFIG, train.CONFIG_NAME, [
        f"data={data}", f"model={cfg.model}", f"model.image_size={cfg.image_size}", f"steps={cfg.train_steps}",
        f"batch_size={cfg.batch_size}", *([f"lr={cfg.lr}"] if cfg.lr is not None else []),
        f"out={run_dir}", f"seed={cfg.seed}", f"device={cfg.device}", f"precision={cfg.precision}", *_flags(cfg)]))
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ev = evaluate.run(load(evaluate.CONFIG, evaluate.CONFIG_NAME, [
        f"checkpoint={run_dir / 'best.pt'}", f"episodes={cfg.eval_episodes}", *cfg.planner_overrides(),
        f"out={eval_dir}", f"device={cfg.device}", f"precision={'bf16' if cfg.precision == 'bf16' else 'fp32'}",
        "overwrite=true", f"progress={str(cfg.progress).lower()}"]))
    timings["eval_s"] = time.perf_counter() - t

    ev["train_minutes"] = timings["train_s"] / 60
    table = results_table([ev])
    summary = {"collect": col, "train": tr, "eval": {k: v for k, v in ev.items() if k != "per_episode"},
               "timings_s": timings, "total_s": sum(timings.values())}
    write_json_atomic(out / "summary.json", summary)
    pictures = [p.relative_to(out).as_posix() for p in (run_dir / CURVES, eval_dir / EVAL_SUMMARY) if p.exists()]
    (out / "results.md").write_text(table + "\n\n" + "".join(f"![{p}]({p})\n" for p in pictures))
    print("\n" + table)
    print(f"\ndemo done in {summary['total_s'] / 60:.1f} min: {out / 'results.md'}, "
          f"pictures {', '.join(str(out / p) for p in pictures)}, videos in {eval_dir / 'videos'}")
    return summary
