"""`wm distill`: a goal policy from a frozen world model; its checkpoint's refusals; planner=policy and
CEM / iCEM seeded by its proposal, inside MPCController; eval's config refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from test_clips import write_dataset
from test_model import pixels, small_model
from test_train import make_cfg, one_thread  # noqa: F401  (test_train's autouse fixture: one thread here too)
from worldmodel.config import from_dict
from worldmodel.evaluation.config import EvalConfig
from worldmodel.model.energy import GoalEnergy
from worldmodel.model.goal_policy import (GoalPolicy, PolicyConfig, load_policy, read_policy_file, save_policy,
                                          surprise_reference_of)
from worldmodel.planners import MPCController, make_planner
from worldmodel.training.distill import distill
from worldmodel.training.distill_config import DistillConfig
from worldmodel.training.trainer import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("distill")
    data = write_dataset(root / "data", [24] * 10, image_size=16, shards=1)
    torch.set_num_threads(1)
    train(make_cfg(data, root / "run", steps=4, eval_every=4, ckpt_every=4))
    ckpt = root / "run" / "best.pt"
    res = distill(from_dict(DistillConfig, dict(checkpoint=str(ckpt), out=str(root / "pol"), steps=30, batch_size=16,
                                                hidden=32, depth=1, horizon=2, goal_max=10, val_samples=64,
                                                progress=False)))
    return ckpt, root / "pol" / "policy.pt", res


def test_distill_writes_a_policy_loadable_with_its_model_and_a_surprise_reference(distilled):
    from worldmodel.model.world_model import load_trained

    ckpt, pol, res = distilled
    assert json.loads((pol.parent / "results.json").read_text())["val_mse"] == res["val_mse"]
    assert np.isfinite(res["val_mse"]) and res["val_mse_mean_action"] > 0 and res["train_episodes"] == 8
    model, _, _ = load_trained(ckpt)
    policy = load_policy(pol, model)
    z = torch.randn(3, 1, model.cfg.latent_dim)          # one observed frame: padded to the history
    out = policy(z, torch.randn(3, model.cfg.latent_dim), 4)
    assert out.shape == (3, 4, model.cfg.chunk_dim) and torch.isfinite(out).all()
    ref = surprise_reference_of(pol, model)
    assert ref["n"] > 10 and ref["log_std"] > 0 and ref["quantiles"]["50"] <= ref["quantiles"]["99"]


def test_wm_train_stores_the_surprise_reference_in_best_pt(distilled, tmp_path):
    """best.pt carries its weights' held-out one-step errors (what wm distill measures too, on the same
    episodes and weights); another model's weights and a checkpoint without one are refused by name."""
    from worldmodel.model.checkpoint import load_checkpoint, rewrite_checkpoint
    from worldmodel.model.world_model import load_trained

    ckpt, pol, res = distilled
    model, _, _ = load_trained(ckpt)
    ref = surprise_reference_of(ckpt, model)
    assert ref == load_checkpoint(ckpt)["extra"]["surprise"]
    assert ref["n"] == res["surprise_reference"]["n"] > 10
    assert ref["log_mean"] == pytest.approx(res["surprise_reference"]["log_mean"], abs=1e-4)
    with pytest.raises(ValueError, match="other weights than this model"):
        surprise_reference_of(ckpt, small_model())
    old = load_checkpoint(ckpt)
    del old["extra"]["surprise"]
    rewrite_checkpoint(tmp_path / "old.pt", old)
    with pytest.raises(ValueError, match="no surprise reference.*wm distill"):
        surprise_reference_of(tmp_path / "old.pt", model)


def test_policy_files_of_another_model_or_with_nan_weights_are_refused(distilled, tmp_path):
    ckpt, pol, _ = distilled
    from worldmodel.model.world_model import load_trained

    model, _, _ = load_trained(ckpt)
    other = small_model()
    with pytest.raises(ValueError, match="distilled from another world model.*wm distill checkpoint="):
        load_policy(pol, other)
    payload = read_policy_file(pol)
    policy = GoalPolicy(PolicyConfig(**payload["config"]))
    policy.load_state_dict(payload["policy"])
    with torch.no_grad():
        policy.net[-1].weight[0, 0] = float("nan")
    save_policy(tmp_path / "nan.pt", policy, model)
    with pytest.raises(ValueError, match="NaN/Inf weights.*re-run wm distill"):
        load_policy(tmp_path / "nan.pt", model)
    with pytest.raises(ValueError, match="not a `wm distill` policy"):
        load_policy(ckpt, model)                          # the world model's own checkpoint
    with pytest.raises(FileNotFoundError, match="wm distill checkpoint="):
        load_policy(tmp_path / "missing.pt", model)


def test_distill_config_refusals(distilled):
    ckpt = str(distilled[0])
    for bad, msg in ((dict(goal_min=5, goal_max=2), "goal_max"), (dict(lr=float("nan")), "lr must be"),
                     (dict(steps=0), "steps must be")):
        with pytest.raises(ValueError, match=msg):
            DistillConfig(checkpoint=ckpt, **bad)


def test_eval_config_asks_for_the_policy_a_planner_needs(distilled, tmp_path):
    ckpt = str(distilled[0])
    with pytest.raises(ValueError, match="pass distilled=<policy.pt>.*wm distill"):
        from_dict(EvalConfig, dict(checkpoint=ckpt, planner={"name": "policy"}))
    with pytest.raises(ValueError, match="pass distilled="):
        from_dict(EvalConfig, dict(checkpoint=ckpt, planner={"name": "cem", "proposal": True}))
    with pytest.raises(FileNotFoundError, match="wm distill"):
        from_dict(EvalConfig, dict(checkpoint=ckpt, planner={"name": "policy"}, distilled=str(tmp_path / "no.pt")))
    cfg = from_dict(EvalConfig, dict(checkpoint=ckpt, planner={"name": "policy"}, distilled=str(distilled[1])))
    assert cfg.distilled == str(distilled[1])


