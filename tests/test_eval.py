"""`wm eval` and `wm demo` end to end at tiny sizes, plus the protocol's pieces."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel import envs
from worldmodel.cli import main
from worldmodel.machine import bf16_matmul_speedup, precision_note
from worldmodel.model.energy import compile_refusal
from worldmodel.evaluation.tasks import env_kwargs, heldout_policy, make_env, make_tasks
from worldmodel.evaluation.stats import wilson

REPO = Path(__file__).resolve().parent.parent


def test_wilson_interval_matches_known_values():
    lo, hi = wilson(45, 50)                      # 90% of 50
    assert lo == pytest.approx(0.7864, abs=1e-3) and hi == pytest.approx(0.9565, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    lo, hi = wilson(0, 50)
    assert 0.0 == lo < hi < 0.08


def test_plan_seed_keeps_seed_0_evals_and_separates_other_planner_seeds():
    """planner.seed=0 reseeds each batch from its first task's seed, as every recorded eval did;
    other planner seeds give other, reproducible streams on the same tasks (they used to be ignored)."""
    from worldmodel.evaluation.tasks import plan_seed

    assert plan_seed(123456789, 0) == 123456789
    seeds = {plan_seed(123456789, k) for k in (0, 1, 2)} | {plan_seed(987654321, 1)}
    assert len(seeds) == 4 and plan_seed(123456789, 1) == plan_seed(123456789, 1)
    assert all(0 <= x < 2 ** 63 for x in seeds)                            # a valid torch seed


def test_precision_note_points_to_the_faster_precision_on_this_cpu():
    """wm eval / wm train on a CPU say when the other precision would run faster, from the measured
    bf16 vs float32 matmul speed; nothing where the chosen one is already the faster or the gap is small."""
    assert "precision=fp32 runs faster here" in precision_note("wm eval", "bf16", 0.7, "x")
    assert precision_note("wm train", "auto", 4.2, "1.7x") == (
        "wm train: note: this CPU multiplies bf16 matrices 4.2x faster than float32 ones: precision=bf16 runs "
        "faster here (1.7x)")
    for precision, speedup in (("fp32", 1.3), ("bf16", 4.2), ("fp32", 0.7)):
        assert precision_note("wm eval", precision, speedup, "x") is None
    first = bf16_matmul_speedup("cpu")
    assert first > 0 and bf16_matmul_speedup(torch.device("cpu")) is first      # measured once per device


def test_tasks_follow_protocol_and_refuse_training_seeds():
    from worldmodel import envs
    from worldmodel.data.rollout import episode_seed

    env = envs.make("tworoom", image_size=32)
    tasks = make_tasks(env, "expert", eval_seed=123, episodes=3, episode_len=40, goal_offset=25,
                       forbidden_seeds=set())
    assert [t.index for t in tasks] == [0, 1, 2]
    for t in tasks:
        assert 0 <= t.start_step < 40 - 25
        assert t.seed == episode_seed(123, t.index)
    # The goal is the state 25 steps after the start in the same held-out episode.
    from worldmodel.data.rollout import rollout
    ep = rollout(env, "expert", 123, 1, 40)
    np.testing.assert_allclose(tasks[1].goal_state, ep["state"][tasks[1].start_step + 25])
    noisy = make_tasks(env, "expert", 123, 3, 40, 25, set(), policy_kwargs={"noise": 1.0})
    ep = rollout(env, "expert", 123, 1, 40, {"noise": 1.0})                 # the kwargs reach the policy
    np.testing.assert_allclose(noisy[1].goal_state, ep["state"][noisy[1].start_step + 25])
    assert not np.allclose(ep["state"], rollout(env, "expert", 123, 1, 40)["state"])
    with pytest.raises(ValueError, match="used for training"):
        make_tasks(env, "expert", 123, 2, 40, 25, forbidden_seeds={episode_seed(123, 1)})
    with pytest.raises(ValueError, match="must exceed goal_offset"):
        make_tasks(env, "expert", 123, 1, 20, 25, forbidden_seeds=set())
    env.close()


def test_heldout_policy_follows_the_data_unless_named():
    meta = {"policy": "expert", "policy_kwargs": {"noise": 0.6}}
    assert heldout_policy(None, None, meta) == ("expert", {"noise": 0.6})       # the data's
    assert heldout_policy("expert", None, meta) == ("expert", {})               # named: its defaults
    assert heldout_policy("expert", {"noise": 0.1}, meta) == ("expert", {"noise": 0.1})
    assert heldout_policy(None, None, {"policy": "expert"}) == ("expert", {})   # data of before the field
    assert heldout_policy(None, None, {}) == ("noise", {})


def test_tasks_already_solved_at_the_start_are_redrawn(monkeypatch):
    """A window where the data policy idles (start meets the goal) is not a task: redraw it."""
    from worldmodel import envs
    import worldmodel.data.rollout as collect

    env = envs.make("tworoom", image_size=32)
    env.reset(seed=0)
    s0 = env.get_state()
    moving = np.repeat(s0[None], 60, axis=0)          # idles for 30 steps, then walks in x
    moving[30:, 0] += 0.02 * np.arange(1, 31)
    monkeypatch.setattr(collect, "rollout", lambda *a, **k: {"state": moving})
    tasks = make_tasks(env, "expert", eval_seed=5, episodes=20, episode_len=60, goal_offset=25,
                       forbidden_seeds=set())
    for t in tasks:
        assert not env.is_success(t.start_state, t.goal_state)
        assert t.start_step >= 13       # earlier starts end within 0.157 m of where they began
    monkeypatch.setattr(collect, "rollout", lambda *a, **k: {"state": moving[:30]})
    with pytest.raises(ValueError, match=r"never moves .* widest start-to-goal gap is 0.00 x"):
        make_tasks(env, "expert", eval_seed=5, episodes=1, episode_len=30, goal_offset=25,
                   forbidden_seeds=set())
    env.close()


def test_each_part_of_the_criterion_is_recorded_at_the_closest_approach():
    """Push-T's criterion has two parts (position, angle): run_tasks keeps both at the step the
    episode came closest, the summary names them, and their max is the closest error."""
    from worldmodel.evaluation.tasks import Task, goal_error_summary, run_tasks

    env = envs.make("pusht", image_size=16)
    env.reset(seed=0)
    start = env.get_state()
    goal = start.copy()
    goal[0] += 0.3                     # the pusher 0.3 m to the right (x 7.7 tolerances)
    goal[4] += 0.5                     # the block turned 0.5 rad (1.43 x pi / 9)
    right = np.array([[1.0, 0.0]], np.float32)
    res = run_tasks([env], [Task(0, 0, 0, start, goal)], np.zeros((1, 16, 16, 3), np.uint8),
                    lambda o: right, 8, False)[0]
    assert env.goal_error_names == ("position", "angle")
    assert max(res["closest_parts"]) == pytest.approx(res["closest_error"])
    assert res["closest_parts"][0] < 7.0 and res["closest_parts"][1] == pytest.approx(0.5 / (np.pi / 9), rel=0.05)
    ge = goal_error_summary([res], [], env.goal_error_names)
    assert ge["closest_failures_parts"] == {"position": pytest.approx(res["closest_parts"][0], abs=1e-3),
                                            "angle": pytest.approx(res["closest_parts"][1], abs=1e-3)}
    env.close()


def test_an_episode_whose_physics_diverges_ends_there():
    """run_tasks goes on with the other episodes; the diverged one keeps what it had reached."""
    from worldmodel.evaluation.tasks import Task, run_tasks

    env_list = [envs.make("tworoom", image_size=16) for _ in range(2)]
    env_list[0].reset(seed=0)
    start = env_list[0].get_state()
    bad = start.copy()
    bad[0] = 1e12                      # beyond MuJoCo's mjMAXVAL: the first step diverges
    tasks = [Task(0, 0, 0, bad, start), Task(1, 1, 0, start, start + 0.5)]
    still = np.zeros((2, 2), np.float32)
    res = run_tasks(env_list, tasks, np.zeros((2, 16, 16, 3), np.uint8), lambda o: still, 5, False)
    assert res[0]["diverged_at"] == 1 and res[1]["diverged_at"] is None
    assert not res[0]["success"] and res[0]["final_error"] == res[0]["start_error"]
    for e in env_list:
        e.close()


def test_goal_images_show_the_tasks_own_episode():
    """dm_control's reacher-easy draws its target marker at each reset, outside the state: a goal
    image must show the marker of the task's episode, not of whatever ran in that env before."""
    from worldmodel.evaluation.tasks import goal_images

    env = envs.make("dm_control/reacher-easy", image_size=32)
    tasks = make_tasks(env, "noise", eval_seed=7, episodes=2, episode_len=40, goal_offset=25,
                       forbidden_seeds=set())
    for t in tasks:
        env.reset(seed=12345)                                    # another episode's marker
        got = goal_images([env], [t])[0]
        env.reset(seed=t.seed, options={"state": t.goal_state})
        np.testing.assert_array_equal(got, env.render())
    env.close()


