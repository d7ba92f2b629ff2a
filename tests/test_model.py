"""WorldModel: presets, shapes, causality, AdaLN-zero init, cached rollout == naive, checkpoints."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml

from worldmodel.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from worldmodel.config import from_dict
from worldmodel.model.world_model import ModelConfig, WorldModel

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"

# A very small model: the properties under test do not depend on size.
SMALL = dict(image_size=32, patch_size=8, enc_width=32, enc_depth=2, enc_heads=2, enc_mlp=64,
             latent_dim=24, proj_hidden=48, action_dim=2, frameskip=3, history=3, pred_depth=3,
             pred_heads=4, pred_head_dim=8, pred_mlp=48, pred_dropout=0.1, action_embed=5,
             action_hidden=32)


def preset(name: str, action_dim: int = 2) -> ModelConfig:
    data = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    return from_dict(ModelConfig, {**data, "action_dim": action_dim})


def small_model(seed: int = 0, randomise: bool = True, **over) -> WorldModel:
    """Small model in eval mode; `randomise` replaces the zero-init AdaLN/bias so actions matter."""
    torch.manual_seed(seed)
    model = WorldModel(ModelConfig(**{**SMALL, **over}))
    if randomise:
        with torch.no_grad():
            model.predictor.adaln.weight.normal_(0, 0.2)
            model.predictor.adaln.bias.normal_(0, 0.2)
            model.predictor.rel_bias.normal_(0, 1.0)
    return model.eval()


def pixels(b: int, t: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, size, size, 3), dtype=torch.uint8, generator=g)


def test_presets_build_and_lewm_has_about_18m_parameters():
    tiny, lewm = preset("tiny"), preset("lewm")
    assert tiny.chunk_dim == tiny.frameskip * 2 and tiny.num_patches == (64 // 16) ** 2
    counts = WorldModel(lewm).num_parameters()
    print(f"LeWM preset parameters: {counts}")
    assert 17e6 < counts["total"] < 19e6, counts
    with pytest.raises(ValueError, match="multiple of"):
        ModelConfig(image_size=60, patch_size=8)


def test_shapes_at_tiny_preset():
    model = WorldModel(preset("tiny", action_dim=2)).train()
    b, t, chunk, d = 3, 4, model.cfg.chunk_dim, model.cfg.latent_dim
    px = pixels(b, t, 64)
    out = model.loss(px, torch.randn(b, t - 1, chunk))
    assert out["pred"].shape == () and out["z"].shape == (b, t, d) and out["z_hat"].shape == (b, t - 1, d)
    out["pred"].backward()
    assert model.cfg.encoder == "cnn"                            # tiny's encoder since 2026-12-06
    assert model.encoder.body[0].weight.grad.abs().sum() > 0     # gradient reaches the pixels' encoder
    assert model.predictor.adaln.weight.grad.abs().sum() > 0     # and the zero-init conditioning
    model.eval()
    with torch.no_grad():
        z = model.encode(px)
        assert z.shape == (b, t, d)
        assert torch.allclose(model.encode(px.float() / 255), z, atol=1e-5)  # float [0,1] == uint8
        assert model.encode(px[:, 0]).shape == (b, d)
        assert model.predict(z, torch.randn(b, t, chunk)).shape == (b, t, d)
        assert model.rollout(z[:, :3], torch.randn(b, 2, chunk), torch.randn(b, 5, chunk)).shape == (b, 5, d)
    with pytest.raises(ValueError, match="64x64"):
        model.encode(pixels(1, 1, 32))
    with pytest.raises(ValueError, match="frameskip"):
        model.predict(z, torch.randn(b, t, chunk + 1))


def test_patch_embedding_is_the_convolution_on_normalised_pixels():
    """embed_patches (a matmul on channels-last patches, normalisation folded into the weights) is
    the encoder's Conv2d applied to the [-1, 1] image, for uint8 and for float [0, 1] pixels, and
    passes gradients to the convolution's parameters."""
    enc = small_model().encoder
    with torch.no_grad():
        enc.patch.bias.normal_()
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (5, 32, 32, 3), generator=g, dtype=torch.uint8)
    for pixels, unit in ((u8, u8.double() / 255), (u8.float() / 255, u8.double() / 255)):
        x = (unit.permute(0, 3, 1, 2) - 0.5) / 0.5                        # (N, 3, H, W) in [-1, 1]
        conv = torch.nn.functional.conv2d(x, enc.patch.weight.double(), enc.patch.bias.double(), stride=8)
        ref = conv.flatten(2).transpose(1, 2)                             # (N, P, width), P row-major
        torch.testing.assert_close(enc.embed_patches(pixels).double(), ref, rtol=1e-4, atol=1e-5)
    enc.embed_patches(u8).sum().backward()
    assert enc.patch.weight.grad.abs().sum() > 0 and enc.patch.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="channels-last"):
        enc.embed_patches(u8.permute(0, 3, 1, 2))