def untrained_policy(model, horizon: int = 4) -> GoalPolicy:
    torch.manual_seed(0)
    return GoalPolicy(PolicyConfig(model.cfg.latent_dim, model.cfg.chunk_dim, model.cfg.history, horizon, 16, 1))


@pytest.mark.parametrize("name,kw", [("policy", {}), ("policy", {"samples": 8}),
                                     ("cem", {"samples": 16, "iterations": 2, "elites": 4, "proposal": True}),
                                     ("icem", {"samples": 16, "iterations": 2, "elites": 4, "proposal": True})])
def test_planners_act_on_the_policys_proposal_in_the_controller(name, kw):
    model = small_model()
    policy = untrained_policy(model)
    energy = GoalEnergy(model, policy=policy)
    low, high = np.full(2, -1.0), np.full(2, 1.0)
    ctrl = MPCController(make_planner(name, seed=0, **kw), energy, (low, high), horizon=4, receding_horizon=1,
                         frameskip=model.cfg.frameskip, history=model.cfg.history)
    goal = pixels(1, 1, 32, seed=3)[0, 0].numpy()
    ctrl.reset(goal)
    frames = pixels(1, 8, 32, seed=4)[0].numpy()
    actions = [ctrl.act(f) for f in frames]
    assert all(a.shape == (2,) and (np.abs(a) <= 1).all() for a in actions)
    if name == "policy" and not kw:                    # the proposal itself, clipped to the bounds
        res = ctrl.plan(frames[-1])
        with torch.no_grad():
            want = policy(energy.z_hist, energy.z_goal, 4).clamp(-1, 1)
        torch.testing.assert_close(res.actions, want)
        assert res.iterations == 1


@pytest.mark.parametrize("name", ["cem", "icem"])
def test_presets_seed_with_the_proposal_exactly_when_the_energy_holds_a_policy(name, monkeypatch):
    """proposal=None (the presets'): seeded whenever the energy has a policy (wm eval distilled=), never
    otherwise; proposal=False keeps a policy-holding energy unseeded."""
    from worldmodel.config import preset
    from worldmodel.planners import Bounds, planner_from_config

    model = small_model()
    calls = []
    held = GoalEnergy(model, policy=untrained_policy(model, horizon=3))
    propose = held.propose
    monkeypatch.setattr(held, "propose", lambda h: calls.append(h) or propose(h))
    bounds = Bounds.make(np.full(model.cfg.chunk_dim, -1.0), np.full(model.cfg.chunk_dim, 1.0))   # one chunk
    goal, obs = pixels(1, 1, 32, seed=3)[:, 0], pixels(1, 2, 32, seed=4)
    for energy, proposal, want in ((held, None, [3]), (GoalEnergy(model), None, []), (held, False, [])):
        calls.clear()
        energy.set_goal(goal)
        energy.set_observation(obs, torch.zeros(1, 1, model.cfg.chunk_dim))
        cfg = {**preset("planner", "icem_cpu" if name == "icem" else name), "samples": 16, "iterations": 2,
               "elites": 4, "proposal": proposal}
        assert preset("planner", "icem_cpu" if name == "icem" else name)["proposal"] is None
        planner_from_config(cfg).solve(energy, bounds, horizon=3)
        assert calls == want, (proposal, energy.policy)


def test_seeded_cem_returns_the_proposal_when_the_deadline_has_passed():
    from worldmodel.planners import Bounds

    class Late:
        def propose(self, horizon):
            return torch.full((1, horizon, 2), 0.25)

        def __call__(self, actions):
            return actions.square().sum((2, 3))

    res = make_planner("cem", samples=8, elites=2, proposal=True).solve(
        Late(), Bounds.make([-1, -1], [1, 1]), horizon=3, deadline_s=1e-9)
    assert res.iterations == 0 and res.deadline_missed
    torch.testing.assert_close(res.actions, torch.full((1, 3, 2), 0.25))


def test_an_energy_without_a_policy_is_refused_by_name():
    from worldmodel.planners import Bounds

    with pytest.raises(TypeError, match="proposes no plan.*distilled="):
        make_planner("policy").solve(lambda a: a.sum((2, 3)), Bounds.make([-1], [1]), horizon=2)
    with pytest.raises(ValueError, match="iterations must be 1"):
        make_planner("policy", iterations=3)


def test_distill_help_does_not_import_torch():
    code = ("import sys; from worldmodel.cli import main; rc = main(['distill', '--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "goal_max" in out.stdout, out.stderr


def test_eval_builds_the_energy_terms_and_loads_the_policy(distilled):
    from worldmodel.evaluation.evaluator import energy_extras
    from worldmodel.model.energy_terms import ActionRate
    from worldmodel.model.world_model import load_trained

    ckpt, pol, _ = distilled
    model, _, _ = load_trained(ckpt)
    cfg = from_dict(EvalConfig, dict(checkpoint=str(ckpt), planner={"name": "policy"}, distilled=str(pol),
                                     terms={"rate": 0.1}))
    terms, policy = energy_extras(cfg, model)
    assert [type(t) for t in terms] == [ActionRate] and isinstance(policy, GoalPolicy)
    with pytest.raises(ValueError, match="terms.rate must be a finite weight"):
        from_dict(EvalConfig, dict(checkpoint=str(ckpt), terms={"rate": float("nan")}))
