"""Plugins: the README's own-env example, named by WM_PLUGINS, collects in parallel and keeps the
env contract; a plugin that cannot be imported stops the command before any work."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from worldmodel import dataset as D
from worldmodel.cli import main

REPO = Path(__file__).resolve().parent.parent

CONTRACT = """
import numpy as np, envs
env = envs.make("puck", image_size=32)
a = np.random.default_rng(0).uniform(-1, 1, (6, 2))
runs = []
for _ in range(2):
    obs, info = env.reset(seed=3)
    runs.append([obs] + [env.step(x)[0] for x in a])
assert all(np.array_equal(p, q) for p, q in zip(*runs)), "seeded reset is not deterministic"
goal = env.get_state()
img = env.goal_image(goal)
env.reset(seed=4)
env.set_state(goal)
assert np.array_equal(env.get_state(), goal) and np.array_equal(env.render(), img)
assert env.is_success(goal, goal) and not env.is_success(goal + [0.5, 0, 0, 0], goal)
assert np.array_equal(env.clip_action([5, -5]), [1, -1])
print("contract ok")
"""


def _plugin(tmp_path: Path) -> dict[str, str]:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
                if '@register_env("puck"' in b]
    (tmp_path / "my_envs.py").write_text(block)
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "WM_PLUGINS": "my_envs",
            "MUJOCO_GL": "egl"}


def test_readme_plugin_env_collects_with_workers_and_keeps_the_contract(tmp_path):
    env = _plugin(tmp_path)
    out = tmp_path / "d"
    proc = subprocess.run([sys.executable, "-m", "worldmodel.cli", "collect", "env=puck", "episodes=4",
                           "workers=2", "episode_len=20", "image_size=32", f"out={out}", "progress=false"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ds = D.load_dataset(out, columns=("state",))
    assert ds.num_episodes == 4 and len(list(out.glob("shard_*.h5"))) == 2       # both workers ran it
    assert ds.meta["env"] == "puck" and ds.meta["env_info"]["pose_dims"] == [0, 1]
    proc = subprocess.run([sys.executable, "-c", "import my_envs\n" + CONTRACT], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "contract ok" in proc.stdout, proc.stderr


def test_unimportable_plugin_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WM_PLUGINS", "no_such_plugin_module")
    assert main(["collect", "env=tworoom", "episodes=1", f"out={tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin_module" in err and "PYTHONPATH" in err
    assert not (tmp_path / "d").exists()
