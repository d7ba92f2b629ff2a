"""Fault injection (issue #36, docs/promises.md): every file kind the toolkit writes, damaged on
purpose (bits flipped, truncated, NaN weights, oversized declarations), a full disk, SIGTERM and
SIGKILL at random moments. Each fault is either survived with at most the promised loss or refused
in one line naming the file and the fix; nothing damaged is ever read as if it were whole.
"""
from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from worldmodel.config import from_dict
from worldmodel.data import dataset as D
from worldmodel.data.recorder import DatasetWriter
from worldmodel.model.checkpoint import CheckpointError, load_checkpoint, payload_digest, save_checkpoint
from worldmodel.model.world_model import ModelConfig, WorldModel

REPO = Path(__file__).resolve().parent.parent
MICRO = dict(encoder="vit", image_size=16, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2, enc_mlp=64,
             latent_dim=32, proj_hidden=64, frameskip=2, history=2, pred_depth=1, pred_heads=2,
             pred_head_dim=16, pred_mlp=64, action_hidden=32, pred_dropout=0.0, action_embed=10)
BOUNDS = dict(action_low=[-1.0, -1.0], action_high=[1.0, 1.0], control_hz=10.0, image_size=16)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = WorldModel(from_dict(ModelConfig, {**MICRO, "action_dim": 2}))
    opt = torch.optim.AdamW(model.parameters())
    model.loss(torch.randint(0, 255, (2, 3, 16, 16, 3), dtype=torch.uint8), torch.randn(2, 2, 4))["pred"].backward()
    opt.step()
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "best.pt", model, opt, step=3,
                           extra={"dataset_meta": {"env": "tworoom", "image_size": 16}, "rng": [torch.get_rng_state()]})


