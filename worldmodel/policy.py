"""A LeRobot-style policy: a trained world model and its planner settings as one folder.

    policy = WorldModelPolicy.from_checkpoint("runs/demo/train/best.pt", planner="icem_cpu")
    policy.set_goal(goal)                      # (3, H, W) float in [0, 1] or (H, W, 3) uint8, once
    policy.reset()                             # at every episode start
    action = policy.select_action({"observation.images.top": frames})   # (B, 3, H, W) in [0, 1] -> (B, A)
    policy.save_pretrained("policies/tworoom")         # model.safetensors + config.json, no pickle
    policy = WorldModelPolicy.from_pretrained("policies/tworoom")       # offline: a local folder only

It is `MPCController` (planners/mpc.py) behind LeRobot's calls: `select_action` returns one action
per call from the queue of planned actions, replanning when it runs dry; `predict_action_chunk`
returns a whole plan. Camera frames of another size are fitted as the training data was
(`worldmodel.report.video.fit_frame`).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT, VERSION = "worldmodel-policy", 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
IMAGE_KEY = "observation.images."          # LeRobot's camera keys; "observation.image" is one camera


@dataclasses.dataclass
class PolicyConfig:
    """The planner settings a saved policy carries (config.json's "policy")."""

    action_low: list[float]
    action_high: list[float]
    planner: dict[str, Any] = dataclasses.field(default_factory=lambda: planner_group(None))   # {name, **fields}
    horizon: int = 5                   # planned chunks
    receding_horizon: int | None = 1   # chunks run before replanning (None: the whole plan, LeWM's)
    goal_at: str = "every_chunk"       # every_chunk | last_chunk (LeWM's): where the goal distance counts
    step_weights: list[float] | None = None   # None: goal_at's; else one weight per chunk
    time_budget_s: float | None = None
    camera: str | None = None          # observation.images.<camera>; None: the batch's only camera
    env: str | None = None             # the env the model was trained in (informational)


class WorldModelPolicy:
    """`reset()`, `select_action(batch)`, `predict_action_chunk(batch)`, `save_pretrained(dir)`,
    `from_pretrained(dir)` over a WorldModel and an MPCController."""

    name = "worldmodel_mpc"

    def __init__(self, model: Any, config: PolicyConfig, device: str | torch.device = "cpu"):
        from worldmodel.model.energy import GoalEnergy
        from worldmodel.planners import planner_from_config

        if len(config.action_low) != model.cfg.action_dim or len(config.action_high) != model.cfg.action_dim:
            raise ValueError(f"action bounds need {model.cfg.action_dim} entries (the model's action_dim), got "
                             f"{len(config.action_low)} and {len(config.action_high)}")
        self.model, self.config, self.device = model.to(device).eval(), config, torch.device(device)
        if config.step_weights is not None and len(config.step_weights) != config.horizon:
            raise ValueError(f"step_weights needs one weight per planned chunk: {config.horizon} (horizon), got "
                             f"{len(config.step_weights)}")
        self.planner = planner_from_config(config.planner)          # an unknown planner or key is refused here
        self.energy = GoalEnergy(self.model, step_weights=config.step_weights, goal_at=config.goal_at)
        self._goal: np.ndarray | None = None                       # (B or 1, H, W, 3) uint8
        self._ctrl: Any = None
        self._build(1)                                              # the controller's own checks, now

    # ------------------------------------------------------------------ building
    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, planner: str | dict[str, Any] | None = None,
                        bounds: tuple[Any, Any] | None = None, device: str | torch.device = "cpu",
                        **settings: Any) -> "WorldModelPolicy":
        """A `wm train` checkpoint with planner settings: `planner` names a preset of configs/planner/
        (`icem_cpu`) or a planner, or is a {name, **fields} mapping (None: `wm eval`'s default); `bounds` (low, high) default to the
        training data's; `settings` are PolicyConfig's other fields (horizon=5, receding_horizon=1, ...)."""
        from worldmodel.model.world_model import load_trained

        model, meta, env_name = load_trained(path, device)
        if bounds is None:
            if "action_low" not in meta:
                raise ValueError(f"{path}: its dataset metadata holds no action bounds; pass bounds=(low, high)")
            bounds = (meta["action_low"], meta["action_high"])
        low, high = (np.broadcast_to(np.asarray(b, np.float64), (model.cfg.action_dim,)).tolist() for b in bounds)
        cfg = PolicyConfig(action_low=low, action_high=high, planner=planner_group(planner), env=env_name, **settings)
        return cls(model, cfg, device)

    # ------------------------------------------------------------------ LeRobot's calls
    def set_goal(self, image: Any) -> None:
        """The goal image, once per task: (3, H, W) / (B, 3, H, W) float in [0, 1] as LeRobot's cameras
        give, or (H, W, 3) / (B, H, W, 3) uint8. Starts a new episode, as `reset()` does."""
        frames = _as_uint8(image, "set_goal(image)")
        self._goal = self._fit(frames)
        self.reset()

    def reset(self) -> None:
        """A new episode: clears the planned actions, the observation history and the warm start."""
        if self._ctrl is not None:
            self._ctrl.close()
        self._ctrl = None               # rebuilt at the next call, for that batch size

    def select_action(self, batch: dict[str, Any]) -> torch.Tensor:
        """One action per batch entry, (B, A) float32, inside the bounds."""
        obs = self._frames(batch)
        return torch.as_tensor(self._controller(obs.shape[0]).act(obs), device=self.device)

    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """A whole plan from this observation, (B, horizon * frameskip, A), clipped to the bounds; the
        actions select_action has queued are left as they are."""
        obs = self._frames(batch)
        res = self._controller(obs.shape[0]).plan(obs)
        steps = res.actions.detach().float().reshape(obs.shape[0], -1, self.model.cfg.action_dim)
        low, high = (torch.as_tensor(b, dtype=torch.float32, device=steps.device)
                     for b in (self.config.action_low, self.config.action_high))
        return torch.clamp(steps, low, high).to(self.device)

    def stats(self) -> dict[str, Any]:
        """This episode's planning statistics (MPCController.stats: latency, plans, deadline misses)."""
        return self._ctrl.stats() if self._ctrl is not None else {}

    # ------------------------------------------------------------------ one folder
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """`directory`/model.safetensors (the weights) and config.json (the architecture, the planner
        settings): tensors and JSON only, so loading runs no code."""
        from safetensors.torch import save

        from worldmodel.io import write_atomic, write_json_atomic

        out = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        write_atomic(out / WEIGHTS, lambda f: f.write(save(state, metadata={"format": FORMAT})))
        write_json_atomic(out / CONFIG, {"format": FORMAT, "version": VERSION, "type": self.name,
                                         "model": self.model.cfg.to_dict(),
                                         "policy": dataclasses.asdict(self.config)})
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        **settings: Any) -> "WorldModelPolicy":
        """A folder `save_pretrained` wrote (a local folder: nothing is downloaded). `settings`
        override the saved planner settings (e.g. time_budget_s=0.2)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from worldmodel.config import ConfigError, from_dict
        from worldmodel.model.checkpoint import non_finite, weight_shapes
        from worldmodel.model.config import ModelConfig
        from worldmodel.model.world_model import WorldModel

        folder = Path(directory)
        if not (folder / CONFIG).is_file() or not (folder / WEIGHTS).is_file():
            raise FileNotFoundError(f"{folder} holds no {CONFIG} and {WEIGHTS}: from_pretrained reads a local "
                                    "folder written by WorldModelPolicy.save_pretrained (nothing is downloaded)")
        try:
            saved = json.loads((folder / CONFIG).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{folder / CONFIG} is not readable JSON ({e}); save the policy again") from None
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("version") != VERSION:
            raise ValueError(f"{folder / CONFIG} is not a {FORMAT} version {VERSION} config; save it with "
                             "this worldmodel's WorldModelPolicy.save_pretrained")
        try:
            model_cfg = ModelConfig(**saved["model"])
            cfg = from_dict(PolicyConfig, {**saved["policy"], **settings})
        except (TypeError, ValueError, KeyError, ConfigError) as e:
            raise ValueError(f"{folder / CONFIG}: {e}") from None
        want = weight_shapes(model_cfg)                     # shapes first: a config cannot declare a huge model
        try:
            state = load_file(folder / WEIGHTS, device="cpu")
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{folder / WEIGHTS} is not a readable safetensors file ({e})") from None
        got = {k: tuple(v.shape) for k, v in state.items()}
        if got != want:
            diff = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
            raise ValueError(f"{folder / WEIGHTS} does not match the model its {CONFIG} declares "
                             f"(first differences: {', '.join(diff[:3])}); save the policy again")
        bad = non_finite(state)
        if bad:
            raise ValueError(f"{folder / WEIGHTS}: weights {', '.join(bad[:3])} hold NaN/Inf")
        model = WorldModel(model_cfg)
        model.load_state_dict(state)
        return cls(model, cfg, device)

    # ------------------------------------------------------------------ internals
    def _controller(self, batch: int) -> Any:
        if self._goal is None:
            raise RuntimeError("set_goal(image) first: the policy plans toward a goal image")
        if self._ctrl is None:
            goal = self._goal
            if goal.shape[0] != batch:
                if goal.shape[0] != 1:
                    raise ValueError(f"the goal has {goal.shape[0]} images and the batch {batch} observations; "
                                     "give one goal, or one per batch entry")
                goal = np.repeat(goal, batch, axis=0)
            self._ctrl = self._build(batch)
            self._ctrl.reset(goal)
        elif self._ctrl.batch != batch:
            raise ValueError(f"this episode's batches hold {self._ctrl.batch} observations, this one {batch}; "
                             "call reset() before changing the batch size")
        return self._ctrl

    def _build(self, batch: int) -> Any:
        from worldmodel.planners import MPCController

        c, mcfg = self.config, self.model.cfg
        return MPCController(self.planner, self.energy, (np.asarray(c.action_low), np.asarray(c.action_high)),
                             horizon=c.horizon, receding_horizon=c.receding_horizon or c.horizon, frameskip=mcfg.frameskip,
                             history=mcfg.history, batch=batch, time_budget_s=c.time_budget_s, device=self.device)

    def _frames(self, batch: dict[str, Any]) -> np.ndarray:
        """The chosen camera's frames as (B, size, size, 3) uint8."""
        cameras = {k: v for k, v in batch.items() if k.startswith(IMAGE_KEY) or k == "observation.image"}
        if self.config.camera is not None:
            key = IMAGE_KEY + self.config.camera
            if key not in batch:
                raise KeyError(f"the batch has no {key!r}; its cameras: {sorted(cameras) or 'none'}")
        elif len(cameras) == 1:
            (key,) = cameras
        else:
            raise KeyError(f"the batch holds {len(cameras)} cameras ({', '.join(sorted(cameras)) or 'none'}): "
                           "name the one the model was trained on with camera=<name>")
        frames = _as_uint8(batch[key], key)
        return self._fit(frames)

    def _fit(self, frames: np.ndarray) -> np.ndarray:
        size = self.model.cfg.image_size
        if frames.shape[1:3] == (size, size):
            return frames
        from worldmodel.report.video import fit_frame

        return np.stack([fit_frame(f, size) for f in frames])