def test_eval_env_is_built_with_the_datas_env_kwargs():
    """A dataset collected with `env.kwargs` (a suite task, a success tolerance) is evaluated in
    that same env; an env named by `env=` instead gets its defaults."""
    meta = {"env": "dmc", "env_kwargs": {"domain": "point_mass", "task": "easy", "success_threshold": 0.02}}
    env = make_env("dmc", meta, 32)
    assert (env.domain, env.success_threshold, env.observation_space.shape) == ("point_mass", 0.02, (32, 32, 3))
    env.close()
    env = make_env("dm_control/cartpole-swingup", meta, 32)
    assert (env.domain, env.success_threshold) == ("cartpole", 0.1)
    env.close()
    # the data's env under another of its names is still the data's env, with the data's kwargs
    env = make_env("dm_control/point_mass-easy-v0", meta, 32)
    assert (env.domain, env.success_threshold) == ("point_mass", 0.02)
    env.close()
    assert env_kwargs("dm_control/point_mass-easy", meta) == {"success_threshold": 0.02}
    assert env_kwargs("dm_control/point_mass-hard", meta) == {}           # another task: its defaults
    tworoom = {"env": "tworoom", "env_kwargs": {"render_mode": "rgb_array"}}
    assert env_kwargs("wm/TwoRoom-v0", tworoom) == env_kwargs("tworoom", tworoom) == tworoom["env_kwargs"]
    assert env_kwargs("reacher", tworoom) == {}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "run"
    code = main(["demo", f"out={out}", "episodes=6", "workers=1", "image_size=32", "train_steps=3",
                 "batch_size=8", "lr=0.0005", "eval_episodes=3", "plan_samples=32", "plan_iterations=2",
                 "progress=false", "model=tiny"])
    assert code == 0
    return out


