"""Plugins: docs/extending.md's own-env example, named by WM_PLUGINS, collects in parallel and keeps the
env contract; a plugin that cannot be imported stops the command before any work."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from worldmodel.data import dataset as D
from worldmodel.cli import main

REPO = Path(__file__).resolve().parent.parent


def _plugin(tmp_path: Path) -> dict[str, str]:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", (REPO / "docs" / "extending.md").read_text(), flags=re.S)
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
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "puck",
                           str(REPO / "tests" / "test_envs.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)    # the contract tests, on the plugin
    assert proc.returncode == 0 and re.search(r"\b7 passed", proc.stdout), proc.stdout + proc.stderr


def test_unimportable_plugin_stops_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WM_PLUGINS", "no_such_plugin_module")
    assert main(["collect", "env=tworoom", "episodes=1", f"out={tmp_path / 'd'}"]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin_module" in err and "PYTHONPATH" in err
    assert not (tmp_path / "d").exists()
