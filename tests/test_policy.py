"""WorldModelPolicy: LeRobot's calls over MPCController, and one folder (safetensors + JSON) that
loads back to the same plans."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from worldmodel.model.checkpoint import save_checkpoint
from worldmodel.model.world_model import ModelConfig, WorldModel
from worldmodel.policy import WorldModelPolicy

TINY = dict(image_size=16, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2, enc_mlp=64, latent_dim=32,
            proj_hidden=64, action_dim=2, frameskip=2, history=2, pred_depth=1, pred_heads=2, pred_head_dim=16,
            pred_mlp=64, action_hidden=32)
PLANNER = {"name": "cem", "samples": 16, "iterations": 2, "elites": 4, "seed": 0}
META = {"env": "tworoom", "image_size": 16, "action_low": [-1.0, -0.5], "action_high": [1.0, 0.5]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = WorldModel(ModelConfig(**TINY))
    with torch.no_grad():               # weights with an effect: AdaLN-zero starts actions at none
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", model, extra={"dataset_meta": META})


def batch(n: int = 2, size: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"observation.images.top": torch.rand(n, 3, size, size, generator=g), "observation.state": torch.zeros(n, 4)}


def test_select_action_and_chunk_follow_lerobots_shapes(checkpoint):
    policy = WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=3, receding_horizon=2)
    policy.set_goal(torch.rand(3, 16, 16))                  # one goal for every batch entry
    policy.reset()
    actions = [policy.select_action(batch(seed=t)) for t in range(5)]
    assert all(a.shape == (2, 2) and a.dtype == torch.float32 for a in actions)
    a = torch.stack(actions)
    assert (a[..., 1].abs() <= 0.5).all() and (a[..., 0].abs() <= 1).all()   # the training data's bounds
    assert policy.stats()["plans"] == 2                # 2 chunks of frameskip 2 per plan: t = 0 and 4
    chunk = policy.predict_action_chunk(batch(size=32))     # frames of another size are fitted
    assert chunk.shape == (2, 3 * 2, 2) and (chunk[..., 1].abs() <= 0.5).all()
    with pytest.raises(ValueError, match="call reset"):
        policy.select_action(batch(n=3))
    policy.reset()
    assert policy.select_action(batch(n=3)).shape == (3, 2)


def test_save_pretrained_round_trips_without_pickle(checkpoint, tmp_path):
    from safetensors import safe_open

    policy = WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=3, receding_horizon=1,
                                              step_weights=[1, 1, 1])
    folder = policy.save_pretrained(tmp_path / "policy")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["policy"]["planner"] == PLANNER and saved["policy"]["step_weights"] == [1, 1, 1]
    with safe_open(folder / "model.safetensors", "pt") as f:                 # tensors only
        assert set(f.keys()) == set(policy.model.state_dict())

    loaded = WorldModelPolicy.from_pretrained(folder)
    assert loaded.config == policy.config
    for k, v in policy.model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k
    goal = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)    # uint8 (H, W, 3) too
    plans = []
    for p in (WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=3, receding_horizon=1,
                                               step_weights=[1, 1, 1]), loaded):
        p.set_goal(goal)
        plans.append(torch.stack([p.select_action(batch(seed=t)) for t in range(3)]))
    torch.testing.assert_close(plans[0], plans[1])
    assert plans[0].abs().sum() > 0
    assert WorldModelPolicy.from_pretrained(folder, time_budget_s=0.5).config.time_budget_s == 0.5


def test_bad_input_is_refused_with_the_fix(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="unknown planner|choose"):
        WorldModelPolicy.from_checkpoint(checkpoint, planner={"name": "nope"})
    with pytest.raises(ValueError, match="one weight per planned chunk"):
        WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=3, step_weights=[1])
    with pytest.raises(ValueError, match="receding_horizon"):
        WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=2, receding_horizon=3)
    policy = WorldModelPolicy.from_checkpoint(checkpoint, planner=PLANNER, horizon=2)
    with pytest.raises(RuntimeError, match="set_goal"):
        policy.select_action(batch())
    with pytest.raises(ValueError, match="divide 0-255"):
        policy.set_goal(torch.rand(3, 16, 16) * 255)
    policy.set_goal(torch.rand(1, 3, 16, 16))
    two = {**batch(), "observation.images.wrist": torch.rand(2, 3, 16, 16)}
    with pytest.raises(KeyError, match="camera=<name>"):
        policy.select_action(two)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        WorldModelPolicy.from_pretrained(tmp_path / "missing")
    folder = policy.save_pretrained(tmp_path / "p")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["latent_dim"] = 4096                                  # declares another model
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match the model"):
        WorldModelPolicy.from_pretrained(folder)
