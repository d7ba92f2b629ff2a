"""`wm train`: exact resume, kill -9 recovery, NaN stop, data/model fit checks, DDP on 2 CPU ranks."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_clips import write_dataset
from worldmodel.model.checkpoint import load_checkpoint
from worldmodel.config import from_dict
from worldmodel.training.logger import read_metrics
from worldmodel.model.world_model import ModelConfig, WorldModel
from worldmodel.training.step import build_optimizer, clip_loss, train_step
from worldmodel.training.config import TrainConfig
from worldmodel.training.run_dir import check_resume
from worldmodel.training.trainer import DivergedError, train

REPO = Path(__file__).resolve().parent.parent
# A model small enough for ~10 ms steps on 2 CPU cores (16 px frames, 4 patches, 1+1 blocks).
MICRO = dict(encoder="vit", image_size=16, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2, enc_mlp=64,
             latent_dim=32, proj_hidden=64, frameskip=2, history=2, pred_depth=1, pred_heads=2,
             pred_head_dim=16, pred_mlp=64, action_hidden=32, pred_dropout=0.1, action_embed=10)
# Every model field is spelled out, so the CLI path (YAML preset + these overrides) and make_cfg
# (dataclass defaults + these) build the same model whatever the preset's values are.


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "d", [24] * 10, image_size=16, shards=2)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP barriers make tiny ops 5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_cfg(data_path: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model=dict(MICRO), data=dict(path=str(data_path), val_fraction=0.2), out=str(out),
                steps=16, batch_size=8, lr=1e-3, eval_every=8, ckpt_every=8, log_every=4,
                tensorboard=False, plots=False, progress=False)
    for k, v in kw.items():
        if k in ("model", "data"):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return from_dict(TrainConfig, base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{k} differs"


def test_run_writes_outputs_and_metrics(data, tmp_path):
    res = train(make_cfg(data, tmp_path / "r", plots=True))
    for key in ("val_pred", "val_nochange", "eff_rank", "std_min", "val_sigreg", "loss", "probe_r2"):
        assert key in res and res[key] == res[key], key              # present and not NaN
    assert res["step"] == 16
    out = tmp_path / "r"
    assert {"last.pt", "best.pt", "config.json", "metrics.csv", "curves.png"} <= {p.name for p in out.iterdir()}
    ck = load_checkpoint(out / "last.pt")
    assert ck["step"] == 16 and ck["model_config"]["action_dim"] == 2      # filled from the data
    rows = read_metrics(out)
    assert [int(r["step"]) for r in rows if r["loss"]] == [4, 8, 12, 16]
    with pytest.raises(FileExistsError, match="resume=true"):
        train(make_cfg(data, out))


def test_resume_is_bit_exact(data, tmp_path):
    train(make_cfg(data, tmp_path / "straight"))
    train(make_cfg(data, tmp_path / "split", stop_at=8))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 8
    train(make_cfg(data, tmp_path / "split", resume=True))
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["optimizer"]["state"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(a[i]["exp_avg"], b[i]["exp_avg"]) for i in a)
    steps = [int(r["step"]) for r in read_metrics(tmp_path / "split") if r["loss"]]
    assert steps == [4, 8, 12, 16]                                   # no duplicated rows
    # A resume that changes what the checkpoint fixes (lr, batch, split, ...) is refused, naming it;
    # the run is left as it was.
    before = load_checkpoint(tmp_path / "split" / "last.pt")["step"]
    with pytest.raises(ValueError, match=r"'lr': \(0\.001, 0\.0003\).*overwrite=true"):
        train(make_cfg(data, tmp_path / "split", resume=True, steps=24, lr=3e-4))
    with pytest.raises(ValueError, match=r"data\.val_fraction"):
        train(make_cfg(data, tmp_path / "split", resume=True, steps=24, data=dict(val_fraction=0.3)))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == before
    train(make_cfg(data, tmp_path / "split", resume=True, steps=20))     # more steps: allowed
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 20


def _micro_model() -> WorldModel:
    """The MICRO model without dropout, from seed 0 (the same weights at every call)."""
    torch.manual_seed(0)
    return WorldModel(from_dict(ModelConfig, {**MICRO, "pred_dropout": 0.0, "action_dim": 2}))


def _micro_step(cfg: TrainConfig, batches: list) -> tuple[list[float], dict[str, torch.Tensor]]:
    """One train_step of a fresh MICRO model (seed 0) on `batches`; its stats and new parameters
    (not the BatchNorm running statistics, which each batch's forward moves)."""
    model = _micro_model()
    opt, sched = build_optimizer(model, cfg)
    stats = train_step(clip_loss(model, cfg), model, opt, sched, batches, cfg, 0, contextlib.nullcontext())
    return stats.tolist(), {k: v.detach().clone() for k, v in model.named_parameters()}


def _micro_clips(seed: int, n: int, b: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n random MICRO clip batches of b (history 2 + 1 predicted frame), the same for the same seed."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (b, 3, 16, 16, 3), generator=g, dtype=torch.uint8),
             torch.randn(b, 2, 4, generator=g)) for _ in range(n)]     # (b, T, H, W, 3), (b, T-1, 2A)


