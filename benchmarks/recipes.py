"""Result recipes: one dict of (env, scale) -> the exact collect / train / eval settings of a row
of the results table, and helpers that turn a recipe into `wm` overrides, run them in-process and
describe the machine. Shared by reproduce.py, planner_table.py and sigreg_ablation.py.

Scales: "cpu" ("cpu-reduced"), sized for a 2-core CPU (model=tiny at 64 px), and "full", the GPU
recipe (the LeWM model at 64 px with patch 8, 64 tokens instead of LeWM's 256, so that the datasets
fit in RAM and disk: a deliberate difference from the paper, recorded in every result file). Every
checkpoint is planned two ways (`PLANNINGS`): the toolkit's default (`wm eval`'s defaults) and LeWM's
as released, on two task draws (`DRAWS`). A result file records `"verified": true` only when its
recipe ran as written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

SCALE_LABELS = {"cpu": "cpu-reduced", "full": "full"}

# Published success rates (%) of the LeWM paper's results table (TwoRoom / Reacher / Push-T).
REFERENCE = {
    "tworoom": {"LeWM": 87, "DINO-WM": 100, "PLDM": 97, "random (users; paper: 0)": 26},
    "reacher": {"LeWM": 86, "DINO-WM": 79, "PLDM": 78, "random": 10},
    "pusht": {"LeWM": 96, "DINO-WM": 74, "PLDM": 78, "random": 2},
}


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one row of the results table."""
    env: str
    scale: str                     # "cpu" | "full"
    episodes: int                  # collected episodes (seed 0; training seeds vary only training)
    steps: int                     # training steps
    batch_size: int
    model: str = "tiny"            # configs/model/<model>.yaml
    model_overrides: tuple[str, ...] = ()   # e.g. ("model.patch_size=8",)
    train_overrides: tuple[str, ...] = ()   # other `wm train` settings of the row, e.g. ("sigreg_weight=1.0",)
    image_size: int = 64
    episode_len: int | None = None  # null: the env config's (tworoom 100, pusht/reacher 200)
    policy: str | None = None       # null: the env config's (expert for all three)
    collect_overrides: tuple[str, ...] = ()  # other `wm collect` settings, e.g. ("+policy_kwargs.noise=0.6",)
    workers: int = 2
    device: str = "auto"
    threads: int = 0                # torch CPU threads in training (0: torch's default)
    lr: float | None = None         # null: the optim preset of the model
    eval_episodes: int = 50
    plan_samples: int | None = None     # null: each planning's preset's (smoke runs shrink both plannings)
    plan_iterations: int | None = None
    eval_batch: int = 50            # episodes planned together in one batched solve
    videos: int = 10
    distill_episodes: int | None = 120  # planning "distilled": wm distill on the first N training episodes
    ensemble: int = 1               # models per training seed s: seeds s*K .. s*K+K-1, planned with their
                                    # mean energy (wm eval ensemble=[...])
    budget_note: str = ""           # the machine the recipe is sized for

    @property
    def scale_label(self) -> str:
        return SCALE_LABELS[self.scale]


_CPU = dict(scale="cpu", episodes=300, steps=2000, batch_size=32, model="tiny", image_size=64,
            workers=2, device="cpu",
            budget_note="a 2-core CPU")
# LeWM model at 64 px / patch 8; batch 128, lr 5e-5 (configs/optim/lewm.yaml), bf16 on CUDA.
_FULL = dict(scale="full", batch_size=128, model="lewm", image_size=64,
             model_overrides=("model.patch_size=8",), workers=16, device="cuda",
             budget_note="one H100-class GPU with 16 CPU cores")