def test_cpu_bf16_autocast_attends_in_float32(monkeypatch):
    """wm train precision=bf16 on the CPU: the encoder's linears run in bf16, its attention in float32
    (the CPU's bf16 attention backward ran 6x slower than float32's); outputs and gradients agree
    with float32 to bf16's precision."""
    import torch.nn.functional as F

    from worldmodel.model.encoder import ViTBlock

    torch.manual_seed(0)
    block = ViTBlock(64, 4, 128)
    x = torch.randn(8, 17, 64)
    ref = block(x)
    ref.square().sum().backward()
    ref_grad = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    seen, sdpa = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, k, v: seen.append(q.dtype) or sdpa(q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    out.float().square().sum().backward()
    assert seen == [torch.float32] and block.fc1(x[:1]).dtype == torch.float32   # autocast off again
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    for g, r in zip((p.grad for p in block.parameters()), ref_grad):
        torch.testing.assert_close(g, r, rtol=0.1, atol=0.1 * r.abs().max().item())


def test_predictor_is_causal_and_windowed():
    model = small_model()
    b, t, d, c = 2, 7, 24, 6
    z, a = torch.randn(b, t, d), torch.randn(b, t, c)
    with torch.no_grad():
        base = model.predict(z, a)
        z2, a2 = z.clone(), a.clone()
        z2[:, 4:] += 1.0
        a2[:, 4:] += 1.0
        changed = model.predict(z2, a2)
    assert torch.equal(base[:, :4], changed[:, :4])               # the future never leaks back
    assert not torch.allclose(base[:, 4:], changed[:, 4:])
    # With one block the receptive field is exactly the window: output t sees t-2..t only.
    one = small_model(pred_depth=1)
    with torch.no_grad():
        z3 = z.clone()
        z3[:, 0] += torch.randn(b, d)                             # (not a constant: LayerNorm removes it)
        o1, o2 = one.predict(z, a), one.predict(z3, a)
    assert torch.equal(o1[:, 3:], o2[:, 3:]) and not torch.allclose(o1[:, :3], o2[:, :3])


def test_adaln_zero_init_makes_actions_irrelevant_until_trained():
    model = small_model(randomise=False)
    assert torch.count_nonzero(model.predictor.adaln.weight) == 0
    assert torch.count_nonzero(model.predictor.adaln.bias) == 0
    z = torch.randn(2, 4, 24)
    with torch.no_grad():
        out1 = model.predict(z, torch.randn(2, 4, 6))
        out2 = model.predict(z, torch.randn(2, 4, 6) * 10)
        assert torch.equal(out1, out2)                            # gates are zero: blocks are identity
        model.predictor.adaln.bias.normal_(0, 0.1)               # open the gates: actions now matter
        model.predictor.adaln.weight.normal_(0, 0.1)
        assert not torch.allclose(model.predict(z, torch.randn(2, 4, 6)), model.predict(z, torch.randn(2, 4, 6)))


def test_modulation_carries_one_plus_scale_and_checkpoints_keep_their_layout():
    """The blocks read 1 + scale from the modulation (the 1 added once, to the AdaLN bias); the
    constant is not a checkpoint entry, so checkpoints written before still load."""
    p = small_model().predictor
    c = torch.randn(2, 4, 24)                                     # action embeddings (B, T, D)
    raw = p.adaln(torch.nn.functional.silu(c)).unflatten(-1, (p.depth, 6, p.dim))
    mod = p.modulation(c)                                          # (B, T, depth, 6, D)
    torch.testing.assert_close(mod[..., [0, 2, 3, 5], :], raw[..., [0, 2, 3, 5], :])   # shifts, gates
    torch.testing.assert_close(mod[..., [1, 4], :], 1 + raw[..., [1, 4], :])            # scales
    assert not any("scale_one" in k for k in p.state_dict())


def naive_rollout(model: WorldModel, z_hist, a_hist, actions):
    """Reference: re-run `predict` on the whole growing sequence for every step, one sample at a time."""
    b, s, hz, _ = actions.shape
    result = torch.empty(b, s, hz, z_hist.shape[-1])
    for i in range(s):
        zs = z_hist
        acts = a_hist if a_hist is not None else z_hist.new_zeros(b, 0, actions.shape[-1])
        for k in range(hz):
            acts = torch.cat([acts, actions[:, i, k:k + 1]], dim=1)
            nxt = model.predict(zs, acts)[:, -1:]                 # (B, 1, D)
            zs = torch.cat([zs, nxt], dim=1)
            result[:, i, k] = nxt[:, 0]
    return result


@pytest.mark.parametrize("h", [1, 2, 3, 5])
def test_cached_rollout_equals_naive_loop(h):
    model = small_model()
    b, s, hz = 2, 3, 6
    z_hist = torch.randn(b, h, 24)
    a_hist = torch.randn(b, h - 1, 6) if h > 1 else None
    actions = torch.randn(b, s, hz, 6)
    with torch.no_grad():
        fast = model.rollout(z_hist, a_hist, actions)
        ref = naive_rollout(model, z_hist, a_hist, actions)
        single = model.rollout(z_hist, a_hist, actions[:, 1])     # no sample axis
    assert fast.shape == (b, s, hz, 24)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single, fast[:, 1], rtol=1e-6, atol=1e-6)


