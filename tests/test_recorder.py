"""DatasetWriter: recorded episodes become a wm dataset that trains, survives a kill, refuses bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldmodel.data import dataset as D
from worldmodel.cli import main
from worldmodel.data.recorder import DatasetWriter

REPO = Path(__file__).resolve().parent.parent
BOUNDS = dict(action_low=[-1.0, -0.5], action_high=[1.0, 0.5], control_hz=10.0, image_size=16)


def episode(rng: np.random.Generator, T: int = 12) -> dict[str, np.ndarray]:
    """A square that moves by the commanded action: frames, T - 1 actions, (T, 2) positions."""
    act = rng.uniform([-1, -0.5], [1, 0.5], (T - 1, 2)).astype(np.float32)
    pos = np.concatenate([[[8.0, 8.0]], 8 + np.cumsum(act, axis=0)]).clip(2, 13)    # (T, 2)
    pixels = np.zeros((T, 16, 16, 3), np.uint8)
    for t, (x, y) in enumerate(pos.astype(int)):
        pixels[t, y - 2:y + 2, x - 2:x + 2] = 255
    return {"pixels": pixels, "action": act, "state": pos}


def test_round_trip_trains_and_inspects(tmp_path, capsys):
    rng = np.random.default_rng(0)
    out = tmp_path / "rec"
    eps = [episode(rng) for _ in range(6)]
    with DatasetWriter(out, name="square", state_names=["x", "y"], pose_dims=[0, 1], shard_every=4,
                       **BOUNDS) as w:
        assert [w.add_episode(**e) for e in eps] == list(range(6))
    assert len(list(out.glob("shard_*.h5"))) == 2 and not (out / D.STAGING).exists()
    ds = D.load_dataset(out, columns=("pixels", "action", "state"))
    assert (ds.num_episodes, ds.num_frames) == (6, 72) and ds.ep_index.tolist() == list(range(6))
    np.testing.assert_array_equal(ds.episode(3)["pixels"], eps[3]["pixels"])
    np.testing.assert_array_equal(ds.episode(3)["action"][:-1], eps[3]["action"])
    assert np.isnan(ds.episode(3)["action"][-1]).all()                 # no action after the last frame
    meta = json.loads((out / D.META).read_text())
    assert meta["env"] is None and meta["source"] == "square" and meta["episodes"] == 6
    assert meta["env_info"] == {"pose_dims": [0, 1], "angle_dims": []}
    assert (meta["action_dim"], meta["image_size"], meta["control_hz"]) == (2, 16, 10.0)

    assert main(["inspect", str(out), "json=true"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["episodes"] == 6 and report["env"] == "none (recorded: square)"
    run = tmp_path / "run"
    model = ["model.encoder=vit", "model.image_size=16", "model.patch_size=8", "model.enc_width=32", "model.enc_depth=1",
             "model.enc_heads=2", "model.enc_mlp=64", "model.latent_dim=32", "model.proj_hidden=64",
             "model.frameskip=2", "model.history=2", "model.pred_depth=1", "model.pred_heads=2",
             "model.pred_head_dim=16", "model.pred_mlp=64", "model.action_hidden=32"]
    assert main(["train", f"data={out}", f"out={run}", *model, "steps=4", "batch_size=4",
                 "data.val_fraction=0.34", "eval_every=4", "tensorboard=false", "plots=false",
                 "progress=false"]) == 0
    assert (run / "best.pt").exists()
    assert main(["eval", f"checkpoint={run / 'best.pt'}", f"out={tmp_path / 'ev'}"]) == 2
    assert "pass env=" in capsys.readouterr().err          # no simulator recorded: eval says so


def test_bad_episodes_are_refused_with_the_fix(tmp_path):
    rng = np.random.default_rng(1)
    e = episode(rng)
    with DatasetWriter(tmp_path / "d", **BOUNDS) as w:
        bad = [
            ({**e, "pixels": e["pixels"].astype(np.float32)}, "uint8"),
            ({**e, "pixels": e["pixels"][:, :8]}, "fit_frame"),
            ({**e, "action": e["action"][:-2]}, r"T - 1 = 11"),
            ({**e, "action": e["action"] * 3}, "outside the bounds"),
            ({**e, "action": np.where(np.arange(11)[:, None] == 4, np.nan, e["action"])}, "NaN"),
            ({**e, "state": e["state"][:5]}, "state must be"),
        ]
        for kw, match in bad:
            with pytest.raises(ValueError, match=match):
                w.add_episode(**kw)
        w.add_episode(**e)
        with pytest.raises(ValueError, match="same optional state"):
            w.add_episode(e["pixels"], e["action"])
        w.add_episode(e["pixels"], np.concatenate([e["action"], e["action"][:1]]), e["state"])  # T actions
        with pytest.raises(ValueError, match="3 dims here, 2 in earlier"):
            w.add_episode(e["pixels"], e["action"], np.c_[e["state"], e["state"][:, :1]])
    assert D.load_dataset(tmp_path / "d", columns=()).num_episodes == 2
    with pytest.raises(FileExistsError, match="resume=True"):
        DatasetWriter(tmp_path / "d", **BOUNDS)
    with pytest.raises(ValueError, match="control_hz differ"):
        DatasetWriter(tmp_path / "d", resume=True, **{**BOUNDS, "control_hz": 20.0})
    DatasetWriter(tmp_path / "e", **BOUNDS)                 # opened, killed before any episode ...
    with DatasetWriter(tmp_path / "e", resume=True, **BOUNDS) as w:     # ... resumes from nothing
        assert w.add_episode(**e) == 0
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="does not write"):
        DatasetWriter(tmp_path / "x", overwrite=True, **BOUNDS)
    (tmp_path / "y").mkdir()                                # looks like a dataset by its names only
    (tmp_path / "y" / "meta.json").write_text("{}")
    with pytest.raises(FileExistsError, match="has no .wm-output.json"):
        DatasetWriter(tmp_path / "y", overwrite=True, **BOUNDS)
    assert (tmp_path / "y" / "meta.json").read_text() == "{}"
    with DatasetWriter(tmp_path / "e", overwrite=True, **BOUNDS) as w:   # its own, marked: replaced
        assert w.add_episode(**e) == 0
    with pytest.raises(ValueError, match="among pose_dims"):
        DatasetWriter(tmp_path / "z", pose_dims=[0], angle_dims=[1], **BOUNDS)
    with pytest.raises(ValueError, match="low < high"):
        DatasetWriter(tmp_path / "y", **{**BOUNDS, "action_low": [1, 1]})


def test_killed_recording_keeps_its_episodes_and_resumes(tmp_path):
    """SIGKILL after 5 episodes (2 packed in a shard, 3 only staged): all 5 stay; resume appends."""
    out = tmp_path / "k"
    code = f"""