RECIPES: dict[tuple[str, str], Recipe] = {
    # TwoRoom succeeds more often at lr 1e-4 than at the tiny preset's 1e-3 (Reacher and Push-T do
    # worse at 1e-4 and keep the preset's), and TwoRoom and Reacher at batch 128 (LeWM's) than at 32.
    ("tworoom", "cpu"): Recipe(env="tworoom", lr=1e-4, **{**_CPU, "batch_size": 128}),
    ("reacher", "cpu"): Recipe(env="reacher", **{**_CPU, "batch_size": 128}),
    # Push-T: a 10x stronger SIGReg pull puts the block's angle into the latent (at 0.09 the energy
    # barely sees it), 3x the steps train the predictor on the harder latent, and three models per
    # training seed planned with their mean energy outvote the plans one model is wrong about
    # (docs/results.md; --ensemble 1 for one model).
    ("pusht", "cpu"): Recipe(env="pusht", train_overrides=("sigreg_weight=1.0",),
                             **{**_CPU, "steps": 6000, "ensemble": 3}),
    # A dm_control suite task through the generic adapter with its defaults (noise-policy data,
    # success = L2 over the 3 qpos < 0.1 rad): the finger must also turn the spinner it touches.
    # No published reference; it shows the pipeline on an env the toolkit has no code for.
    ("dm_control/finger-turn_easy", "cpu"): Recipe(env="dm_control/finger-turn_easy", **_CPU),
    # TwoRoom: LeWM uses 10k episodes of ~92 steps; 5,000 x 100 at 64 px = 500k frames, ~6 GB.
    ("tworoom", "full"): Recipe(env="tworoom", episodes=5000, steps=7000, episode_len=100, **_FULL),
    # Reacher: expert (PD to random joint targets) episodes of 200 steps; 2,000 x 200 = 400k frames.
    ("reacher", "full"): Recipe(env="reacher", episodes=2000, steps=7000, episode_len=200, **_FULL),
    # Push-T: expert episodes of 200 steps (LeWM: ~196); 2,500 x 200 = 500k frames.
    ("pusht", "full"): Recipe(env="pusht", episodes=2500, steps=7000, episode_len=200, **_FULL),
}


# The two plannings every record holds side by side, as `wm eval` overrides: the toolkit's default
# (wm eval's defaults: icem_cpu, the goal distance at every planned chunk, replanning after each chunk)
# and LeWM's as released (CEM 300 x 30 x 30, the last chunk's distance, the whole 5-chunk plan run).
# "distilled" (opt-in: --plannings toolkit lewm distilled) is the toolkit's default seeded by a policy
# distilled from the checkpoint (`wm distill`, run once per training seed).
PLANNINGS: dict[str, dict[str, Any]] = {
    "toolkit": {},
    "lewm": {"planner": "cem", "receding_horizon": 5, "goal_at": "last_chunk"},
    "distilled": {},
}
DEFAULT_PLANNINGS = ("toolkit", "lewm")
# The two task draws: starts and goals from held-out episodes (ours), or from the training episodes
# (LeWM's released evaluation).
DRAWS = ("heldout", "training")


def slug(env: str) -> str:
    """An env name as one path component: 'dm_control/finger-turn_easy' -> 'dm_control_finger-turn_easy'."""
    return env.replace("/", "_")


def get_recipe(env: str, scale: str, **overrides: Any) -> tuple[Recipe, dict[str, Any]]:
    """The recipe for (env, scale) with the non-None `overrides` applied; also returns the
    overrides that changed something (a run with any of them is not the verified recipe)."""
    if (env, scale) not in RECIPES:
        raise ValueError(f"no recipe for env={env!r} scale={scale!r}; choose from "
                         f"{sorted({e for e, _ in RECIPES})} x {sorted({s for _, s in RECIPES})}")
    base = RECIPES[(env, scale)]
    changed = {k: v for k, v in overrides.items() if v is not None and getattr(base, k) != v}
    unknown = set(changed) - {f.name for f in dataclasses.fields(Recipe)}
    if unknown:
        raise ValueError(f"unknown recipe fields {sorted(unknown)}")
    return dataclasses.replace(base, **changed), changed


OVERRIDABLE = ("episodes", "episode_len", "image_size", "model", "steps", "batch_size", "lr", "workers",
               "threads", "device", "eval_episodes", "eval_batch", "plan_samples", "plan_iterations",
               "videos", "ensemble")


def add_override_args(p: Any) -> None:
    """--episodes, --steps, ... flags (argparse), one per overridable recipe field."""
    g = p.add_argument_group("recipe overrides (a run with any of them is not the verified recipe)")
    for name in OVERRIDABLE:
        kind = {"model": str, "device": str, "lr": float}.get(name, int)
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    g.add_argument("--train-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra `wm train` overrides, e.g. eval_clips=64 tensorboard=false")
    g.add_argument("--collect-extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra `wm collect` overrides, e.g. +policy_kwargs.noise=0.6 (held-out tasks stay "
                        "the policy's at its defaults)")


def recipe_from_args(a: Any) -> tuple[Recipe, dict[str, Any]]:
    """get_recipe(a.env, a.scale) with the override flags of `add_override_args` applied."""
    recipe, changed = get_recipe(a.env, a.scale, **{k: getattr(a, k) for k in OVERRIDABLE})
    if getattr(a, "train_extra", None):
        changed = {**changed, "train_extra": list(a.train_extra)}
    if getattr(a, "collect_extra", None):
        recipe = dataclasses.replace(recipe, collect_overrides=recipe.collect_overrides + tuple(a.collect_extra))
        changed = {**changed, "collect_extra": list(a.collect_extra)}
    return recipe, changed