def test_open_loop_loss_is_the_rollout_error_and_trains_encoder_and_predictor():
    model = small_model()
    px, acts = pixels(2, 6, 32), torch.randn(2, 5, 6)             # history 3 + 3 predicted frames
    out = model.loss(px, acts, open_loop=True)
    z = out["z"]
    ref = naive_rollout(model, z[:, :3], acts[:, :2], acts[:, None, 2:])[:, 0]  # (B, 3, D)
    torch.testing.assert_close(out["open_loop"], torch.nn.functional.mse_loss(ref, z[:, 3:]))
    assert out["open_loop"] > 0 and "open_loop" not in model.loss(px, acts)
    out["open_loop"].backward()
    for part in (model.encoder, model.predictor, model.action_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad()
    model.loss(px, acts, open_loop=True, open_loop_detach=True)["open_loop"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())  # detached: the predictor's term only
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.predictor.parameters())
    with pytest.raises(ValueError, match="n_preds >= 2"):           # 1 predicted frame: nothing to roll out
        model.loss(px[:, :4], acts[:, :3], open_loop=True)


def test_action_stats_normalise_inside_the_model():
    model = small_model()
    mean, std = torch.randn(6), torch.rand(6) + 0.5
    z, a = torch.randn(2, 3, 24), torch.randn(2, 3, 6)
    with torch.no_grad():
        ref = model.predict(z, (a - mean) / std)
        model.set_action_stats(mean, std)
        torch.testing.assert_close(model.predict(z, a), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="frameskip"):
        model.set_action_stats(torch.zeros(5), torch.ones(5))


