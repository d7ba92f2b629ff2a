"""`wm check`: simulator-free planning checks on recorded episodes (a robot's data has no simulator)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from worldmodel.data import dataset as D
from worldmodel.evaluation.check import make_windows
from worldmodel.cli import main
from worldmodel.data.recorder import DatasetWriter

BOUNDS = dict(action_low=[-1.0, -1.0], action_high=[1.0, 1.0], control_hz=10.0, image_size=16)
MODEL = ["model.encoder=vit", "model.image_size=16", "model.patch_size=8", "model.enc_width=32", "model.enc_depth=1",
         "model.enc_heads=2", "model.enc_mlp=64", "model.latent_dim=32", "model.proj_hidden=64",
         "model.frameskip=2", "model.history=2", "model.pred_depth=1", "model.pred_heads=2",
         "model.pred_head_dim=16", "model.pred_mlp=64", "model.action_hidden=32"]


def record(out: Path, episodes: int, seed: int, T: int = 16) -> Path:
    """A recorded 'robot': a square moved by its commands. No env, no state: pixels and actions."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(out, name="square", **BOUNDS) as w:
        for _ in range(episodes):
            act = rng.uniform(-1, 1, (T - 1, 2)).astype(np.float32)
            pos = np.concatenate([[[8.0, 8.0]], 8 + np.cumsum(act, axis=0)]).clip(2, 13)   # (T, 2)
            pixels = np.zeros((T, 16, 16, 3), np.uint8)
            for t, (x, y) in enumerate(pos.astype(int)):
                pixels[t, y - 2:y + 2, x - 2:x + 2] = 255
            w.add_episode(pixels=pixels, action=act)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check")
    data = record(root / "rec", 10, seed=0)
    assert main(["train", f"data={data}", f"out={root / 'run'}", *MODEL, "steps=6", "batch_size=8",
                 "data.val_fraction=0.3", "eval_every=6", "tensorboard=false", "plots=false",
                 "progress=false"]) == 0
    return root


def test_windows_hold_history_goal_and_moving_scene(tmp_path):
    ds = D.load_dataset(record(tmp_path / "r", 3, seed=1), columns=("pixels", "action"))
    starts = make_windows(ds, 30, history=3, frameskip=2, offset=6, seed=0)
    assert len(starts) == 30
    ep = np.searchsorted(ds.ep_offset, starts, side="right") - 1
    assert (starts - 4 >= ds.ep_offset[ep]).all()                              # 2 chunks of history
    assert (starts + 6 <= ds.ep_offset[ep] + ds.ep_len[ep] - 1).all()          # goal inside the episode
    assert all(np.isfinite(ds.action[s - 4:s + 6]).all() for s in starts)
    assert all(not np.array_equal(ds.pixels[s], ds.pixels[s + 6]) for s in starts)
    assert (make_windows(ds, 30, 3, 2, 6, seed=0) == starts).all()             # seeded
    with pytest.raises(ValueError, match="lower goal_offset"):
        make_windows(ds, 5, history=3, frameskip=2, offset=12, seed=0)


def test_rank_auc_counts_ties_half():
    from worldmodel.evaluation.check_scoring import rank_auc

    e_true = torch.tensor([1.0, 1.0, 5.0])
    e_other = torch.tensor([[2.0, 3.0], [1.0, 0.5], [1.0, 2.0]])              # first, tie + beaten, last
    assert rank_auc(e_true, e_other).tolist() == [1.0, 0.25, 0.0]