def planner_group(planner: str | dict[str, Any] | None) -> dict[str, Any]:
    """A planner as its config group {name, **fields}: a configs/planner/ preset's values, or a bare name
    (None: the preset `wm eval` plans with by default)."""
    from worldmodel.config import default_choice, group_options, preset

    planner = default_choice("eval", "planner") if planner is None else planner
    if isinstance(planner, dict):
        return dict(planner)
    return preset("planner", planner) if planner in group_options("planner") else {"name": planner}


def _as_uint8(x: Any, where: str) -> np.ndarray:
    """(B, 3, H, W) / (3, H, W) float in [0, 1] (LeRobot) or (B, H, W, 3) / (H, W, 3) uint8 -> (B, H, W, 3) uint8."""
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"{where}: expected images (B, 3, H, W) or (B, H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        if a.shape[-1] != 3:
            raise ValueError(f"{where}: uint8 images are (B, H, W, 3), got {a.shape}")
        return a
    if a.dtype.kind != "f" or a.shape[1] != 3:
        raise ValueError(f"{where}: expected float images (B, 3, H, W) in [0, 1] or uint8 (B, H, W, 3), "
                         f"got {a.dtype} {a.shape}")
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError(f"{where}: float images are read as [0, 1] (LeRobot's), and these reach "
                         f"[{np.nanmin(a):.3g}, {np.nanmax(a):.3g}]; divide 0-255 frames by 255")
    return np.ascontiguousarray((a.transpose(0, 2, 3, 1) * 255).round().astype(np.uint8))