def records(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (offset of its bytes in the file, size) for every stored record of a torch zip file."""
    out = {}
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            h = info.header_offset
            n, m = int.from_bytes(raw[h + 26:h + 28], "little"), int.from_bytes(raw[h + 28:h + 30], "little")
            out[info.filename] = (h + 30 + n + m, info.compress_size)
    return out


def damaged_copy(src: Path, dst: Path, offsets, mask: int = 0x10) -> Path:
    raw = bytearray(src.read_bytes())
    for o in offsets:
        raw[o] ^= mask
    dst.write_bytes(bytes(raw))
    return dst


def resave(ckpt_path: Path, dst: Path, edit) -> Path:
    """A checkpoint edited by `edit(payload)` and saved with a fresh, matching digest: what only a
    deliberate writer (or a bug upstream of the save) could produce."""
    payload = torch.load(ckpt_path, weights_only=True)
    edit(payload)
    payload["digest"] = payload_digest(payload)
    torch.save(payload, dst)
    return dst


def test_bit_flips_in_a_checkpoints_tensors_are_refused(ckpt, tmp_path):
    """Issue #36: a best.pt with bytes flipped in its tensor records loaded and evaluated."""
    rng = random.Random(0)
    data = [(o, n) for name, (o, n) in records(ckpt).items() if "/data/" in name and n > 0]
    assert len(data) > 20                                  # model, optimiser and RNG tensors
    for k in range(24):
        o, n = rng.choice(data)
        bad = damaged_copy(ckpt, tmp_path / f"flip{k}.pt", [o + rng.randrange(n)], mask=1 << rng.randrange(8))
        with pytest.raises(CheckpointError, match="digest") as e:
            load_checkpoint(bad)
        assert str(bad) in one_line(e) and "another checkpoint" in str(e.value)
    o, n = max(data, key=lambda r: r[1])                   # 4 KB flipped in the largest tensor
    bad = damaged_copy(ckpt, tmp_path / "flip4k.pt", range(o, o + min(n, 4096)), mask=0xFF)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(bad)


def test_flips_in_a_checkpoints_structure_and_truncation_are_refused(ckpt, tmp_path):
    rng = random.Random(1)
    good = load_checkpoint(ckpt)
    o, n = next(v for k, v in records(ckpt).items() if k.endswith("data.pkl"))
    for k in range(16):                                    # the pickled structure: refused, or loads unchanged
        bad = damaged_copy(ckpt, tmp_path / f"pkl{k}.pt", [o + rng.randrange(n)], mask=1 << rng.randrange(8))
        try:
            assert payload_digest(load_checkpoint(bad)) == payload_digest(good)
        except CheckpointError as e:
            assert "\n" not in str(e)
    size = ckpt.stat().st_size
    for k, cut in enumerate(sorted(rng.sample(range(1, size), 8))):
        short = tmp_path / f"cut{k}.pt"
        short.write_bytes(ckpt.read_bytes()[:cut])
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(short)
        one_line(e)


def test_nan_weights_are_refused_by_name_at_save_and_at_load(ckpt, tmp_path):
    """Issue #36: a checkpoint whose weights were all NaN evaluated to "0%" without a word."""
    bad = resave(ckpt, tmp_path / "nan.pt", lambda p: next(iter(p["model"].values())).fill_(float("nan")))
    with pytest.raises(CheckpointError, match="NaN/Inf") as e:
        WorldModel.from_checkpoint(bad)
    assert str(bad) in one_line(e) and "earlier checkpoint" in str(e.value)
    model = WorldModel.from_checkpoint(ckpt)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(CheckpointError, match="refusing to save"):
        save_checkpoint(tmp_path / "nan2.pt", model)
    assert not list(tmp_path.glob("nan2.pt*"))


def test_an_oversized_declaration_is_refused_before_any_allocation(ckpt, tmp_path):
    """Issue #36: a 16 MB checkpoint whose config declared a huge model cost 2.8 GB before its refusal.
    The declared model is now checked on torch's meta device against the file's tensor shapes."""
    big = resave(ckpt, tmp_path / "big.pt",
                 lambda p: p["model_config"].update(enc_width=1024, enc_mlp=4096, enc_depth=4))
    t = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not match its model_config") as e:
        load_checkpoint(big)
    assert time.perf_counter() - t < 5 and str(big) in one_line(e)
    odd = resave(ckpt, tmp_path / "odd.pt", lambda p: p["model_config"].update(patch_size=7))
    with pytest.raises(CheckpointError, match="does not build a WorldModel"):
        load_checkpoint(odd)


def test_a_checkpoint_from_before_digests_loads_unchecked(ckpt, tmp_path):
    old = tmp_path / "old.pt"
    payload = torch.load(ckpt, weights_only=True)
    del payload["digest"]
    torch.save(payload, old)
    assert load_checkpoint(old)["step"] == 3


# ------------------------------------------------------------------------------------------------
# datasets: shards and staged episodes
# ------------------------------------------------------------------------------------------------
def record(out: Path, n: int = 3, T: int = 24, **kw) -> Path:
    rng = np.random.default_rng(0)
    with DatasetWriter(out, shard_every=n, **BOUNDS, **kw) as w:
        for _ in range(n):
            w.add_episode(rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
                          rng.uniform(-1, 1, (T - 1, 2)).astype(np.float32))
    return out


def chunk_spans(shard: Path, name: str) -> list[tuple[int, int]]:
    with h5py.File(shard, "r") as f:
        d = f[name].id
        return [(d.get_chunk_info(i).byte_offset, d.get_chunk_info(i).size) for i in range(d.get_num_chunks())]


@pytest.mark.parametrize("column,flip", [("pixels", 1), ("pixels", 4096), ("action", 1), ("ep_len", 1),
                                         ("ep_index", 1)])
def test_bit_flips_in_a_shard_are_refused(tmp_path, column, flip):
    """Issue #36: a shard with 4 KB of flipped pixel bytes trained. Every dataset in a shard is
    written with HDF5's fletcher32 checksum, verified on every read."""
    out = record(tmp_path / "d")
    shard = next(out.glob("shard_*.h5"))
    o, n = chunk_spans(shard, column)[0]
    damaged_copy(shard, shard, range(o + 8, o + 8 + min(flip, n - 16)), mask=0x5A)
    with pytest.raises(ValueError, match="is damaged") as e:
        D.load_dataset(out, columns=("pixels", "action"))
    assert shard.name in one_line(e) and "re-collect" in str(e.value)


def test_damaged_shard_metadata_and_truncated_shards_are_one_line_refusals(tmp_path):
    out = record(tmp_path / "d")
    shard = next(out.glob("shard_*.h5"))
    with h5py.File(shard, "r+") as f:
        f.attrs["wm_meta"] = '{"format": "wm-hdf5-v1", "key": '          # cut short
    with pytest.raises(ValueError, match="is damaged") as e:
        D.load_dataset(out)
    assert shard.name in one_line(e)
    with h5py.File(shard, "r+") as f:                                   # a table declaring 10**12 episodes
        del f.attrs["wm_meta"], f["ep_seed"]
        f.create_dataset("ep_seed", shape=(10 ** 12,), dtype=np.int64)   # (nothing allocated: no data written)
    with pytest.raises(ValueError, match="declares") as e:
        D.load_dataset(out)
    assert shard.name in one_line(e)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable HDF5") as e:
        D.load_dataset(out)
    assert shard.name in one_line(e) and "re-collect" in str(e.value)


def test_damaged_staged_episodes_are_refused_when_read_and_when_packed(tmp_path):
    """Issue #36: a truncated staged episode on resume gave a long traceback."""
    rng = np.random.default_rng(0)
    out = tmp_path / "d"
    w = DatasetWriter(out, shard_every=100, **BOUNDS)
    for _ in range(2):
        w.add_episode(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), rng.uniform(-1, 1, (11, 2)))
    staged = sorted((out / D.STAGING).glob("ep_*.npz"))                # killed before close(): both staged
    raw = bytearray(staged[0].read_bytes())
    raw[len(raw) // 2] ^= 0x40                                          # inside the pixels member
    staged[0].write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="staged episode .* is damaged") as e:
        D.load_dataset(out)
    assert "resume=true" in one_line(e)
    staged[1].write_bytes(staged[1].read_bytes()[:300])                 # truncated
    with pytest.raises(ValueError, match="staged episode .* is damaged") as e:
        DatasetWriter(out, resume=True, **BOUNDS)
    one_line(e)


