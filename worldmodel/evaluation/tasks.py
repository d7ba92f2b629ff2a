"""The goal-reaching task protocol: held-out episodes, (start, goal) tasks drawn from them, the env
they run in, and running a batch of tasks in lockstep under any batched policy.

Held-out episodes are rolled out with the training data's policy but with seeds never used for
training; each task starts at a random step of one of them and its goal is the state `goal_offset`
steps later (a start that already meets its goal, where the data policy idled, is redrawn: any
policy would "solve" it). The policy sees only pixels; simulator state sets up the start and scores.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from worldmodel.evaluation.stats import mcnemar


@dataclass
class Task:
    index: int
    seed: int                 # its episode's seed (reset with it, the env draws what the state leaves out)
    start_step: int
    start_state: np.ndarray   # (S,)
    goal_state: np.ndarray    # (S,)


def training_seeds(meta: dict[str, Any]) -> set[int]:
    """The episode seeds a dataset was collected with (from its meta.json): never a held-out task."""
    from worldmodel.data.rollout import episode_seed

    if "seed" not in meta:
        return set()
    return {episode_seed(int(meta["seed"]), i) for i in range(int(meta.get("episodes", 0)))}


def plan_seed(task_seed: int, planner_seed: int) -> int:
    """The planner's seed for a batch of tasks, from its first task's seed and the configured
    `planner.seed`: the task seed itself for planner seed 0 (every eval recorded so far), a mix of
    the two otherwise, so `planner.seed=1` draws other samples on the same tasks."""
    if planner_seed == 0:
        return int(task_seed)
    mixed = np.random.SeedSequence([int(task_seed), int(planner_seed)]).generate_state(1, np.uint64)[0]
    return int(mixed >> 1)                             # < 2**63: a valid torch seed


def heldout_policy(policy: str | None, policy_kwargs: dict[str, Any] | None,
                   meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The held-out episodes' policy and its kwargs: the training data's (meta.json) unless `policy` is
    given, then that policy at its defaults unless `policy_kwargs` is given too. So `policy=expert`
    poses the env's standard tasks to a model trained on data of other kwargs."""
    name = policy or meta.get("policy") or "noise"
    if policy_kwargs is not None:
        return name, dict(policy_kwargs)
    return name, {} if policy else dict(meta.get("policy_kwargs") or {})


def default_heldout_tasks(env, meta: dict[str, Any], eval_seed: int, episodes: int,
                          goal_offset: int) -> list[Task]:
    """`wm eval`'s default held-out tasks for a model trained on the data of `meta`: its policy and
    kwargs, its episode length, never one of its training seeds."""
    policy, policy_kwargs = heldout_policy(None, None, meta)
    return make_tasks(env, policy, eval_seed, episodes, int(meta.get("episode_len") or 100), goal_offset,
                      training_seeds(meta), policy_kwargs)


def make_tasks(env, policy: str, eval_seed: int, episodes: int, episode_len: int, goal_offset: int,
               forbidden_seeds: set[int], policy_kwargs: dict[str, Any] | None = None) -> list[Task]:
    """Roll out one held-out episode per task (of `policy`, built with `policy_kwargs`) and pick
    (start, start + goal_offset) from it."""
    from worldmodel.data.rollout import episode_seed, rollout

    if episode_len <= goal_offset:
        raise ValueError(f"episode_len ({episode_len}) must exceed goal_offset ({goal_offset})")
    tasks = []
    for i in range(episodes):
        seed = episode_seed(eval_seed, i)
        if seed in forbidden_seeds:
            raise ValueError(f"held-out seed {seed} (eval_seed={eval_seed}, episode {i}) was used for "
                             "training; pick another eval_seed")
        ep = rollout(env, policy, eval_seed, i, episode_len, policy_kwargs)
        n = len(ep["state"])
        if n <= goal_offset:
            why = " (its physics diverged under the data policy)" if ep.get("diverged") else ""
            raise ValueError(f"held-out episode {i} ended after {n} rows{why}, shorter than goal_offset")
        rng = np.random.default_rng([seed, 7])
        # A window whose start already meets the goal (the data policy idled) is no task: any
        # policy "solves" it. Redraw the start among the windows that are not solved at step 0.
        open_starts = [s for s in range(n - goal_offset)
                       if not env.is_success(ep["state"][s], ep["state"][s + goal_offset])]
        if not open_starts:
            widest = max(env.goal_error(ep["state"][s], ep["state"][s + goal_offset])
                         for s in range(n - goal_offset))
            raise ValueError(f"held-out episode {i} (seed {seed}) never moves far enough in "
                             f"{goal_offset} steps to make a task: its widest start-to-goal gap is "
                             f"{widest:.2f} x the success tolerance (a task needs > 1). Use a larger "
                             "goal_offset=, another policy=, or a tighter success tolerance in the "
                             "data's env.kwargs (the generic adapters': collect with +env.kwargs.success_threshold=...)")
        s = int(rng.integers(0, n - goal_offset))
        while s not in open_starts:
            s = int(rng.integers(0, n - goal_offset))
        tasks.append(Task(i, seed, s, ep["state"][s].copy(), ep["state"][s + goal_offset].copy()))
    return tasks