import os, signal, numpy as np, sys
sys.path.insert(0, {str(REPO / 'tests')!r})
from test_recorder import BOUNDS, episode
from worldmodel.data.recorder import DatasetWriter
w = DatasetWriter({str(out)!r}, shard_every=2, **BOUNDS)
rng = np.random.default_rng(2)
for _ in range(5):
    w.add_episode(**episode(rng))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9
    assert D.load_dataset(out, columns=()).num_episodes == 5          # staged episodes are readable
    rng = np.random.default_rng(2)
    eps = [episode(rng) for _ in range(6)]
    with DatasetWriter(out, shard_every=2, resume=True, **BOUNDS) as w:
        assert w.add_episode(**eps[5]) == 5
    ds = D.load_dataset(out, columns=("pixels", "state"))
    assert ds.ep_index.tolist() == list(range(6)) and json.loads((out / D.META).read_text())["episodes"] == 6
    for i in (0, 4, 5):
        np.testing.assert_array_equal(ds.episode(i)["pixels"], eps[i]["pixels"])
    assert not (out / D.STAGING).exists()


def test_fit_frame_crops_the_centre_square_and_averages():
    from worldmodel.report.video import fit_frame

    cam = np.zeros((48, 64, 3), np.uint8)
    cam[:, 8:56] = 200                               # the centre 48 x 48 square is bright, the sides dark
    cam[:24, 8:32] = 0                               # its top-left quarter dark again
    out = fit_frame(cam, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[:8, :8] == 0).all() and (out[8:, 8:] == 200).all()     # the crop dropped the sides
    assert fit_frame(cam[:, :, 0], 16).shape == (16, 16, 3)            # grey frames too
    with pytest.raises(ValueError, match="uint8"):
        fit_frame(cam.astype(np.float32), 16)