def _b(x: bool) -> str:
    return str(x).lower()


def collect_args(r: Recipe, out: Path | str, seed: int = 0, progress: bool = True,
                 resume: bool = False) -> list[str]:
    """`wm collect` overrides for the recipe's dataset."""
    args = [f"env={r.env}", f"episodes={r.episodes}", f"workers={r.workers}", f"out={out}",
            f"seed={seed}", f"image_size={r.image_size}"]
    args += [f"policy={r.policy}"] if r.policy else []
    args += [f"episode_len={r.episode_len}"] if r.episode_len else []
    return args + [*r.collect_overrides, f"resume={_b(resume)}", f"progress={_b(progress)}"]


def train_args(r: Recipe, data: Path | str, out: Path | str, seed: int, progress: bool = True,
               resume: bool = False, extra: tuple[str, ...] = ()) -> list[str]:
    """`wm train` overrides for one training seed."""
    args = [f"data={data}", f"model={r.model}", *r.model_overrides, f"model.image_size={r.image_size}",
            f"steps={r.steps}", f"batch_size={r.batch_size}", f"out={out}", f"seed={seed}",
            f"device={r.device}"]
    args += [f"lr={r.lr}"] if r.lr is not None else []
    args += [f"threads={r.threads}"] if r.threads else []
    return args + [*r.train_overrides, *extra, f"resume={_b(resume)}", f"overwrite={_b(not resume)}",
                   f"progress={_b(progress)}"]


def wm_eval_args(checkpoint: Path | str, out: Path | str, planner: str | None, planner_overrides: dict[str, Any],
                 *, episodes: int, batch: int, videos: int, device: str, random_floor: bool = True,
                 env: str | None = None, progress: bool = True, extra: tuple[str, ...] = ()) -> list[str]:
    """`wm eval` overrides for one planner (None: wm eval's default) on one checkpoint: the LeWM protocol
    (50-step budget, goal 25 steps ahead); `env` None means the env of the checkpoint's data."""
    return [f"checkpoint={checkpoint}", *([f"planner={planner}"] if planner else []),
            *[f"planner.{k}={v}" for k, v in planner_overrides.items()], *([f"env={env}"] if env else []),
            *extra, f"episodes={episodes}", f"batch={batch}", f"videos={videos}", f"random_floor={_b(random_floor)}",
            f"device={device}", f"out={out}", "overwrite=true", f"progress={_b(progress)}"]


def distilled_policy(checkpoint: Path | str) -> Path:
    """Where planning "distilled" keeps the policy of <run>/train/best.pt: <run>/distill/policy.pt."""
    return Path(checkpoint).parent.parent / "distill" / "policy.pt"


def member_seeds(r: Recipe, seed: int) -> list[int]:
    """The training seeds of the models that training seed `seed` plans with (itself when ensemble=1)."""
    return [seed * r.ensemble + j for j in range(r.ensemble)]


def distill_args(r: Recipe, checkpoint: Path | str, out: Path | str, progress: bool = True) -> list[str]:
    """`wm distill` overrides: the policy that planning "distilled" seeds the default planner with."""
    return [f"checkpoint={checkpoint}", f"out={out}", f"device={r.device}",
            *([f"episodes={r.distill_episodes}"] if r.distill_episodes else []), "overwrite=true",
            f"progress={_b(progress)}"]


def eval_args(r: Recipe, checkpoint: Path | str, out: Path | str, progress: bool = True,
              planner_seed: int = 0, planning: str = "toolkit", draw: str = "heldout",
              random_floor: bool = True, videos: bool = True, ensemble: tuple = ()) -> list[str]:
    """`wm eval` overrides of the recipe for one planning (`PLANNINGS`) on one task draw (`DRAWS`).
    Another planner seed plans the same tasks with other samples; it runs no random floor (the same as
    seed 0's) and no videos. `ensemble`: the other members' checkpoints."""
    from worldmodel.config import default_choice, preset

    settings = dict(PLANNINGS[planning])
    planner = settings.pop("planner", None)
    po: dict[str, Any] = {k: v for k, v in (("samples", r.plan_samples), ("iterations", r.plan_iterations)) if v}
    if r.plan_samples:               # a smoke run's few samples: elites capped at them
        elites = preset("planner", planner or default_choice("eval", "planner"))["elites"]
        po["elites"] = min(elites, r.plan_samples)
    more = {"videos": r.videos if videos else 0, "random_floor": random_floor}
    if planner_seed:
        po["seed"], more = planner_seed, {"random_floor": False, "videos": 0}
    extra = tuple(f"{k}={v}" for k, v in settings.items()) + ((f"tasks={draw}",) if draw != "heldout" else ())
    if draw == "heldout" and any("policy_kwargs" in o for o in r.collect_overrides):
        # data of other policy kwargs: the held-out tasks stay the policy's own, at its defaults
        extra += (f"policy={r.policy or preset('env', r.env)['policy']}",)
    if planning == "distilled":     # the policy wm distill wrote beside the checkpoint's run
        extra += (f"distilled={distilled_policy(checkpoint)}",)
    if ensemble:
        extra += (f"ensemble=[{','.join(str(c) for c in ensemble)}]",)
    return wm_eval_args(checkpoint, out, planner, po, episodes=r.eval_episodes, batch=r.eval_batch,
                        device=r.device, progress=progress, extra=extra, **more)