@pytest.mark.slow
def test_demo_writes_table_results_and_videos(demo_run):
    table = (demo_run / "results.md").read_text()
    assert "| tworoom | icem |" in table                               # wm eval's default planner
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["collect"]["episodes"] == 6
    train_cfg = json.loads((demo_run / "train" / "config.json").read_text())
    assert train_cfg["lr"] == 0.0005                                   # demo lr=
    res = json.loads((demo_run / "eval" / "results.json").read_text())
    assert (train_cfg["precision"], res["precision"]) == ("auto", "fp32")   # demo precision=auto
    assert res["episodes"] == 3 and len(res["per_episode"]) == 3
    assert 0.0 <= res["ci95"][0] <= res["success_rate"] <= res["ci95"][1] <= 1.0
    assert res["random_floor"]["successes"] <= 3
    assert res["latency_ms"]["plans"] == 10 and res["latency_ms"]["p50"] > 0  # 50 steps / 5 per plan
    assert res["protocol"]["goal_offset"] == 25 and res["protocol"]["budget"] == 50
    assert res["config"]["planner"]["samples"] == 32
    for e in res["per_episode"]:      # goal_error: the success criterion as a multiple of its tolerance
        assert e["start_error"] >= 1.0                                 # solved starts were redrawn
        assert e["closest_error"] <= min(e["start_error"], e["final_error"])
        assert e["closest_parts"] == [pytest.approx(e["closest_error"], abs=1e-3)]   # TwoRoom: one part
        assert e["success"] == (e["closest_error"] < 1.0)
        assert e["random_success"] == (e["random_closest_error"] < 1.0)
    ge = res["goal_error"]
    assert ge["closest"] == pytest.approx(np.median([e["closest_error"] for e in res["per_episode"]]), abs=1e-3)
    for pic in ("train/curves.png", "eval/summary.png"):          # drawn by train and eval, linked in the table
        assert (demo_run / pic).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({pic})" in table
    videos = sorted((demo_run / "eval" / "videos").iterdir())
    assert len(videos) == 3 and all(v.stat().st_size > 0 for v in videos)