def test_check_on_held_out_episodes_matches_the_goal_energy(trained, capsys):
    """Every figure is there, and the recorded actions' energy is the public GoalEnergy's on the
    same history, goal and chunks (the window/chunk bookkeeping rebuilt independently)."""
    from worldmodel.model.energy import GoalEnergy
    from worldmodel.model.world_model import WorldModel

    out = trained / "chk"
    assert main(["check", f"checkpoint={trained / 'run' / 'best.pt'}", "tasks=12", "goal_offset=4",
                 "decoys=5", "planner.samples=16", "planner.iterations=2", "planner.elites=4", "grid=3",
                 f"out={out}", "progress=false"]) == 0
    assert "recorded actions rank AUC" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    assert res["episodes"].startswith("the 3 held-out episodes")               # the training split's
    assert (res["tasks"], res["horizon_chunks"], res["decoys"]) == (12, 2, 5)
    assert len(res["rollout"]["ratio_by_chunk"]) == 2 and all(r > 0 for r in res["rollout"]["ratio_by_chunk"])
    assert 0 <= res["ranking"]["top1"] <= 1 and 0 <= res["ranking"]["auc"] <= 1
    assert res["ranking"]["noise"] == [0.1, 0.3, 1.0] and all(0 <= a <= 1 for a in res["ranking"]["auc_noisy"])
    for k in ("recorded", "plan"):
        assert 0 <= res["landing_steps"][k]["median_abs"] <= 4
    assert (out / "check.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ds = D.load_dataset(trained / "rec", columns=("pixels", "action"))
    model = WorldModel.from_checkpoint(trained / "run" / "best.pt")
    energy = GoalEnergy(model, goal_at="last_chunk")            # wm check scores where a sequence ends
    for t in res["per_task"][:4]:
        s = int(ds.ep_offset[t["episode"]]) + t["start_step"]                     # row in the whole recording
        assert abs(t["landing_recorded"]) <= 4 and abs(t["landing_plan"]) <= 4
        obs = torch.from_numpy(ds.pixels[[s - 2, s]][None])                        # (1, 2, 16, 16, 3)
        past = torch.from_numpy(ds.action[s - 2:s].reshape(1, 1, 4))               # (1, 1, 2*2)
        energy.set_observation(obs, past)
        energy.set_goal(torch.from_numpy(ds.pixels[s + 4][None]))
        rec = torch.from_numpy(ds.action[s:s + 4].reshape(1, 1, 2, 4))              # (1, 1, H=2, 4)
        assert float(energy(rec)) == pytest.approx(t["e_recorded"], rel=1e-3, abs=1e-5)


def test_check_on_another_recording_and_refusals(trained, tmp_path, capsys):
    ckpt = trained / "run" / "best.pt"
    other = record(tmp_path / "other", 4, seed=7)
    out = tmp_path / "c"
    assert main(["check", f"checkpoint={ckpt}", f"data={other}", "tasks=6", "goal_offset=4",
                 "planner.samples=8", "planner.iterations=1", "planner.elites=2", f"out={out}",
                 "progress=false"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["episodes"] == f"every episode of {other}" and res["decoys"] == 5   # capped at tasks - 1
    assert "warning" not in capsys.readouterr().err                # the same recorded system
    arm = tmp_path / "arm"                                         # another system's recording
    with DatasetWriter(arm, name="arm", **BOUNDS) as w:
        w.add_episode(pixels=np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), np.uint8),
                      action=np.zeros((15, 2), np.float32))
    assert main(["check", f"checkpoint={ckpt}", f"data={arm}", "tasks=2", "goal_offset=4", "plan=false",
                 f"out={tmp_path / 'a'}", "progress=false"]) == 0
    assert "trained on the recording 'square' data and is checked on the recording 'arm'" in capsys.readouterr().err
    assert main(["check", f"checkpoint={ckpt}", f"data={other}", "tasks=6", "goal_offset=4", "plan=false",
                 f"out={out}", "overwrite=true", "progress=false"]) == 0               # the model alone
    res = json.loads((out / "results.json").read_text())
    assert res["plan"] is None and res["landing_steps"]["plan"] is None and "e_plan" not in res["per_task"][0]
    # Refused before any work, with the fix named; a refusal leaves no output behind.
    cases = [(["goal_offset=5"], "multiple of the model's frameskip"),
             (["goal_offset=40"], "lower goal_offset"),
             ([f"data={tmp_path / 'nope'}", "goal_offset=4"], "does not exist"),
             (["tasks=1"], "tasks must be >= 2"),
             (["noise=[0.1,0]"], "noise must be a list of stds > 0")]
    for extra, msg in cases:
        assert main(["check", f"checkpoint={ckpt}", f"out={tmp_path / 'x'}", *extra]) == 2
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    assert main(["check", f"checkpoint={ckpt}", f"data={other}", f"out={out}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    big = tmp_path / "big"
    with DatasetWriter(big, **{**BOUNDS, "image_size": 32}) as w:
        w.add_episode(pixels=np.zeros((16, 32, 32, 3), np.uint8), action=np.zeros((15, 2), np.float32))
    assert main(["check", f"checkpoint={ckpt}", f"data={big}", "goal_offset=4", f"out={tmp_path / 'x'}"]) == 2
    assert "the model takes (16, 16, 3)" in capsys.readouterr().err


def test_check_vs_eval_script_lines_up_both(trained, tmp_path, capsys, load_bench):
    """benchmarks/check_vs_eval.py: the check's figures beside the simulator's success, one JSON line."""
    mod = load_bench("check_vs_eval")
    ckpt = trained / "run" / "best.pt"
    ev = tmp_path / "results.json"       # what `wm eval` writes, cut to the fields the script reads
    ev.write_text(json.dumps({"checkpoint": str(ckpt), "env": "square", "successes": 7, "episodes": 50,
                              "random_floor": {"successes": 1, "paired": {"p_value": 0.03}}}))
    row = mod.main(["--checkpoint", str(ckpt), "--eval", str(ev), "--tasks", "6", "--goal-offset", "4",
                    "--label", "tiny"])
    assert row["eval"] == {"successes": 7, "episodes": 50, "random_successes": 1, "p_vs_random": 0.03}
    assert row["check"]["plan"] is None and len(row["check"]["ranking"]["auc_noisy"]) == 3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] == "tiny"
