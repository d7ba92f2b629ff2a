"""The JEPA world model: image encoder (ViT or CNN) + action encoder + AdaLN-zero predictor.

Trained end-to-end from pixels with a teacher-forced next-latent MSE (`loss`; optionally plus the
error of an open-loop rollout over the clip, as the planner uses the predictor) plus SIGReg on the
latents (worldmodel/model/sigreg.py, applied by the trainer). Planning uses `rollout` (or GoalEnergy in
worldmodel/model/energy.py), which keeps a KV cache so each step costs one token per candidate.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.model.config import ModelConfig
from worldmodel.model.encoder import ConvEncoder, ViTEncoder
from worldmodel.model.predictor import KV, ActionEncoder, Predictor


class WorldModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.encoder == "cnn":
            self.encoder: nn.Module = ConvEncoder(cfg.image_size, cfg.enc_width, cfg.latent_dim, cfg.proj_hidden)
        else:
            self.encoder = ViTEncoder(cfg.image_size, cfg.patch_size, cfg.enc_width, cfg.enc_depth,
                                      cfg.enc_heads, cfg.enc_mlp, cfg.latent_dim, cfg.proj_hidden)
        self.action_encoder = ActionEncoder(cfg.chunk_dim, cfg.action_embed, cfg.action_hidden,
                                            cfg.latent_dim)
        self.predictor = Predictor(cfg.latent_dim, cfg.pred_depth, cfg.pred_heads, cfg.pred_head_dim,
                                   cfg.pred_mlp, cfg.pred_dropout, cfg.history, cfg.proj_hidden)
        # Actions are normalised inside the model, so callers always pass raw env units.
        self.register_buffer("action_mean", torch.zeros(cfg.chunk_dim))
        self.register_buffer("action_std", torch.ones(cfg.chunk_dim))

    # ---------------------------------------------------------------- pieces
    def set_action_stats(self, mean: Tensor, std: Tensor) -> None:
        """Per-chunk-dimension statistics (chunk,) of the training actions (std floored at 1e-6)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != (self.cfg.chunk_dim,) or std.shape != (self.cfg.chunk_dim,):
            raise ValueError(f"action stats must have shape ({self.cfg.chunk_dim},) = frameskip x "
                             f"action_dim; got {tuple(mean.shape)} / {tuple(std.shape)}")
        self.action_mean.copy_(mean)
        self.action_std.copy_(std.clamp_min(1e-6))

    def embed_actions(self, actions: Tensor) -> Tensor:
        """Raw action chunks (..., chunk) -> action embeddings (..., D)."""
        if actions.shape[-1] != self.cfg.chunk_dim:
            raise ValueError(f"action chunks must have last dim {self.cfg.chunk_dim} "
                             f"(= frameskip {self.cfg.frameskip} x action_dim {self.cfg.action_dim}), "
                             f"got {tuple(actions.shape)}")
        a = (actions.to(self.action_std.dtype) - self.action_mean) / self.action_std
        return self.action_encoder(a.to(self.action_encoder.inp.weight.dtype))  # (a planning copy's dtype)

    def encode(self, pixels: Tensor) -> Tensor:
        """Pixels (B, T, H, W, 3) uint8 (or float in [0, 1]) -> z (B, T, D). Also accepts (B, H, W, 3)
        -> (B, D). numpy arrays are moved to the model's device."""
        if not isinstance(pixels, Tensor):
            pixels = torch.as_tensor(pixels, device=self.action_mean.device)
        if pixels.dim() == 4:
            return self.encoder(pixels)
        if pixels.dim() != 5:
            raise ValueError(f"expected pixels (B, T, H, W, 3), got {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        return self.encoder(pixels.flatten(0, 1)).unflatten(0, (b, t))  # (B, T, D)

    def predict(self, z: Tensor, actions: Tensor) -> Tensor:
        """z (B, T, D), raw action chunks (B, T, chunk) -> z_hat (B, T, D); z_hat[:, t] predicts
        z[:, t+1] from z[:, t-history+1 .. t] (causal sliding window at every layer)."""
        if z.shape[:2] != actions.shape[:2]:
            raise ValueError(f"z {tuple(z.shape)} and actions {tuple(actions.shape)} need equal (B, T)")
        return self.predictor(z, self.embed_actions(actions))

    def loss(self, pixels: Tensor, actions: Tensor, open_loop: bool = False,
             open_loop_detach: bool = False) -> dict[str, Tensor]:
        """Teacher-forced prediction loss on clips: pixels (B, T, H, W, 3), actions (B, T-1, chunk).
        Returns {"pred": scalar MSE, "z": latents (B, T, D) for SIGReg, "z_hat": (B, T-1, D)}.

        open_loop=True adds "open_loop": the MSE of the predictor run on its own predictions, as the
        planner runs it (`rollout`), from the clip's first `history` frames over its other
        T - history chunks (>= 2 of them, else it equals the last teacher-forced step). With
        open_loop_detach its latents (context and targets) are detached: it trains the predictor and
        action encoder only, and leaves the encoder to the teacher-forced loss and SIGReg."""
        if pixels.dim() != 5 or actions.dim() != 3 or actions.shape[1] != pixels.shape[1] - 1:
            raise ValueError(f"loss needs pixels (B, T, H, W, 3) and actions (B, T-1, chunk); got "
                             f"{tuple(pixels.shape)} and {tuple(actions.shape)}")
        z = self.encode(pixels)                            # (B, T, D)
        z_hat = self.predict(z[:, :-1], actions)           # (B, T-1, D)
        out = {"pred": F.mse_loss(z_hat, z[:, 1:]), "z": z, "z_hat": z_hat}
        if open_loop:
            h = self.cfg.history
            if pixels.shape[1] - h < 2:
                raise ValueError(f"open_loop needs clips of history {h} + at least 2 predicted frames, got "
                                 f"{pixels.shape[1]} frames (set data.n_preds >= 2)")
            zc = z.detach() if open_loop_detach else z
            z_ol = self.rollout(zc[:, :h], actions[:, :h - 1] if h > 1 else None, actions[:, h - 1:])  # (B, T-h, D)
            out["open_loop"] = F.mse_loss(z_ol, zc[:, h:])
        return out

    def forward(self, pixels: Tensor, actions: Tensor, open_loop: bool = False,
                open_loop_detach: bool = False) -> dict[str, Tensor]:
        """= loss(...), so DistributedDataParallel(model)(pixels, actions) works."""
        return self.loss(pixels, actions, open_loop, open_loop_detach)

    # ---------------------------------------------------------------- rollout
    def prefill(self, z_hist: Tensor, a_hist: Tensor | None) -> list[list[KV]]:
        """KV cache of the observed history minus its last frame, kept to the last history-1 tokens.

        z_hist (B, h, D), a_hist (B, h-1, chunk) the actions taken between those frames (None when
        h == 1). Entries are (B, 1, H, hd): shared by every candidate sequence of that batch row.
        """
        b, h, _ = z_hist.shape
        depth, keep = self.cfg.pred_depth, self.cfg.history - 1
        if h == 1 or keep == 0:
            return [[] for _ in range(depth)]
        if a_hist is None or a_hist.shape[:2] != (b, h - 1):
            raise ValueError(f"with a history of {h} frames pass a_hist (B={b}, {h - 1}, chunk); got "
                             f"{None if a_hist is None else tuple(a_hist.shape)}")
        _, kvs = self.predictor(z_hist[:, :-1], self.embed_actions(a_hist), return_kv=True)
        start = max(0, h - 1 - keep)
        return [[(k[:, j, None], v[:, j, None]) for j in range(start, h - 1)] for k, v in kvs]

    def rollout_cached(self, z_last: Tensor, cache: list[list[KV]], actions: Tensor) -> Tensor:
        """Autoregressive rollout from a prefilled cache.

        z_last (B, 1 or S, D) the last observed latent; actions (B, S, Hz, chunk) raw candidate
        chunks (the first one is applied at the last observed frame). Returns (B, S, Hz, D): the
        predicted latents after each chunk. Only static Python control flow: capturable.
        """
        hz = actions.shape[2]
        mods = self.predictor.modulation(self.embed_actions(actions))  # (B, S, Hz, depth, 6, D)
        keep = self.cfg.history - 1
        cache = [list(layer) for layer in cache]
        x, outs = z_last, []
        for k in range(hz):
            x, new_kv = self.predictor.step(x, mods[:, :, k], cache)  # (B, S, D)
            outs.append(x)
            if k + 1 < hz:
                for layer, kv in zip(cache, new_kv):
                    layer.append(kv)
                    del layer[: max(0, len(layer) - keep)]
        return torch.stack(outs, dim=2)                    # (B, S, Hz, D)

    def rollout(self, z_hist: Tensor, a_hist: Tensor | None, actions: Tensor) -> Tensor:
        """z_hist (B, h, D) observed latents, a_hist (B, h-1, chunk) or None, actions (B, Hz, chunk)
        or (B, S, Hz, chunk) -> predicted latents (B, Hz, D) or (B, S, Hz, D).
        Equals running `predict` on the whole growing sequence, at one token per step."""
        squeeze = actions.dim() == 3
        if squeeze:
            actions = actions[:, None]                     # (B, 1, Hz, chunk)
        cache = self.prefill(z_hist, a_hist)
        out = self.rollout_cached(z_hist[:, -1:], cache, actions)
        return out[:, 0] if squeeze else out

    def planning_copy(self, dtype: torch.dtype) -> "WorldModel":
        """A copy whose action encoder and predictor (what a planner runs 10^4 times per solve) hold
        their weights in `dtype`; it shares this model's encoder (encoding stays in float32: once
        per plan) and copies the rest, so later changes to this model's weights do not reach it.
        Casting once here, rather than running under autocast, spares every call the weights' casts
        (under a CUDA graph, autocast cannot cache them)."""
        shared = {id(self.encoder): self.encoder}
        twin = copy.deepcopy(self, shared)
        twin.action_encoder.to(dtype)
        twin.predictor.to(dtype)
        return twin.eval()

    # ---------------------------------------------------------------- I/O
    def num_parameters(self) -> dict[str, int]:
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        return {"encoder": count(self.encoder), "action_encoder": count(self.action_encoder),
                "predictor": count(self.predictor), "total": count(self)}

    @classmethod
    def from_checkpoint(cls, path, device: str | torch.device = "cpu") -> "WorldModel":
        """Rebuild the model (config + weights + action stats) from a checkpoint; returned in eval mode."""
        from worldmodel.model.checkpoint import load_checkpoint

        return cls.from_loaded(load_checkpoint(path, map_location=device), device, source=str(path))

    @classmethod
    def from_loaded(cls, ckpt: dict, device: str | torch.device = "cpu", source: str = "checkpoint"
                    ) -> "WorldModel":
        """Same as from_checkpoint, from a dict `load_checkpoint` already returned (no second read)."""
        from worldmodel.model.checkpoint import CheckpointError

        try:
            model = cls(ModelConfig(**ckpt["model_config"]))
            model.load_state_dict(ckpt["model"])
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{source}: checkpoint does not match this WorldModel ({e}); "
                                  f"use the worldmodel version that wrote it.") from None
        return model.to(device).eval()