def recorded_tasks(state: np.ndarray, ep_len: np.ndarray, ep_offset: np.ndarray, ep_seed: np.ndarray,
                   episodes: int, goal_offset: int, seed: int) -> list[Task]:
    """LeWM's draw as released: each task a random window of a recorded episode (the training
    data's), its start the recorded state at a random step and its goal the state `goal_offset`
    steps later. Windows are not redrawn, so a start that already meets its goal stays a task
    (the random floor, run on the same tasks, shows how many there are)."""
    eligible = np.flatnonzero(ep_len > goal_offset)
    if len(eligible) == 0:
        raise ValueError(f"no recorded episode is longer than goal_offset={goal_offset} steps; lower goal_offset=")
    rng = np.random.default_rng([seed, 42])
    tasks = []
    for i in range(episodes):
        e = int(rng.choice(eligible))
        s = int(rng.integers(0, ep_len[e] - goal_offset))
        row = int(ep_offset[e]) + s
        tasks.append(Task(i, int(ep_seed[e]), s, state[row].copy(), state[row + goal_offset].copy()))
    return tasks


def training_episodes(train_cfg: dict[str, Any], history: int, frameskip: int, path: str | None = None
                      ) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """The recording a run trained on (or `path`) and that run's seeded split of it into (train,
    held-out) episode indices, as `wm train` made it; for another recording: (path, None, None)."""
    from worldmodel.data.clips import ClipSpec, split_episodes
    from worldmodel.data.dataset import load_dataset

    dcfg = train_cfg.get("data") or {}
    trained_on = dcfg.get("path")
    path = path or trained_on
    if not path:
        raise ValueError("the checkpoint records no training data path; pass data=PATH")
    if not Path(path).exists():
        raise FileNotFoundError(f"dataset {path} does not exist here; pass data=PATH")
    if trained_on is None or Path(path).resolve() != Path(trained_on).resolve():
        return path, None, None
    lens = load_dataset(path, columns=("action",), episodes=dcfg.get("episodes")).ep_len
    spec = ClipSpec(history, int(dcfg.get("n_preds", 1)), frameskip)
    train, val = split_episodes(lens, spec, float(dcfg.get("val_fraction", 0.1)), int(dcfg.get("split_seed", 0)))
    return path, train, val


def goal_images(env_list: list, tasks: list[Task]) -> np.ndarray:
    """(B, H, W, 3) goal images of a batch of tasks, rendered by the observation camera, each in
    its own episode: the env is reset to the task first (left at its start state), since what a
    reset draws outside the state (a target marker, a terrain) is in the picture too."""
    for i, t in enumerate(tasks):
        env_list[i].reset(seed=t.seed, options={"state": t.start_state})
    return np.stack([env_list[i].goal_image(t.goal_state) for i, t in enumerate(tasks)])


def run_tasks(env_list: list, tasks: list[Task], goals: np.ndarray, act: Callable[[np.ndarray], np.ndarray],
              budget: int, record: bool) -> list[dict[str, Any]]:
    """Run len(tasks) <= len(env_list) episodes in lockstep with a batched policy `act`. An episode
    whose physics diverges ends there (`diverged_at`: that step), with what it reached so far."""
    from worldmodel.envs import SimulationDiverged

    B = len(tasks)
    obs = np.stack([env_list[i].reset(seed=t.seed, options={"state": t.start_state})[0]
                    for i, t in enumerate(tasks)])                         # (B, H, W, 3)
    first, diverged = [None] * B, [None] * B
    start = [env_list[i].goal_error(t.start_state, t.goal_state) for i, t in enumerate(tasks)]
    closest, last = list(start), list(start)
    parts = [env_list[i].goal_errors(t.start_state, t.goal_state) for i, t in enumerate(tasks)]  # at the closest
    frames: list[list[np.ndarray]] = [[o] for o in obs] if record else [[] for _ in range(B)]
    for step in range(1, budget + 1):
        actions = act(obs)                                                 # (B, A)
        obs = obs.copy()          # a new array per step: the policy and the video keep the frames they saw
        for i, env in enumerate(env_list[:B]):
            if diverged[i] is not None:
                continue
            try:
                o, _, _, _, info = env.step(actions[i])
            except SimulationDiverged:
                diverged[i] = step
                continue
            obs[i] = o
            last[i] = env.goal_error(info["state"], tasks[i].goal_state)
            if last[i] < closest[i]:
                closest[i], parts[i] = last[i], env.goal_errors(info["state"], tasks[i].goal_state)
            if first[i] is None and env.is_success(info["state"], tasks[i].goal_state):
                first[i] = step
            if record:
                frames[i].append(o)
    return [{"success": f is not None, "steps_to_success": f, "frames": frames[i], "goal": goals[i],
             "start_error": start[i], "closest_error": closest[i], "final_error": last[i],
             "closest_parts": [float(v) for v in parts[i]], "diverged_at": diverged[i]} for i, f in enumerate(first)]