def test_accumulated_step_averages_its_batches(data, tmp_path):
    """accum_steps=k: one optimiser step on the mean of k batches' gradients (each batch with its own
    BatchNorm statistics and SIGReg directions, drawn in turn from the step's generator; SIGReg
    counted at the step's k x batch_size)."""
    one, two = _micro_clips(1, 2)
    cfg = make_cfg(data, tmp_path, grad_clip=1e9)                      # no clipping: norms comparable
    acc = dataclasses.replace(cfg, accum_steps=2)
    s1, _ = _micro_step(cfg, [one])
    s2, _ = _micro_step(cfg, [two])
    s12, _ = _micro_step(acc, [one, two])
    s11, _ = _micro_step(acc, [one, one])
    # Reported loss terms: the batches' mean (SIGReg: the second batch draws new directions).
    assert s12[1] == pytest.approx((s1[1] + s2[1]) / 2, rel=1e-5)            # prediction loss
    assert s11[1] == pytest.approx(s1[1], rel=1e-5) and s11[2] != s1[2]
    # Each batch's SIGReg statistic (reported unscaled) counts at the step's N = 2 x 8 in the loss.
    lam = cfg.sigreg_weight
    assert s1[0] == pytest.approx(s1[1] + lam * s1[2], rel=1e-5)
    assert s12[0] == pytest.approx(s12[1] + lam * 2 * s12[2], rel=1e-5)
    # Without SIGReg the same batch twice is exactly one step on it, and the accumulated
    # gradient's norm is that of the two batches' mean gradient.
    cfg0, acc0 = (dataclasses.replace(c, sigreg_weight=0.0) for c in (cfg, acc))
    (s1, w1), (s11, w11) = _micro_step(cfg0, [one]), _micro_step(acc0, [one, one])
    assert s11[3] == pytest.approx(s1[3], rel=1e-5)
    assert all(torch.allclose(w1[k], w11[k], atol=1e-6) for k in w1)
    grads = []
    for pixels, actions in (one, two):
        model = _micro_model()
        model.loss(pixels, actions)["pred"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert _micro_step(acc0, [one, two])[0][3] == pytest.approx(((grads[0] + grads[1]) / 2).norm().item(), rel=1e-4)
    with pytest.raises(ValueError, match="accum_steps must be >= 1, got 0"):
        make_cfg(data, tmp_path, accum_steps=0)
    for bad, said in ((dict(sigreg_directions=0), "sigreg_directions must be >= 1"),
                      (dict(threads=-3), "threads must be >= 0"), (dict(stop_at=0), "stop_at must be >= 1"),
                      (dict(warmup_steps=-5), "warmup_steps must be >= 0"),
                      (dict(min_lr_ratio=5.0), r"min_lr_ratio must be in \[0, 1\]"),
                      (dict(bn_calibration_batches=-1), "bn_calibration_batches must be >= 0")):
        with pytest.raises(ValueError, match=said):
            make_cfg(data, tmp_path, **bad)


def test_accumulated_training_resumes_bit_exactly(data, tmp_path):
    kw = dict(accum_steps=2, steps=8, eval_every=4, ckpt_every=4, log_every=2)
    res = train(make_cfg(data, tmp_path / "straight", **kw))
    assert res["step"] == 8
    train(make_cfg(data, tmp_path / "split", stop_at=4, **kw))
    train(make_cfg(data, tmp_path / "split", resume=True, **kw))
    assert_same_weights(tmp_path / "straight" / "last.pt", tmp_path / "split" / "last.pt")
    with pytest.raises(ValueError, match=r"'accum_steps': \(2, 1\)"):
        train(make_cfg(data, tmp_path / "split", resume=True, **{**kw, "accum_steps": 1, "steps": 12}))


def test_open_loop_weight_trains_on_rollouts_and_is_refused_without_predicted_frames(data, tmp_path):
    with pytest.raises(ValueError, match="data.n_preds >= 2"):
        make_cfg(data, tmp_path / "bad", open_loop_weight=1.0)                # n_preds 1: refused
    assert not (tmp_path / "bad").exists()
    res = train(make_cfg(data, tmp_path / "ol", open_loop_weight=1.0, data=dict(n_preds=3)))
    assert res["open_loop"] > 0 and res["loss"] > res["pred"]                 # the term is in the loss
    assert 0 < res["val_open_loop"] < math.inf and 0 < res["val_open_loop_ratio"] < math.inf
    rows = [r for r in read_metrics(tmp_path / "ol") if r["loss"]]
    assert all(float(r["open_loop"]) > 0 for r in rows)
    with pytest.raises(ValueError, match="open_loop_weight"):                 # fixed across a resume
        train(make_cfg(data, tmp_path / "ol", resume=True, steps=20, open_loop_weight=0.5, data=dict(n_preds=3)))
    # A checkpoint written before these settings existed resumes with their defaults.
    ck = load_checkpoint(tmp_path / "ol" / "last.pt")
    for k in ("open_loop_weight", "open_loop_detach"):
        del ck["extra"]["config"][k]
    check_resume(ck, ModelConfig(**ck["model_config"]), make_cfg(data, tmp_path / "ol", data=dict(n_preds=3)),
                 tmp_path / "ol" / "last.pt")


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    import worldmodel.training.step as T

    calls = {"n": 0}
    forward = T._ClipLoss.forward

    def poisoned(self, pixels, actions):
        pred, ol, z = forward(self, pixels, actions)
        calls["n"] += 1
        return (pred * float("nan") if calls["n"] > 10 else pred), ol, z

    monkeypatch.setattr(T._ClipLoss, "forward", poisoned)
    with pytest.raises(DivergedError, match="NaN/Inf.*last good checkpoint"):
        train(make_cfg(data, tmp_path / "r", steps=40, ckpt_every=8, log_every=1, eval_every=100))
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["step"] == 8
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_refuses_data_that_does_not_fit(data, tmp_path):
    with pytest.raises(ValueError, match="model.image_size=16"):
        train(make_cfg(data, tmp_path / "a", model=dict(image_size=32)))
    with pytest.raises(ValueError, match=r"model.image_size=16 with a model.patch_size dividing it \(e.g. 2"):
        train(make_cfg(data, tmp_path / "a", model=dict(image_size=28, patch_size=14)))   # lewm's patch
    with pytest.raises(ValueError, match="longer episodes"):
        train(make_cfg(data, tmp_path / "b", model=dict(frameskip=12)))
    with pytest.raises(ValueError, match="data=PATH"):
        train(make_cfg(data, tmp_path / "c", data=dict(path=None)))
    assert not (tmp_path / "a").exists()                             # refused before any output
    for flag in ("overwrite", "resume"):                              # a dataset's files are not a run's
        with pytest.raises(FileExistsError, match="is a dataset"):
            train(make_cfg(data, data, **{flag: True}))
    assert (data / "meta.json").exists()


def test_refuses_out_of_bounds_actions_and_a_batch_above_the_clip_count(tmp_path, capsys):
    import h5py
    import json

    from worldmodel.cli import main

    d = write_dataset(tmp_path / "d", [24] * 4, image_size=16)
    with h5py.File(d / "shard_00000.h5", "r+") as f:
        f["action"][30] = [float("nan"), 0.0]                         # inside episode 1
    with pytest.raises(ValueError, match="batch_size<="):
        train(make_cfg(d, tmp_path / "a", batch_size=4096))
    meta = json.loads((d / "meta.json").read_text())
    meta["action_low"], meta["action_high"] = [-50.0, -50.0], [50.0, 50.0]   # actions are (row, -row): rows 51-94 but for the NaN row 71
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"outside the recorded bounds .* \(first: episode 2, step 3\)"):
        train(make_cfg(d, tmp_path / "a"))
    assert not (tmp_path / "a").exists()                             # refused before any output
    capsys.readouterr()
    assert main(["inspect", str(d), "json=true", "metrics=false"]) == 0
    ap = json.loads(capsys.readouterr().out)["action_problems"]
    assert ap == {"nonfinite": 1, "out_of_bounds": 43, "first_out_of_bounds": [2, 3]}
    assert main(["inspect", str(d), "metrics=false"]) == 0
    text = capsys.readouterr().out
    assert "1 action rows inside episodes are NaN" in text and "43 action rows lie outside" in text