def test_a_dataset_larger_than_the_memory_is_refused_before_it_is_read(tmp_path, monkeypatch):
    out = record(tmp_path / "d")
    monkeypatch.setattr("worldmodel.machine.available_memory", lambda: 10_000)
    with pytest.raises(ValueError, match="needs .* GiB of memory .* data.episodes=N") as e:
        D.load_dataset(out)
    one_line(e)


# ------------------------------------------------------------------------------------------------
# a full disk
# ------------------------------------------------------------------------------------------------
def enospc(*a, **kw):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_saving_a_checkpoint_keeps_the_earlier_one(ckpt, tmp_path, monkeypatch):
    model = WorldModel.from_checkpoint(ckpt)
    path = save_checkpoint(tmp_path / "last.pt", model, step=1)
    before = path.read_bytes()
    monkeypatch.setattr("worldmodel.model.checkpoint.torch.save", enospc)
    with pytest.raises(OSError, match="disk full writing .*last.pt .* MiB free") as e:
        save_checkpoint(path, model, step=2)
    assert "resume=true" in one_line(e) and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]    # no temporary left behind


def test_disk_full_while_recording_keeps_every_staged_episode(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    out = tmp_path / "d"
    w = DatasetWriter(out, shard_every=100, **BOUNDS)
    for _ in range(2):
        w.add_episode(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), rng.uniform(-1, 1, (11, 2)))
    real = h5py.File
    monkeypatch.setattr(h5py, "File", lambda p, mode="r", **kw: enospc() if mode == "w" else real(p, mode, **kw))
    with pytest.raises(OSError, match="disk full writing .*shard_00000.h5") as e:
        w.close()
    one_line(e)
    monkeypatch.setattr(np, "savez", enospc)
    with pytest.raises(OSError, match="disk full writing .*ep_00000002.npz"):
        w.add_episode(rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8), rng.uniform(-1, 1, (11, 2)))
    monkeypatch.undo()
    assert not list(out.rglob("*.tmp"))
    with DatasetWriter(out, resume=True, **BOUNDS):                    # space again: nothing was lost
        pass
    assert D.load_dataset(out, columns=()).num_episodes == 2


