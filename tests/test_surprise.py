"""SurpriseMonitor: scores each new frame's one-step prediction error against the held-out reference,
fires on a frame the model cannot predict, stays quiet on frames it predicts, stops the robot on demand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from test_model import pixels, small_model
from worldmodel.model.energy import GoalEnergy
from worldmodel.planners import MPCController, SurpriseMonitor, Surprised, make_planner


class Sees(GoalEnergy):
    """A goal energy whose one-step error is 1 on a white newest frame and 0.01 otherwise (the monitor's
    logic, apart from the model; prediction_error itself is tested against the model above)."""

    def set_observation(self, obs_history, past_actions=None):
        super().set_observation(obs_history, past_actions)
        self.white = bool((np.asarray(obs_history)[:, -1] == 255).all()) and obs_history.shape[1] > 1

    def prediction_error(self):
        err = super().prediction_error()
        return None if err is None else torch.full_like(err, 1.0 if self.white else 0.01)


REF = {"log_mean": float(np.log(0.01)), "log_std": 0.5}


def test_prediction_error_is_the_one_step_error_of_the_newest_frame():
    model = small_model()
    energy = GoalEnergy(model)
    obs = pixels(2, 3, 32, seed=1)
    past = torch.randn(2, 2, model.cfg.chunk_dim)
    energy.set_observation(obs, past)
    with torch.no_grad():
        z = model.encode(obs)
        want = (model.predict(z[:, :-1], past)[:, -1] - z[:, -1]).square().mean(-1)
    torch.testing.assert_close(energy.prediction_error(), want)
    energy.set_observation(obs[:, :1], None)
    assert energy.prediction_error() is None                            # one frame: nothing to predict


def test_monitor_fires_on_an_unpredictable_frame_and_reports_in_stats():
    model = small_model()
    obs = pixels(1, 20, 32, seed=3)[0].numpy()
    events = []
    energy = SurpriseMonitor(Sees(model), REF, threshold=3.0, on_surprise=events.append)
    ctrl = MPCController(make_planner("cem", samples=8, iterations=1, elites=2), energy, (-np.ones(2), np.ones(2)),
                         horizon=2, receding_horizon=1, frameskip=model.cfg.frameskip, history=3)
    ctrl.reset(obs[0])
    ctrl.warmup(1)                                                       # the fake history is not scored
    assert ctrl.stats()["surprise_checks"] == 0
    for f in obs[:12]:
        ctrl.act(f)
    quiet = ctrl.stats()
    assert quiet["surprise_checks"] >= 2 and quiet["surprise_alarms"] == 0 and abs(quiet["surprise_last"]) < 1e-6
    white = np.full_like(obs[0], 255)                                    # the world changes beyond recognition
    for _ in range(2 * model.cfg.frameskip):
        ctrl.act(white)
    s = ctrl.stats()
    assert s["surprise_alarms"] >= 1 and s["surprise_max"] == pytest.approx(np.log(100) / 0.5)
    assert events and events[0].rows.tolist() == [0] and events[0].errors[0] == pytest.approx(1.0)
    ctrl.reset(obs[0])
    assert ctrl.stats()["surprise_alarms"] == 0                          # per goal


def test_stop_raises_from_act_and_the_controller_stays_usable():
    model = small_model()
    obs = pixels(1, 20, 32, seed=3)[0].numpy()
    ref = {"log_mean": -50.0, "log_std": 1.0}                             # every real error is a surprise
    ctrl = MPCController(make_planner("cem", samples=8, iterations=1, elites=2),
                         SurpriseMonitor(GoalEnergy(model), ref, threshold=1.0, stop=True),
                         (-np.ones(2), np.ones(2)), horizon=2, receding_horizon=1, frameskip=model.cfg.frameskip,
                         history=3)
    ctrl.reset(obs[0])
    with pytest.raises(Surprised, match="threshold 1.0") as e:
        for f in obs:
            ctrl.act(f)
    assert e.value.event.scores[0] > 1.0
    ctrl.reset(obs[0])
    ctrl.act(obs[0])                                                     # usable after reset


@pytest.mark.parametrize("kw,msg", [(dict(threshold=0), "threshold must be a finite number > 0"),
                                    (dict(threshold=-1.0), "threshold must be"),
                                    (dict(threshold=float("nan")), "threshold must be"),
                                    (dict(reference={"log_mean": 0.0, "log_std": 0.0}), "log_std > 0"),
                                    (dict(reference={}), "surprise_reference_of")])
def test_bad_monitor_settings_are_refused_with_the_fix(kw, msg):
    model = small_model()
    args = dict(reference={"log_mean": 0.0, "log_std": 1.0}, threshold=4.0) | kw
    with pytest.raises(ValueError, match=msg):
        SurpriseMonitor(GoalEnergy(model), **args)
    with pytest.raises(TypeError, match="prediction_error"):
        SurpriseMonitor(lambda a: a, {"log_mean": 0.0, "log_std": 1.0})