@pytest.mark.slow
def test_training_task_draw_starts_and_ends_in_the_training_episodes(demo_run, tmp_path, capsys):
    """tasks=training is LeWM's draw: each start and goal a recorded state of an episode the model
    trained on (its split), goal_offset steps apart, the env reset with that episode's seed."""
    from worldmodel.data.dataset import load_dataset
    from worldmodel.evaluation.tasks import training_episodes

    ckpt, out = demo_run / "train" / "best.pt", tmp_path / "ev"
    assert main(["eval", f"checkpoint={ckpt}", "tasks=training", "episodes=3", "planner.samples=8",
                 "planner.elites=4", "planner.iterations=1", "videos=0", f"out={out}", "progress=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["tasks"] == "training" and res["episodes"] == 3
    train_cfg = json.loads((demo_run / "train" / "config.json").read_text())
    path, train, _ = training_episodes(train_cfg, 3, 5)
    ds = load_dataset(path, columns=("state",), episodes=train.tolist())
    for e in res["per_episode"]:
        (ep,) = np.flatnonzero(ds.ep_seed == e["seed"])             # one training episode, by its seed
        assert e["start_step"] + 25 < ds.ep_len[ep]
    # The held-out draw poses other tasks: compare refuses to pair the two.
    assert main(["compare", str(demo_run / "eval"), str(out)]) == 2
    assert "tasks" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", "tasks=train", f"out={tmp_path / 'x'}"]) == 2
    assert "tasks must be one of heldout, training" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", f"data={demo_run / 'data'}", f"out={tmp_path / 'y'}"]) == 2
    assert "pass tasks=training" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_cli_other_planner_and_refusals(demo_run, tmp_path, capsys, monkeypatch):
    ckpt = demo_run / "train" / "best.pt"
    out = tmp_path / "ev"
    assert main(["eval", f"checkpoint={ckpt}", "planner=icem", "planner.samples=16", "planner.elites=4", "planner.iterations=2",
                 "episodes=2", "videos=0", "random_floor=false", f"out={out}", "progress=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["planner"] == "icem" and res["random_floor"] is None and res["videos"] == []
    assert res["trained_env"] == res["env"] == "tworoom" and "warning" not in capsys.readouterr().err
    assert res["protocol"]["env_kwargs"] == {}
    # The same eval_seed poses the same tasks whatever the count: wm compare pairs the two evals on them.
    capsys.readouterr()
    assert main(["compare", str(demo_run / "eval"), str(out), "names=[cem,icem]"]) == 0
    assert "tworoom: 2 shared tasks (the runs hold 3, 2); paired tests against the first, cem" in \
        capsys.readouterr().out
    # Existing output, missing checkpoint, bad planner: refused with the fix named.
    assert main(["eval", f"checkpoint={ckpt}", f"out={out}", "episodes=1"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={tmp_path / 'nope.pt'}", f"out={tmp_path / 'x'}"]) == 2
    assert "wm train" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", "planner=nope"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", "env=Hopper-v5", f"out={tmp_path / 'y'}"]) == 2
    assert "3 action dims" in capsys.readouterr().err                    # the model was trained on 2
    # Another env with the same action and image shapes runs, but says whose data trained the model.
    assert main(["eval", f"checkpoint={ckpt}", "env=reacher", "episodes=1", "random_floor=false", "videos=0",
                 "planner.samples=8", "planner.elites=4", "planner.iterations=1",
                 f"out={tmp_path / 'r'}", "progress=false"]) == 0
    assert "was trained on tworoom data and is evaluated in reacher" in capsys.readouterr().err
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert (r["env"], r["trained_env"]) == ("reacher", "tworoom")
    # precision=bf16 plans with a bf16 copy of the predictor, compile=true through torch.compile (each
    # shape compiled in warmup, before the first episode); other precisions are refused up front.
    # (Traced by dynamo without Inductor's code generation here: test_energy checks Inductor's costs.)
    compile_ = torch.compile
    compiled = []
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kw: compiled.append(fn) or compile_(fn, backend="eager", **kw))
    assert main(["eval", f"checkpoint={ckpt}", "precision=bf16", "compile=true", "episodes=1",
                 "random_floor=false", "videos=0", "planner.samples=8", "planner.elites=4", "planner.iterations=1",
                 f"out={tmp_path / 'b'}", "progress=false"]) == 0
    assert ("precision=fp32 runs faster" in capsys.readouterr().err) == (bf16_matmul_speedup("cpu") < 1)
    r = json.loads((tmp_path / "b" / "results.json").read_text())
    refused = compile_refusal(torch.bfloat16, torch.device("cpu"))     # a CPU without native bf16: eager bf16
    assert (r["precision"], r["config"]["compile"], r["episodes"]) == ("bf16", True, 1)
    assert len(compiled) == (refused is None), refused
    assert r["compiled"] == {"used": refused is None, "note": refused}
    monkeypatch.setattr(torch, "compile", compile_)
    # step_weights=[...] reaches the goal energy: the weighted sum over every planned chunk
    import worldmodel.model.energy as energy_mod
    weights = []
    init = energy_mod.GoalEnergy.__init__
    monkeypatch.setattr(energy_mod.GoalEnergy, "__init__",
                        lambda self, *a, **kw: weights.append(kw.get("step_weights")) or init(self, *a, **kw))
    assert main(["eval", f"checkpoint={ckpt}", "horizon=3", "receding_horizon=3", "step_weights=[1,0.5,2]",
                 "episodes=1", "random_floor=false", "videos=0", "planner.samples=8", "planner.elites=4",
                 "planner.iterations=1", f"out={tmp_path / 'w'}", "progress=false"]) == 0
    assert weights == [[1.0, 0.5, 2.0]]
    assert json.loads((tmp_path / "w" / "results.json").read_text())["config"]["step_weights"] == [1.0, 0.5, 2.0]
    monkeypatch.setattr(energy_mod.GoalEnergy, "__init__", init)
    assert main(["eval", f"checkpoint={ckpt}", "precision=fp16", f"out={tmp_path / 'p'}"]) == 2
    assert "precision must be one of ['bf16', 'fp32']" in capsys.readouterr().err
    seed = json.loads((demo_run / "data" / "meta.json").read_text())["seed"]
    assert main(["eval", f"checkpoint={ckpt}", f"eval_seed={seed}", "episodes=1",
                 f"out={tmp_path / 'z'}", "progress=false"]) == 2
    assert "was used for training" in capsys.readouterr().err             # refused by make_tasks
    assert main(["eval", f"checkpoint={ckpt}", "cuda_graph=true", "device=cpu", f"out={tmp_path / 'g'}"]) == 2
    assert "cuda_graph=true needs a CUDA device" in capsys.readouterr().err
    assert not any((tmp_path / d).exists() for d in "zygp")                 # refusals leave no out


def test_eval_plans_with_the_ensemble_and_refuses_a_repeated_member(demo_run, tmp_path, capsys):
    ckpt = demo_run / "train" / "best.pt"
    twin = tmp_path / "twin.pt"
    shutil.copy(ckpt, twin)                                             # a second member file
    out = tmp_path / "ens"
    common = ["planner.samples=8", "planner.elites=4", "planner.iterations=1", "episodes=2", "videos=0",
              "random_floor=false", "progress=false"]
    assert main(["eval", f"checkpoint={ckpt}", f"ensemble=[{twin}]", f"out={out}", *common]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["ensemble"] == [str(twin)] and res["episodes"] == 2
    # the same model twice plans exactly as the model alone (same seeds, mean of equal costs)
    assert main(["eval", f"checkpoint={ckpt}", f"out={tmp_path / 'one'}", *common]) == 0
    alone = json.loads((tmp_path / "one" / "results.json").read_text())
    assert [e["success"] for e in res["per_episode"]] == [e["success"] for e in alone["per_episode"]]
    assert main(["eval", f"checkpoint={ckpt}", f"ensemble=[{ckpt}]", f"out={tmp_path / 'rep'}"]) == 2
    assert "repeats a checkpoint" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", f"ensemble=[{tmp_path / 'nope.pt'}]", f"out={tmp_path / 'no'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "rep").exists() and not (tmp_path / "no").exists()
    # a member trained on other episodes of the env: the held-out tasks avoid its episodes too
    from worldmodel.model.checkpoint import load_checkpoint, rewrite_checkpoint

    other = load_checkpoint(twin)
    other["extra"]["dataset_meta"]["seed"] = 4242
    rewrite_checkpoint(twin, other)
    assert main(["eval", f"checkpoint={ckpt}", f"ensemble=[{twin}]", "eval_seed=4242",
                 f"out={tmp_path / 'seen'}", *common]) == 2
    assert "was used for training" in capsys.readouterr().err and not (tmp_path / "seen").exists()


def test_eval_history_conditions_on_fewer_frames_and_refuses_more_than_the_model(demo_run, tmp_path, capsys):
    """history=1 plans from the current frame only (LeWM's release); more than the model's is refused first."""
    ckpt = demo_run / "train" / "best.pt"
    common = ["planner.samples=8", "planner.elites=4", "planner.iterations=1", "episodes=2", "videos=0",
              "random_floor=false", "progress=false"]
    assert main(["eval", f"checkpoint={ckpt}", "history=1", f"out={tmp_path / 'h1'}", *common]) == 0
    assert json.loads((tmp_path / "h1" / "results.json").read_text())["config"]["history"] == 1
    assert main(["eval", f"checkpoint={ckpt}", "history=9", f"out={tmp_path / 'h9'}", *common]) == 2
    assert "attends over at most" in capsys.readouterr().err and not (tmp_path / "h9").exists()
    assert main(["eval", f"checkpoint={ckpt}", "history=0", f"out={tmp_path / 'h0'}"]) == 2
    assert "history must be >= 1" in capsys.readouterr().err


def test_readme_plugin_planner_plans_from_the_cli(demo_run, tmp_path, capsys, monkeypatch):
    """docs/extending.md's random-shooting planner, named by WM_PLUGINS, is chosen with planner=NAME (no YAML
    of its own), takes planner.KEY= settings, lists them in --help; a key it lacks is refused up front."""
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (REPO / "docs" / "extending.md").read_text(), flags=re.S)
                if '@register_planner("shooting")' in b]
    (tmp_path / "my_planners.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("WM_PLUGINS", "my_planners")
    ckpt, out = demo_run / "train" / "best.pt", tmp_path / "shoot"
    assert main(["eval", f"checkpoint={ckpt}", "planner=shooting", "planner.samples=16", "episodes=2", "videos=0",
                 f"out={out}", "progress=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["planner"] == "shooting" and res["config"]["planner"] == {"name": "shooting", "samples": 16}
    assert res["episodes"] == len(res["per_episode"]) == 2 and res["random_floor"] is not None
    capsys.readouterr()
    assert main(["eval", "planner=shooting", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "planner.samples: int = 256" in helptext and "# candidate sequences per environment" in helptext
    assert main(["eval", f"checkpoint={ckpt}", "planner=shooting", "planner.elites=4", f"out={tmp_path / 'x'}"]) == 2
    assert "planner 'shooting' has no key elites" in capsys.readouterr().err
    assert main(["eval", f"checkpoint={ckpt}", "planner.name=shooting", f"out={tmp_path / 'x'}"]) == 2
    assert "not planner.name=" in capsys.readouterr().err                # cem's keys came along
    assert not (tmp_path / "x").exists()


def test_killed_eval_resumes_after_its_finished_batches(demo_run, tmp_path, capsys, monkeypatch):
    """An eval interrupted after its first batch keeps it (progress.json); resume=true plans only the
    rest and ends with the same results as an eval never interrupted."""
    import shutil

    import worldmodel.evaluation.evaluator as E

    ckpt = tmp_path / "best.pt"
    shutil.copy(demo_run / "train" / "best.pt", ckpt)
    args = [f"checkpoint={ckpt}", "episodes=3", "batch=2", "videos=3", "planner.samples=16", "planner.elites=4",
            "planner.iterations=2", "progress=false"]
    assert main(["eval", *args, f"out={tmp_path / 'whole'}"]) == 0
    run_tasks, calls = E.run_tasks, []

    def killed_in_second_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 3:                          # batch 1: planner, random floor; batch 2: killed
            raise KeyboardInterrupt
        return run_tasks(*a, **kw)

    monkeypatch.setattr(E, "run_tasks", killed_in_second_batch)
    out = tmp_path / "cut"
    assert main(["eval", *args, f"out={out}"]) == 130
    assert "re-run with resume=true" in capsys.readouterr().err
    assert json.loads((out / "progress.json").read_text())["done"] == 2 and not (out / "results.json").exists()
    assert main(["eval", *args, f"out={out}", "planner.samples=17", "resume=true"]) == 2   # other settings
    assert "other settings" in capsys.readouterr().err
    original = ckpt.read_bytes()
    ckpt.write_bytes(original + b"another model at the same path")
    assert main(["eval", *args, f"out={out}", "resume=true"]) == 2
    assert "checkpoint_sha256" in capsys.readouterr().err
    ckpt.write_bytes(original)
    calls.clear()
    assert main(["eval", *args, f"out={out}", "resume=true"]) == 0
    assert len(calls) == 2                                                 # the last batch only
    whole, cut = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    assert cut["per_episode"] == whole["per_episode"] and cut["random_floor"] == whole["random_floor"]
    assert cut["resumed_after"] == 2 and len(cut["videos"]) == 3 and not (out / "progress.json").exists()


def test_overwrite_replaces_only_an_earlier_eval_or_check(demo_run, tmp_path, capsys):
    """overwrite=true never deletes a training run, a dataset or other files given as out=."""
    ckpt = demo_run / "train" / "best.pt"
    before = {d: sorted(p.name for p in (demo_run / d).iterdir()) for d in ("train", "data")}
    for cmd, d in (("eval", "train"), ("check", "data"), ("eval", "data")):
        assert main([cmd, f"checkpoint={ckpt}", f"out={demo_run / d}", "overwrite=true"]) == 2
        err = capsys.readouterr().err
        assert f"which `wm {cmd}` does not write" in err and "another out=" in err
    assert {d: sorted(p.name for p in (demo_run / d).iterdir()) for d in ("train", "data")} == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert main(["eval", f"checkpoint={ckpt}", f"out={mine}", "overwrite=true"]) == 2
    assert (mine / "notes.txt").read_text() == "keep me"


def test_eval_refuses_a_bad_time_budget_before_any_output(tmp_path, capsys):
    (tmp_path / "ck.pt").write_bytes(b"not read: refused first")
    for budget in ("0", "-1"):
        assert main(["eval", f"checkpoint={tmp_path / 'ck.pt'}", f"time_budget_s={budget}",
                     f"out={tmp_path / 'e'}"]) == 2
        assert "time_budget_s must be > 0" in capsys.readouterr().err
    for weights, why in (("[1,1]", "5 of them"), ("[1,1,1,1,-1]", "finite weight >= 0"),
                         ("[0,0,0,0,0]", "not all 0")):
        assert main(["eval", f"checkpoint={tmp_path / 'ck.pt'}", f"step_weights={weights}",
                     f"out={tmp_path / 'e'}"]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"")
    for cmd in ("eval", "check"):                                       # a run directory names its best.pt
        assert main([cmd, f"checkpoint={tmp_path / 'run'}"]) == 2
        assert f"pass checkpoint={tmp_path / 'run' / 'best.pt'}" in capsys.readouterr().err


def test_demo_refuses_existing_output(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep me")
    assert main(["demo", f"out={tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err
    assert "resume=true" in err and "overwrite=true" in err
    assert (tmp_path / "d" / "x").read_text() == "keep me"
    # A bad device, model or planner is refused before the collection starts, not after it.
    bad = {"model=huge": "huge", "planner=nope": "nope", "plan_samples=5": "elites <= samples",
           "train_steps=0": "train_steps", "env=nowhere": "nowhere", "episodes=0": "episodes",
           "precision=fp16": "precision must be auto, fp32 or bf16"}
    if not torch.cuda.is_available():
        bad["device=cuda"] = "CUDA is not available"
    for arg, said in bad.items():
        assert main(["demo", f"out={tmp_path / 'e'}", arg]) == 2
        assert said in capsys.readouterr().err, arg
    assert not (tmp_path / "e").exists()


def test_paired_test_against_random_on_the_same_tasks():
    from worldmodel.evaluation.tasks import paired_vs_random

    # 17 vs 7 successes where random's successes are a subset of the planner's: 10 discordant, all
    # the planner's, p = 2 / 2^10.
    planner = [True] * 17 + [False] * 33
    random = [True] * 7 + [False] * 43
    r = paired_vs_random(planner, random)
    assert (r["planner_only"], r["random_only"]) == (10, 0)
    assert r["p_value"] == pytest.approx(2 / 1024)
    assert paired_vs_random([True, False], [False, True])["p_value"] == 1.0
    assert paired_vs_random([True], [True])["p_value"] == 1.0        # no discordant task


@pytest.mark.slow
def test_latent_geometry_script_reports_distances(demo_run, capsys, load_bench):
    mod = load_bench("latent_geometry")
    res = mod.main(["--checkpoint", str(demo_run / "train" / "best.pt"), "--points", "12",
                    "--scales", "0.01", "0.5"])
    assert res["env"] == "tworoom" and res["points"] == 12
    assert set(res["median_sq_dist_by_displacement"]) == {"0.01", "0.5"}
    assert all(v >= 0 and v == v for v in res["median_sq_dist_by_displacement"].values())
    px = res["pixel_fraction_of_random"]                       # the rendered images, no model involved
    assert set(px) == {"0.01", "0.5"} and 0 <= px["0.01"] < px["0.5"]   # 1 cm is < 1 px at 32 px
    ro = res["rollout_error_fraction_of_random"]               # open-loop predictor error per chunk
    assert len(ro["by_chunk"]) == len(ro["no_change"]) == 5 and ro["starts"] == 16
    assert all(v >= 0 and v == v for v in ro["by_chunk"] + ro["no_change"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "latent_geometry"


def test_state_probe_script_scores_both_readings(demo_run, capsys, load_bench):
    mod = load_bench("state_probe")
    res = mod.main(["--checkpoint", str(demo_run / "train" / "best.pt")])
    assert res["env"] == "tworoom" and res["pose_dims"] == [0, 1] and res["angle_dims"] == []
    assert all(r == r and r <= 1 for r in (res["probe_r2_raw_state"], res["probe_r2_pose_features"]))
    per = res["per_feature"]                              # each pose coordinate alone, by its state name
    assert set(per) == {"x", "y"} and all(f["r2"] <= 1 and f["nn_error"] >= 0 for f in per.values())
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "state_probe"


def test_state_probe_reads_each_coordinate_and_tells_a_blind_one(load_bench):
    """Latents that hold the position but not the angle: the position reads (R^2 ~1, the nearest
    latent's state ~exact), the angle reads no better than a random frame, as on Push-T's old recipe."""
    mod = load_bench("state_probe")
    rng = np.random.default_rng(0)
    state = np.c_[rng.uniform(-1, 1, 400), rng.uniform(-np.pi, np.pi, 400)]     # (N, 2): x, angle
    z = np.c_[state[:, :1], 0.1 * rng.standard_normal((400, 3))]                # (N, 4): x and noise
    per = mod.read_each(z, state, 200, {"pose_dims": [0, 1], "angle_dims": [1], "state_names": ["x", "theta"]})
    assert per["x"]["r2"] > 0.95 and per["x"]["nn_error"] < 0.1 * per["x"]["random_pair_error"]
    assert per["theta"]["r2"] < 0.1 and per["theta"]["nn_error"] > 0.7 * per["theta"]["random_pair_error"]


def test_oracle_energy_scores_the_recorded_actions_zero(load_bench):
    """The simulator oracle's energy: a held-out episode's own 25 recorded actions reach its goal
    state exactly (state cost 0), standing still does not; the chunk layout is the controller's."""
    import torch
    from worldmodel.envs.sim_rollout import SimRollout
    from worldmodel.data.rollout import rollout

    oracle = load_bench("oracle_ceiling")
    env = envs.make("tworoom", image_size=32)
    ep = rollout(env, "expert", 12345, 0, 40)
    start, goal = ep["state"][0], ep["state"][25]
    assert env.goal_error(start, goal) > 1                                # a real task
    energy = oracle.SimEnergy(SimRollout(env, nthread=1), 5, oracle.state_cost(env))
    energy.set_goal(goal[None])
    energy.set_observation(start[None, None], np.zeros((1, 0, 10), np.float32))
    recorded = torch.as_tensor(ep["action"][:25], dtype=torch.float64).reshape(1, 1, 5, 10)
    costs = energy(torch.cat([recorded, torch.zeros_like(recorded)], 1))  # (1, 2)
    assert costs.shape == (1, 2)
    assert costs[0, 0].item() < 1e-6 and costs[0, 1].item() > 1
    env.close()


@pytest.mark.slow
def test_oracle_ceiling_plans_wm_evals_tasks(demo_run, capsys, load_bench):
    res = load_bench("oracle_ceiling").main(["--eval", str(demo_run / "eval" / "results.json"),
                                         "--samples", "16", "--iterations", "2"])
    ev = json.loads((demo_run / "eval" / "results.json").read_text())
    assert res["env"] == "tworoom" and res["tasks"] == 3 and res["planner_overridden"]
    assert res["planner"]["samples"] == 16 and res["planner"]["elites"] == 2
    assert res["protocol"]["eval_seed"] == ev["protocol"]["eval_seed"] and res["protocol"]["frameskip"] == 5
    assert res["sim_replay_max_deviation"] == 0.0
    assert res["model_eval"] == {"successes": ev["successes"], "episodes": 3}
    for cost in ("state", "latent"):
        r = res[cost]
        assert len(r["per_episode_success"]) == 3 and r["successes"] == sum(r["per_episode_success"])
        assert sum(r["vs_model"].values()) == 3
        assert r["vs_model"]["both"] + r["vs_model"]["oracle_only"] == r["successes"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] == "oracle_ceiling"
    # another planner at the eval's compute, on the smooth state cost
    res = load_bench("oracle_ceiling").main(["--eval", str(demo_run / "eval" / "results.json"), "--costs",
                                         "state", "--state-cost", "sumsq", "--planner", "mppi",
                                         "--budget-sequences", "60"])
    assert res["planner"]["name"] == "mppi" and res["planner"]["samples"] * res["planner"]["iterations"] == 60
    assert res["state_cost"] == "sumsq" and "latent" not in res and len(res["state"]["per_episode_success"]) == 3


def test_planner_table_pairs_every_row_with_a_reference_eval(demo_run, tmp_path, load_bench):
    pt = load_bench("planner_table")
    ckpt, ref = str(demo_run / "train" / "best.pt"), str(demo_run / "eval" / "results.json")
    common = ["--checkpoint", ckpt, "--planners", "mppi", "--budget-sequences", "60", "--quiet",
              "--threads", "1", "--out", str(tmp_path / "pt"), "--json", str(tmp_path / "pt.json")]
    with pytest.raises(SystemExit, match="has 3 episodes, this table plans 2"):
        pt.main([*common, "--episodes", "2", "--reference", ref])   # refused before any planning
    assert not (tmp_path / "pt").exists()
    rec = pt.main([*common, "--episodes", "3", "--reference", ref])
    row, mine = rec["rows"][0], rec["rows"][0]["outcomes"]
    theirs = json.loads(Path(ref).read_text())
    assert rec["reference"]["outcomes"] == "".join("1" if e["success"] else "0" for e in theirs["per_episode"])
    assert len(mine) == 3 and mine.count("1") == row["successes"]
    pairs = list(zip(mine, rec["reference"]["outcomes"]))
    assert row["vs_reference"]["row_only"] == pairs.count(("1", "0"))
    assert row["vs_reference"]["reference_only"] == pairs.count(("0", "1"))
    assert json.loads((tmp_path / "pt.json").read_text())["rows"][0]["vs_reference"] == row["vs_reference"]


def test_control_loop_benchmark_runs_evals_tasks_through_the_robot_loop(demo_run, tmp_path, load_bench):
    cl = load_bench("control_loop")
    ckpt, ref = str(demo_run / "train" / "best.pt"), str(demo_run / "eval" / "results.json")
    common = ["--checkpoint", ckpt, "--threads", "1", "--json", str(tmp_path / "cl.jsonl")]
    with pytest.raises(SystemExit, match="no planner preset"):
        cl.main([*common, "--planner", "nope"])
    with pytest.raises(SystemExit, match="fewer than 9 tasks"):
        cl.main([*common, "--episodes", "9", "--reference", ref])
    for bad in (["1", "1"], ["1", "1", "1", "1", "nan"], ["0", "0", "0", "0", "0"]):
        with pytest.raises(SystemExit, match="one finite weight >= 0 per planned chunk"):
            cl.main([*common, "--step-weights", *bad])
    out = cl.main([*common, "--planner", "icem_cpu", "--episodes", "2", "--hz", "100", "--async-lead", "2",
                   "--receding-horizon", "1", "--step-weights", "1", "1", "1", "1", "1", "--reference", ref])
    assert out["episodes"] == 2 and out["successes"] == out["outcomes"].count("1") and out["hz"] == 100
    assert (out["receding_horizon"], out["step_weights"]) == (1, [1.0] * 5)
    assert (out["compile"], out["precision"]) == (False, "fp32") and out["warmup_s"] > 0
    for r in out["per_episode"]:
        assert 1 <= r["steps"] <= 50 and r["plans"] >= 1
        assert r["success"] or r["steps"] == 50         # a run ends on success or at the budget
        assert r["plans"] >= -(-r["steps"] // 5) - 1    # replanned after every 5-step chunk
    theirs = json.loads(Path(ref).read_text())["per_episode"][:2]
    assert out["reference"]["successes"] == sum(e["success"] for e in theirs)
    assert json.loads((tmp_path / "cl.jsonl").read_text().splitlines()[-1])["outcomes"] == out["outcomes"]


def test_run_tasks_hands_each_step_its_own_frames():
    """The policy keeps what it is handed (MPCController's history) and the video keeps every frame:
    a step must not overwrite an earlier step's observation array in place."""
    from worldmodel.evaluation.tasks import Task, run_tasks

    class Counter:                                  # frame value = steps taken since reset
        def reset(self, seed=None, options=None):
            self.t = 0
            return np.zeros((2, 2, 3), np.uint8), {}

        def step(self, action):
            self.t += 1
            return np.full((2, 2, 3), self.t, np.uint8), 0.0, False, False, {"state": np.zeros(1)}

        goal_error_names = ("error",)

        def goal_error(self, state, goal):
            return 1.0

        def goal_errors(self, state, goal):
            return np.array([1.0])

        def is_success(self, state, goal):
            return False

    seen = []
    tasks = [Task(i, i, 0, np.zeros(1), np.zeros(1)) for i in range(2)]
    res = run_tasks([Counter(), Counter()], tasks, np.zeros((2, 2, 2, 3), np.uint8),
                    lambda obs: seen.append(obs) or np.zeros((2, 1)), budget=4, record=True)
    assert [int(o[0, 0, 0, 0]) for o in seen] == [0, 1, 2, 3]
    assert [int(f[0, 0, 0]) for f in res[1]["frames"]] == [0, 1, 2, 3, 4]