def test_disk_full_while_writing_json_leaves_the_old_file(tmp_path, monkeypatch):
    from worldmodel import io

    path = io.write_json_atomic(tmp_path / "meta.json", {"a": 1})
    monkeypatch.setattr(io.json, "dump", enospc)
    with pytest.raises(OSError, match="disk full writing") as e:
        io.write_json_atomic(path, {"a": 2})
    one_line(e)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": 1} and not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------
# training: SIGTERM, SIGKILL, a full disk
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from test_clips import write_dataset

    return write_dataset(tmp_path_factory.mktemp("data") / "d", [24] * 10, image_size=16, shards=2)


def train_cfg(data: Path, out: Path, **kw) -> dict:
    return {"model": dict(MICRO), "data": {"path": str(data), "val_fraction": 0.2}, "out": str(out), "steps": 12,
            "batch_size": 8, "lr": 1e-3, "eval_every": 4, "ckpt_every": 4, "log_every": 2, "tensorboard": False,
            "plots": False, "progress": False, "threads": 1, **kw}


def run(d: dict) -> dict:
    from worldmodel.training.config import TrainConfig
    from worldmodel.training.trainer import train

    return train(from_dict(TrainConfig, d))


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "r"
    run(train_cfg(data, out))
    return out / "last.pt"


def test_sigterm_saves_the_step_and_the_run_resumes_bit_exactly(data, straight, tmp_path, monkeypatch):
    """Issue #36: SIGTERM (what schedulers and service managers send) saved nothing in `wm train`."""
    from worldmodel.training.trainer import Trainer

    before = signal.getsignal(signal.SIGTERM)
    step = Trainer.train_step

    def then_term(self):
        step(self)
        if self.step == 6:                                              # between checkpoints (4, 8)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Trainer, "train_step", then_term)
    with pytest.raises(KeyboardInterrupt):
        run(train_cfg(data, tmp_path / "r"))
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == before                  # the caller's handler is back
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 6
    assert run(train_cfg(data, tmp_path / "r", resume=True))["start_step"] == 6
    same_weights(straight, tmp_path / "r" / "last.pt")