def _cli(data: Path, out: Path, *extra: str) -> list[str]:
    model = [f"model.{k}={v}" for k, v in MICRO.items()]
    return [sys.executable, "-m", "worldmodel.cli", "train", f"data={data}", f"out={out}", *model,
            "batch_size=8", "data.val_fraction=0.2", "tensorboard=false", "progress=false",
            "eval_every=1000", "log_every=5", *extra]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "configs" / "model" / "tiny.yaml").exists(),
                    reason="the CLI path composes configs/model/tiny.yaml, which is not written yet")
def test_kill9_then_resume_continues_from_checkpoint(data, tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    args = _cli(data, out, "steps=3000", "ckpt_every=5")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not (out / "last.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.2)                                                  # let it run past the checkpoint
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, log
    killed_at = load_checkpoint(out / "last.pt")["step"]
    assert 0 < killed_at < 3000
    # resume in-process (same code path as the CLI after config loading; saves a torch start-up)
    res = train(make_cfg(data, out, steps=3000, ckpt_every=5, eval_every=1000, log_every=5, resume=True,
                       stop_at=killed_at + 5))
    assert res["step"] == killed_at + 5
    assert load_checkpoint(out / "last.pt")["step"] == killed_at + 5
    steps = [int(r["step"]) for r in read_metrics(out) if r["loss"]]
    assert steps == sorted(set(steps)) and steps[-1] == killed_at + 5


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_last_pt_and_resume_continues(data, tmp_path, sig):
    """Ctrl-C (or SIGTERM, what schedulers send) between checkpoints: the step finishes, last.pt is
    saved at it, the run stops (130)."""
    out = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(data, out, "steps=3000", "ckpt_every=100000", "log_every=1"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while not (out / "metrics.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)                                                  # some steps, no checkpoint yet
    assert not (out / "last.pt").exists()
    proc.send_signal(sig)
    log = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130 and "resume=true continues from it" in log, log
    stopped_at = load_checkpoint(out / "last.pt")["step"]
    assert 0 < stopped_at < 3000
    res = train(make_cfg(data, out, steps=3000, ckpt_every=5, eval_every=1000, log_every=5, resume=True,
                       stop_at=stopped_at + 2))
    assert res["start_step"] == stopped_at and res["step"] == stopped_at + 2


def test_one_training_per_out_at_a_time(data, tmp_path):
    from worldmodel.io import exclusive_lock

    out = tmp_path / "r"
    out.mkdir()
    held = exclusive_lock(out / ".train.lock", "held by the test")   # as a running `wm train` holds it
    with pytest.raises(FileExistsError, match="another `wm train` is writing"):
        train(make_cfg(data, out, steps=2, resume=True))
    held.close()
    assert train(make_cfg(data, out, steps=2, eval_every=2, ckpt_every=2, log_every=2))["step"] == 2


def test_resume_continues_from_best_pt_when_it_is_the_newer(data, tmp_path):
    """Issue #36: a kill -9 between an improving step's best.pt and its last.pt left a run that could
    only restart from zero, though best.pt holds the whole trainer state: resume=true takes the newer."""
    kw = dict(steps=6, eval_every=2, ckpt_every=4, log_every=2)
    train(make_cfg(data, tmp_path / "straight", **kw))
    out = tmp_path / "r"
    train(make_cfg(data, out, stop_at=2, **kw))                   # improving step 2: best.pt, then last.pt
    assert load_checkpoint(out / "best.pt")["step"] == 2
    (out / "last.pt").unlink()                                    # killed between the two saves
    assert train(make_cfg(data, out, resume=True, stop_at=4, **kw))["start_step"] == 2
    stale = (out / "last.pt").read_bytes()                        # step 4
    train(make_cfg(data, out, resume=True, stop_at=6, **kw))
    if load_checkpoint(out / "best.pt")["step"] == 6:             # last.pt behind best.pt: best.pt wins
        (out / "last.pt").write_bytes(stale)
        assert train(make_cfg(data, out, resume=True, stop_at=6, **kw))["start_step"] == 6
    assert_same_weights(tmp_path / "straight" / "last.pt", out / "last.pt")


def test_overwrite_deletes_only_a_run_wm_train_marked(data, tmp_path):
    """Issue #36: overwrite=true deleted a foreign config.json and tb/. It now needs the run's marker."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text('{"mine": 1}')
    (out / "tb").mkdir()
    with pytest.raises(FileExistsError, match=r"\.wm-output\.json"):
        train(make_cfg(data, out, steps=2, overwrite=True))
    assert (out / "config.json").read_text() == '{"mine": 1}' and (out / "tb").is_dir()
    run = tmp_path / "run"
    train(make_cfg(data, run, steps=2, eval_every=2, ckpt_every=2, log_every=2))
    (run / "notes.txt").write_text("kept")
    assert train(make_cfg(data, run, steps=2, eval_every=2, ckpt_every=2, log_every=2, overwrite=True))["step"] == 2
    assert (run / "notes.txt").read_text() == "kept"              # not the run's: never deleted


def _gloo_rank(rank: int, port: int, body, args: tuple) -> None:
    """One of two gloo ranks on loopback: `body(rank, *args)` inside the process group."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        body(rank, *args)
    finally:
        dist.destroy_process_group()


def _on_two_gloo_ranks(body, *args) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_gloo_rank, args=(port, body, args), nprocs=2, join=True, start_method="fork")


def _ddp_worker(rank: int, data: str, out: str, ret: str) -> None:
    cfg = make_cfg(Path(data), Path(out), steps=6, eval_every=6, ckpt_every=6, log_every=2)
    res = train(cfg)
    torch.save({"val_pred": res["val_pred"], "in_sync": res["ddp_in_sync"]}, f"{ret}.{rank}")


@pytest.mark.slow
def test_ddp_two_cpu_ranks_stay_in_sync(data, tmp_path):
    ret = str(tmp_path / "ret")
    _on_two_gloo_ranks(_ddp_worker, str(data), str(tmp_path / "r"), ret)
    r0, r1 = torch.load(f"{ret}.0"), torch.load(f"{ret}.1")
    assert r0["in_sync"] and r1["in_sync"]                           # identical weights on both ranks
    assert r0["val_pred"] == r1["val_pred"]                          # eval all-reduced: same on ranks
    ck = load_checkpoint(tmp_path / "r" / "last.pt")
    assert ck["step"] == 6 and len(ck["extra"]["rng"]) == 2          # both ranks' RNG saved
    assert [int(r["step"]) for r in read_metrics(tmp_path / "r") if r["loss"]] == [2, 4, 6]


def _accum_ddp_worker(rank: int, data: str, ret: str) -> None:
    """One accumulated step (2 batches) under 2-rank DDP; counts DDP's gradient all-reduces."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    cfg = make_cfg(Path(data), Path(ret).parent, grad_clip=1e9, sigreg_weight=0.0)
    calls = []

    def counted(state, bucket):
        calls.append(1)
        return allreduce_hook(state, bucket)

    counts = {}
    for k in (1, 2):
        model = _micro_model()
        opt, sched = build_optimizer(model, cfg)
        ddp = torch.nn.parallel.DistributedDataParallel(clip_loss(model, cfg))
        ddp.register_comm_hook(None, counted)
        calls.clear()
        train_step(ddp, model, opt, sched, _micro_clips(rank, k), dataclasses.replace(cfg, accum_steps=k),
                   0, contextlib.nullcontext())
        counts[k] = len(calls)
    torch.save({"counts": counts, "weights": {n: p.detach().clone() for n, p in model.named_parameters()}},
               f"{ret}.{rank}")


@pytest.mark.slow
def test_ddp_accumulation_all_reduces_once_per_step_and_averages_every_batch(data, tmp_path):
    """accum_steps=2 on 2 ranks: the earlier batch's backward runs under no_sync (as many gradient
    all-reduces as a step without accumulation), and the step equals one process's step on all
    four batches' mean gradient (SIGReg off: its global-batch statistic is not a per-batch mean)."""
    ret = str(tmp_path / "ret")
    _on_two_gloo_ranks(_accum_ddp_worker, str(data), ret)
    r0, r1 = torch.load(f"{ret}.0"), torch.load(f"{ret}.1")
    assert r0["counts"][2] == r0["counts"][1] >= 1
    cfg = make_cfg(data, tmp_path, grad_clip=1e9, sigreg_weight=0.0, accum_steps=4)
    _, ref = _micro_step(cfg, _micro_clips(0, 2) + _micro_clips(1, 2))
    for w in (r0["weights"], r1["weights"]):
        assert all(torch.allclose(w[k], ref[k], atol=1e-6) for k in ref)


def test_host_allocator_tuning_applies_on_glibc_and_can_be_switched_off(monkeypatch):
    from worldmodel.machine import keep_freed_host_memory

    monkeypatch.setenv("WM_MALLOC_TUNING", "0")
    assert keep_freed_host_memory() is False
    monkeypatch.delenv("WM_MALLOC_TUNING")
    glibc = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None
    assert keep_freed_host_memory() is glibc


def test_state_probe_reads_a_linearly_coded_state_and_not_noise():
    from worldmodel.training.validation import state_probe

    g = torch.Generator().manual_seed(0)
    states = torch.randn(200, 4, 3, generator=g, dtype=torch.float64)          # (M, T, S)
    z = states @ torch.randn(3, 16, generator=g, dtype=torch.float64)          # (M, T, D)
    z = z + 0.01 * torch.randn(z.shape, generator=g, dtype=torch.float64)
    assert state_probe(z.float(), states.numpy())["probe_r2"] > 0.99
    noise = torch.randn(200, 4, 16, generator=g)
    assert state_probe(noise, states.numpy())["probe_r2"] < 0.1


def test_compile_mode_is_validated_and_cuda_graphs_refused_under_ddp(data, tmp_path):
    from worldmodel.training.trainer import check_compile

    with pytest.raises(ValueError, match="compile_mode must be one of"):
        make_cfg(data, tmp_path, compile=True, compile_mode="fast")
    graphs = make_cfg(data, tmp_path, compile=True, compile_mode="reduce-overhead")
    with pytest.raises(ValueError, match="under torchrun use compile_mode=default"):
        check_compile(graphs, world=2)
    check_compile(graphs, world=1)
    check_compile(make_cfg(data, tmp_path, compile=True), world=2)


def _compiled_matches_eager(data: Path, tmp_path: Path, device: str) -> None:
    kw = dict(steps=4, eval_every=4, ckpt_every=4, device=device)
    eager = train(make_cfg(data, tmp_path / "eager", **kw))
    compiled = train(make_cfg(data, tmp_path / "compiled", compile=True, compile_mode="reduce-overhead", **kw))
    rel = 1e-3 if device == "cpu" else 3e-2                            # fp32 / bf16 autocast
    for k in ("loss", "pred", "sigreg"):                               # the same computation
        assert compiled[k] == pytest.approx(eager[k], rel=rel), k
    assert compiled["step"] == 4 and (tmp_path / "compiled" / "best.pt").exists()


@pytest.mark.slow
def test_compiled_training_matches_eager_on_cpu(data, tmp_path):
    """compile=true compile_mode=reduce-overhead through `run` (on CPU inductor skips the CUDA
    graphs, but the compiled step and the per-step cudagraph_mark_step_begin are exercised)."""
    _compiled_matches_eager(data, tmp_path, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_training_with_cuda_graphs_matches_eager(data, tmp_path):
    _compiled_matches_eager(data, tmp_path, "cuda")


def test_collapse_note_flags_collapse_and_shrinking_not_healthy_latents():
    from worldmodel.training.validation import collapse_note

    assert "COLLAPSED" in collapse_note({"std_mean": 2.3e-5})        # CPU TwoRoom, sigreg_weight=0
    assert "SHRINKING" in collapse_note({"std_mean": 0.031})          # full Push-T, sigreg_weight=0
    assert collapse_note({"std_mean": 0.9}) == ""                      # sigreg_weight=0.09 runs