def outcomes(episodes: list[dict[str, Any]], key: str = "success") -> str:
    """Per-task success as a string of 0/1 in task order, from `wm eval`'s per_episode entries
    (or any dicts with "index" and `key`; "random_success" for the random floor's)."""
    return "".join("1" if e[key] else "0" for e in sorted(episodes, key=lambda e: e["index"]))


def tasks(episodes: list[dict[str, Any]]) -> list[list[int]]:
    """(held-out episode seed, start step) per task, in the task order of `outcomes`."""
    return [[int(e["seed"]), int(e["start_step"])] for e in sorted(episodes, key=lambda e: e["index"])]


def command(name: str, args: list[str]) -> str:
    """The `wm ...` line a user can paste to run the same stage."""
    return shlex.join(["wm", name, *args])


# stage -> (its config class, its library call): the same config load and call as `wm <stage>`
STAGES = {"collect": ("worldmodel.data.config:CollectConfig", "worldmodel.data.collector:collect"),
          "train": ("worldmodel.training.config:TrainConfig", "worldmodel.training.trainer:train"),
          "eval": ("worldmodel.evaluation.config:EvalConfig", "worldmodel.evaluation.evaluator:evaluate"),
          "distill": ("worldmodel.training.distill_config:DistillConfig", "worldmodel.training.distill:distill")}


def run_stage(name: str, args: list[str]) -> dict[str, Any]:
    """Run `wm <name> <args>` in-process (the same config load and library call as the CLI). The stage's own
    stdout is sent to stderr so that the caller's JSON lines are all that stdout carries."""
    import importlib

    from worldmodel.config import load
    from worldmodel.machine import keep_freed_host_memory

    os.environ.setdefault("MUJOCO_GL", "egl")
    keep_freed_host_memory()                              # as `wm` does
    (cfg_mod, cfg_cls), (lib_mod, fn) = (ref.split(":") for ref in STAGES[name])
    cfg = load(getattr(importlib.import_module(cfg_mod), cfg_cls), name, args)
    with contextlib.redirect_stdout(sys.stderr):
        return getattr(importlib.import_module(lib_mod), fn)(cfg)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def machine(device: str) -> dict[str, Any]:
    """Device / GPU name, CPU model, core count and bf16 instructions, torch version."""
    import torch

    from worldmodel.machine import cpu_bf16_instructions

    dev = resolve_device(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"device": dev, "cpu": cpu, "cpu_count": os.cpu_count(), "cpu_bf16": cpu_bf16_instructions(),
            "torch": torch.__version__, "gpu": None}
    if dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(dev))
    return info


def git_commit() -> dict[str, Any]:
    """HEAD of the repo and whether the working tree has uncommitted changes (outside
    benchmarks/results/, which the scripts themselves write). Outside git: $WM_GIT_COMMIT if set
    (the commit a copied tree was taken from), else None."""
    def git(*a: str) -> str | None:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
    head = git("rev-parse", "HEAD")
    if head is None and os.environ.get("WM_GIT_COMMIT"):   # a copy without .git (e.g. a GPU machine)
        return {"commit": os.environ["WM_GIT_COMMIT"], "dirty": None, "source": "WM_GIT_COMMIT"}
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results") if head else None
    return {"commit": head, "dirty": bool(status) if status is not None else None}


def dataset_size(path: Path | str) -> dict[str, int]:
    """Episodes and frames (rows) of a collected dataset, read from its episode index."""
    from worldmodel.data.dataset import load_dataset

    ds = load_dataset(path, columns=())
    return {"episodes": int(ds.num_episodes), "frames": int(ds.ep_len.sum())}


def line(obj: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed (the scripts' only stdout)."""
    print(json.dumps(obj, default=float), flush=True)


def emit_line(obj: dict[str, Any], path: str | None = None) -> None:
    """One JSON line on stdout (flushed), also appended to `path` when one is given (--json)."""
    text = json.dumps(obj, default=float)
    print(text, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")