def test_sigkill_at_a_random_moment_loses_at_most_the_steps_since_the_last_checkpoint(data, straight, tmp_path):
    out = tmp_path / "r"
    cfg = train_cfg(data, out, steps=12, ckpt_every=1, eval_every=4)
    code = ("import json, sys; sys.path.insert(0, 'tests'); from test_faults import run; "
            f"run(json.loads({json.dumps(json.dumps(cfg))}))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 600                                       # however slow the machine's start-up
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    delay = random.uniform(0.0, 0.3)                                  # anywhere after the first save
    time.sleep(delay)
    proc.kill()
    err = proc.communicate()[1].decode()
    assert proc.returncode in (-signal.SIGKILL, 0), err
    saved = max(load_checkpoint(p)["step"] for p in (out / "last.pt", out / "best.pt") if p.exists())
    res = run({**cfg, "resume": True})
    assert res["start_step"] == saved, f"killed {delay:.3f} s after the first save"
    assert res["step"] == 12
    same_weights(straight, out / "last.pt")


def test_disk_full_during_training_is_one_line_and_the_run_resumes(data, straight, tmp_path, monkeypatch, capsys):
    from worldmodel.cli import main
    from worldmodel.model import checkpoint

    saves = []
    real = checkpoint.torch.save

    def fill_up(obj, f):
        saves.append(1)
        if len(saves) > 2:
            enospc()
        real(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", fill_up)
    out = tmp_path / "r"
    args = ["train", *(f"model.{k}={v}" for k, v in MICRO.items()), f"data={data}", "data.val_fraction=0.2",
            f"out={out}", "steps=12", "batch_size=8", "lr=0.001", "eval_every=4", "ckpt_every=4", "log_every=2",
            "tensorboard=false", "plots=false", "progress=false", "threads=1"]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "note:" not in line]
    assert len(err) == 1 and "disk full writing" in err[0] and "resume=true" in err[0]
    monkeypatch.undo()
    assert not list(out.glob("*.tmp"))
    assert main([*args, "resume=true"]) == 0
    same_weights(straight, out / "last.pt")


def test_a_model_larger_than_the_memory_is_refused_before_it_is_built(data, tmp_path, monkeypatch):
    monkeypatch.setattr("worldmodel.machine.available_memory", lambda: 4096)
    monkeypatch.setattr("worldmodel.data.dataset.check_memory", lambda *a: None)
    with pytest.raises(ValueError, match="training state needs .* smaller model") as e:
        run(train_cfg(data, tmp_path / "r"))
    one_line(e)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# settings and planning invariants
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["weight_decay=inf", "open_loop_weight=nan", "lr=inf", "grad_clip=nan",
                                 "data.val_fraction=nan"])
def test_non_finite_training_settings_are_refused_by_name(tmp_path, capsys, key):
    """Issue #36: weight_decay=inf and open_loop_weight=nan passed and failed at step 1 advising "Lower lr"."""
    from worldmodel.cli import main

    assert main(["train", "data=nowhere", f"out={tmp_path / 'r'}", key]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key.split("=")[0].split(".")[-1] in err and "finite" in err
    assert not (tmp_path / "r").exists()


class NaNWorld:
    """A GoalEnergyLike whose every cost is NaN (as a model with NaN weights gives)."""

    def set_goal(self, goal):
        pass

    def set_observation(self, obs_history, past_actions):
        pass

    def __call__(self, actions):                                       # (B, S, H, A) -> (B, S)
        return actions.sum((-1, -2)) * float("nan")


@pytest.mark.parametrize("planner", ["cem", "icem", "mppi", "gradient"])
def test_an_energy_nan_for_every_candidate_is_refused_not_acted_on(planner):
    """Issue #36: MPCController.act returned [0, 0] from every planner on an all-NaN energy."""
    from worldmodel.planners import MPCController, make_planner

    kw = {"elites": 4} if planner != "gradient" else {}
    ctrl = MPCController(make_planner(planner, samples=16, iterations=2, **kw), NaNWorld(), ([-1.0, -1.0], [1.0, 1.0]),
                         horizon=2, receding_horizon=1)
    ctrl.reset(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="NaN or Inf for every candidate") as e:
        ctrl.act(np.zeros(2, np.float32))
    assert planner in one_line(e)


def test_bounds_with_no_float32_value_inside_are_refused():
    """Issue #36: a float64 controller on [0.1, 0.100000001] returned 0.0999999940, below its bound."""
    from worldmodel.planners import MPCController, make_planner
    from worldmodel.planners.base import float32_box

    with pytest.raises(ValueError, match="hold no float32 value") as e:
        MPCController(make_planner("cem", samples=16, iterations=2, elites=4), NaNWorld(), ([0.1], [0.100000001]),
                      horizon=2, receding_horizon=1, dtype=torch.float64)
    one_line(e)
    lo, hi = float32_box([0.1, -1.0], [0.1000001, 1.0])               # narrow but representable
    assert (lo.astype(np.float64) >= [0.1, -1.0]).all() and (hi.astype(np.float64) <= [0.1000001, 1.0]).all()
    assert (lo <= hi).all()
