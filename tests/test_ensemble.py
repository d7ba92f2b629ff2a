"""EnsembleEnergy: the mean of its members' goal energies, and through the controller (`wm eval
ensemble=[...]`: tests/test_eval.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from worldmodel.model.energy import GoalEnergy
from worldmodel.model.energy_terms import Avoid
from worldmodel.model.ensemble import EnsembleEnergy
from worldmodel.planners import make_planner
from worldmodel.planners.mpc import MPCController
from test_model import pixels, small_model  # noqa: E402  (tests/ is on sys.path under pytest)


def observe(energy, b: int = 2, h: int = 3, chunk: int = 6) -> None:
    energy.set_goal(pixels(b, 1, 32, seed=2)[:, 0])
    energy.set_observation(pixels(b, h, 32, seed=1), torch.randn(b, h - 1, chunk, generator=torch.Generator().manual_seed(3)))


def test_cost_is_the_mean_of_the_members_costs_each_toward_its_own_goal():
    models = [small_model(seed=s) for s in (0, 1, 2)]
    ens = EnsembleEnergy.of(models)
    singles = [GoalEnergy(m) for m in models]
    for e in (ens, *singles):
        observe(e)
    actions = torch.randn(2, 5, 4, 6)
    costs = torch.stack([e(actions) for e in singles])                  # (3, B, S)
    torch.testing.assert_close(ens(actions), costs.mean(0))
    assert not torch.allclose(costs[0], costs[1])                       # the members differ
    one = EnsembleEnergy.of(models[:1])
    observe(one)
    torch.testing.assert_close(one(actions), singles[0](actions))       # one member: GoalEnergy itself
    assert ens.prediction_error().shape == (2,) and ens.max_history == 3 and not ens.static


def test_each_member_binds_its_own_copy_of_a_term():
    models = [small_model(seed=s) for s in (0, 1)]
    images = pixels(1, 2, 32, seed=7)[0].numpy()                        # (2, 32, 32, 3)
    ens = EnsembleEnergy.of(models, terms=[Avoid(images=images)])
    with torch.no_grad():
        for m, model in zip(ens.members, models):
            torch.testing.assert_close(m.terms[0].latents, model.encode(torch.as_tensor(images)))


def test_members_that_see_other_frames_or_actions_are_refused():
    with pytest.raises(ValueError, match="model.frameskip=2 but #0 has 3"):
        EnsembleEnergy.of([small_model(), small_model(frameskip=2)])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleEnergy([])


def test_controller_plans_with_an_ensemble_within_the_bounds():
    ens = EnsembleEnergy.of([small_model(seed=s) for s in (0, 1)])
    ctrl = MPCController(make_planner("cem", samples=16, elites=4, iterations=2), ens,
                         (np.full(2, -1.0), np.full(2, 1.0)), horizon=2, frameskip=3, history=3, batch=2)
    ctrl.reset(pixels(2, 1, 32, seed=2)[:, 0].numpy(), seed=0)
    for _ in range(4):
        a = ctrl.act(pixels(2, 1, 32, seed=5)[:, 0].numpy())
        assert a.shape == (2, 2) and np.all(np.abs(a) <= 1.0)