def goal_error_summary(results: list[dict[str, Any]], floor: list[dict[str, Any]],
                       names: tuple[str, ...] = ("error",)) -> dict[str, Any]:
    """Medians of the goal error (x the success tolerance) over the episodes: at the start, closest,
    at the end; the closest among failures alone; and the random policy's closest on the same tasks."""
    def med(rs: list[dict[str, Any]], key: str) -> float | None:
        return round(float(np.median([r[key] for r in rs])), 3) if rs else None
    return {"start": med(results, "start_error"), "closest": med(results, "closest_error"),
            "final": med(results, "final_error"),
            "closest_failures": med([r for r in results if not r["success"]], "closest_error"),
            "closest_failures_parts": parts_median([r for r in results if not r["success"]], names),
            "random_closest": med(floor, "closest_error"),
            "note": "medians of the env's goal_error: its success criterion as a multiple of the "
                    "tolerance (< 1 = success); closest_failures_parts: each of the criterion's errors "
                    "(env.goal_errors, e.g. Push-T's position and angle) at the failures' closest approach"}


def parts_median(results: list[dict[str, Any]], names: tuple[str, ...]) -> dict[str, float] | None:
    """Per part of the success criterion (env.goal_errors, named by env.goal_error_names), the
    median over `results` of that part at each episode's closest approach: which error kept the
    failures from the goal."""
    rows = [r["closest_parts"] for r in results if len(r.get("closest_parts") or ()) == len(names)]
    return ({n: round(float(v), 3) for n, v in zip(names, np.median(np.array(rows), axis=0))}
            if rows else None)


def paired_vs_random(planner: list[bool], random: list[bool]) -> dict[str, Any]:
    """`mcnemar` of the planner against the random floor, as results.json records it."""
    b, c, p = mcnemar(planner, random)
    return {"planner_only": b, "random_only": c, "p_value": p}


def make_env(env_name: str, meta: dict[str, Any], image_size: int):
    """The env to evaluate in: the training data's env (under any of its names) built with the
    kwargs it was collected with (a generic adapter's suite task, success dims and tolerance, ...);
    another env that `env=` names gets its own defaults."""
    from worldmodel import envs

    return envs.make(env_name, image_size=image_size, **env_kwargs(env_name, meta))


def env_kwargs(env_name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The constructor kwargs `make_env` passes (besides image_size): the data's, when `env_name`
    is the data's env (`same_env`), less those the name itself sets (a dm_control task's domain)."""
    from worldmodel import envs

    if not same_env(env_name, meta):
        return {}
    try:
        _, extra = envs.resolve(env_name)
    except ValueError:                     # an env of a plugin not loaded: no name-set kwargs
        extra = {}
    return {k: v for k, v in (meta.get("env_kwargs") or {}).items() if k not in extra}


def same_env(name: str, meta: dict[str, Any]) -> bool:
    """Whether env `name` is the env the training data came from (by identity, not spelling:
    "tworoom" and "wm/TwoRoom-v0", or a dm_control task and the "dmc" data collected from it)."""
    from worldmodel import envs

    trained = meta.get("env")
    if not trained:
        return True
    try:
        short, extra = envs.resolve(name)
        t_short, t_extra = envs.resolve(trained)
    except ValueError:                     # an env of a plugin not loaded: fall back to the names
        return name == trained
    kw = meta.get("env_kwargs") or {}
    t_extra = {**t_extra, **{k: kw[k] for k in extra if k in kw}}
    return (short, extra) == (t_short, t_extra)
