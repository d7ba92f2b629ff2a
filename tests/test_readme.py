"""The README's Python example runs as written (against a tiny checkpoint), so the docs match the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_python_api_example_runs(tmp_path, monkeypatch):
    import torch

    from worldmodel.model.checkpoint import save_checkpoint
    from worldmodel.model.world_model import ModelConfig, WorldModel

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2, enc_mlp=64,
                      latent_dim=32, proj_hidden=64, action_dim=2, frameskip=5, history=3, pred_depth=1,
                      pred_heads=2, pred_head_dim=16, pred_mlp=64, action_hidden=32)
    ckpt = save_checkpoint(tmp_path / "best.pt", WorldModel(cfg))
    (block,) = [b for b in _python_blocks() if "MPCController" in b]
    assert '"runs/demo/train/best.pt"' in block
    code = block.replace('"runs/demo/train/best.pt"', repr(str(ckpt)))
    code = code.replace('make_planner("cem", seed=0)', 'make_planner("cem", seed=0, samples=32, iterations=2)')
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)                      # noqa: S102 - our own docs
    assert scope["action"].shape == (2,)
    assert scope["z"].shape == (1, 1, 32)
    assert scope["ctrl"].stats()["plans"] >= 1


def test_readme_recorder_example_runs(tmp_path, monkeypatch):
    """The DatasetWriter block writes a dataset that loads, given logs shaped as its comment says."""
    from types import SimpleNamespace

    import numpy as np

    from worldmodel.data.dataset import load_dataset

    (block,) = [b for b in _python_blocks() if "DatasetWriter" in b]
    rng = np.random.default_rng(0)
    logs = [SimpleNamespace(frames=rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8),
                            commands=rng.uniform(-1, 1, (8, 2)), joints=rng.normal(size=(9, 3)))
            for _ in range(3)]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"my_logs": logs})         # noqa: S102 - our own docs
    ds = load_dataset(tmp_path / "data" / "arm", columns=("pixels", "action", "state"))
    assert (ds.num_episodes, ds.num_frames) == (3, 27) and ds.state.shape == (27, 3)