def load_trained(path, device: str | torch.device = "cpu", env: str | None = None
                 ) -> tuple[WorldModel, dict, str]:
    """A `wm train` checkpoint's model (eval mode), the metadata of the dataset it was trained on,
    and the env to run it in (`env`, else the dataset's). Refused before any work: a checkpoint
    that names no env when none is given, a dataset whose image size is not the model's."""
    from worldmodel.model.checkpoint import load_checkpoint

    return trained_from_loaded(load_checkpoint(path, map_location=device), device, env, str(path))


def trained_from_loaded(ckpt: dict, device: str | torch.device = "cpu", env: str | None = None,
                        source: str = "checkpoint") -> tuple[WorldModel, dict, str]:
    """Same as load_trained, from a dict `load_checkpoint` already returned (no second read)."""
    meta = (ckpt.get("extra") or {}).get("dataset_meta") or {}
    env_name = env or meta.get("env")
    if not env_name:
        raise ValueError(f"{source} records no dataset env; pass env=<name>")
    model = WorldModel.from_loaded(ckpt, device, source=source)
    image_size = int(meta.get("image_size") or model.cfg.image_size)
    if image_size != model.cfg.image_size:
        raise ValueError(f"data image_size {image_size} != model image_size {model.cfg.image_size}")
    return model, meta, env_name