def test_checkpoint_round_trip(tmp_path):
    model = small_model(seed=3)
    model.set_action_stats(torch.arange(6.0), torch.full((6,), 2.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model.loss(pixels(2, 3, 32), torch.randn(2, 2, 6))["pred"].backward()
    opt.step()
    model.eval()
    rng = torch.get_rng_state()
    path = save_checkpoint(tmp_path / "ck" / "last.pt", model, opt, step=17, extra={"torch_rng": rng, "note": "x"})
    assert not list(path.parent.glob("*.tmp"))                    # atomic: no temp file left behind
    ckpt = load_checkpoint(path)
    assert ckpt["step"] == 17 and torch.equal(ckpt["extra"]["torch_rng"], rng)
    assert ckpt["model_config"] == model.cfg.to_dict()
    restored = WorldModel.from_checkpoint(path)
    assert not restored.training
    px, z_hist, acts = pixels(2, 3, 32, seed=1), torch.randn(2, 3, 24), torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        assert torch.equal(restored.encode(px), model.encode(px))
        assert torch.equal(restored.rollout(z_hist, acts[:, 0, :2], acts),
                           model.rollout(z_hist, acts[:, 0, :2], acts))
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])                       # optimizer state resumes too


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refuses_corrupt_and_foreign_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.pt", small_model())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.txt"
    text.write_text("definitely not a checkpoint\n")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.randn(3), "step": 1}, foreign)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": "worldmodel-checkpoint", "x": _Evil()}, f)
    for bad in (truncated, text, evil):
        with pytest.raises(CheckpointError, match="not a readable worldmodel checkpoint"):
            load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not a worldmodel checkpoint"):
        load_checkpoint(foreign)
    future = torch.load(good, weights_only=True)
    future["version"] = 99
    torch.save(future, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(tmp_path / "future.pt")
    del future["model"]
    future["version"] = 1
    torch.save(future, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="missing checkpoint key"):
        WorldModel.from_checkpoint(tmp_path / "partial.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.pt")


def test_load_trained_names_the_env_and_refuses_mismatches(tmp_path):
    from worldmodel.model.world_model import load_trained

    model = small_model()
    meta = {"env": "tworoom", "image_size": 32, "policy": "expert"}
    path = save_checkpoint(tmp_path / "ok.pt", model, extra={"dataset_meta": meta})
    loaded, got_meta, env = load_trained(path)
    assert env == "tworoom" and got_meta == meta and not loaded.training
    assert load_trained(path, env="reacher")[2] == "reacher"            # an explicit env wins
    bare = save_checkpoint(tmp_path / "bare.pt", model)                  # no dataset metadata
    with pytest.raises(ValueError, match="pass env="):
        load_trained(bare)
    assert load_trained(bare, env="pusht")[2] == "pusht"
    other = save_checkpoint(tmp_path / "other.pt", model, extra={"dataset_meta": {**meta, "image_size": 64}})
    with pytest.raises(ValueError, match="image_size 64 != model image_size 32"):
        load_trained(other)


def test_cnn_encoder_keeps_the_layout_and_plans_like_the_vit():
    """model.encoder=cnn: latents of the model's width, gradients through the encoder, the same
    rollout/energy path as the ViT; a shifted image gives another latent (the layout is not pooled away)."""
    from worldmodel.model.energy import GoalEnergy

    model = small_model(encoder="cnn", enc_width=32)
    assert type(model.encoder).__name__ == "ConvEncoder"
    obs = pixels(2, 3, 32, seed=1)
    z = model.encode(obs)                                          # (B, T, D)
    assert z.shape == (2, 3, model.cfg.latent_dim) and torch.isfinite(z).all()
    img = torch.zeros(1, 32, 32, 3, dtype=torch.uint8)
    left, right = img.clone(), img.clone()
    left[:, 8:16, 2:10], right[:, 8:16, 22:30] = 255, 255
    with torch.no_grad():
        assert not torch.allclose(model.encoder(left), model.encoder(right), atol=1e-4)
    model.train()
    out = model.loss(pixels(4, 4, 32, seed=2), torch.randn(4, 3, model.cfg.chunk_dim))
    out["pred"].backward()
    assert model.encoder.body[0].weight.grad.abs().sum() > 0
    model.eval()
    energy = GoalEnergy(model, obs, torch.randn(2, 2, model.cfg.chunk_dim), pixels(2, 1, 32, seed=3)[:, 0])
    assert energy(torch.randn(2, 5, 4, model.cfg.chunk_dim)).shape == (2, 5)
    with pytest.raises(ValueError, match="multiple of 16"):
        ModelConfig(**{**SMALL, "encoder": "cnn", "image_size": 40, "patch_size": 8})
    with pytest.raises(ValueError, match="model.encoder must be one of"):
        ModelConfig(**{**SMALL, "encoder": "resnet"})
