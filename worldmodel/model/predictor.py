"""Action-conditioned predictor: a causal sliding-window transformer with AdaLN-zero conditioning.

Token t is the latent z_t; its action chunk a_t (the actions executed between frame t and t+1)
enters every block by AdaLN-zero (SiLU -> Linear to shift/scale/gate for attention and MLP,
zero-initialised, so each block starts as the identity). Output t predicts z_{t+1}.

Positions are RELATIVE: a learned per-head bias over offsets 0..history-1 is added to the attention
logits, and token t attends to tokens t-history+1..t at every layer (a causal sliding window,
as in Mistral). Keys and values of a token then never depend on where the window starts, so an
autoregressive rollout can keep a KV cache and process only the new token per step; `step` does
exactly that and equals `forward` on the whole sequence (tests/test_model.py checks it).
Note the window is per layer, so deeper layers see further back (receptive field depth x window).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worldmodel.model.encoder import BNProjector, init_weights

# One cached token at one layer: key and value, each (B, 1 or S, heads, head_dim).
KV = tuple[Tensor, Tensor]


class ActionEncoder(nn.Module):
    """Action chunk (..., chunk) -> embedding (..., dim): a 1x1 (per-step linear) map to `embed`
    dims, then an MLP to the model width."""

    def __init__(self, chunk: int, embed: int, hidden: int, dim: int):
        super().__init__()
        self.inp = nn.Linear(chunk, embed)
        self.fc1 = nn.Linear(embed, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, a: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(self.inp(a))))


class AdaLNBlock(nn.Module):
    """One pre-LN block; its modulation (shift/scale/gate x attn/MLP) is computed outside, fused
    over all blocks, and passed in as `mod` (..., 6, dim), the scales as 1 + scale (see
    Predictor.modulation)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.scale = head_dim ** -0.5
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * inner)
        self.out = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)
        self.drop = nn.Dropout(dropout)

    def qkv_of(self, x: Tensor, shift: Tensor, scale1p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (..., dim), shift and 1 + scale (..., dim) -> q, k, v each (..., heads, head_dim)
        (logits get scaled by the caller)."""
        h = torch.addcmul(shift, self.norm1(x), scale1p)              # (..., dim)
        qkv = self.qkv(h).unflatten(-1, (3, self.heads, self.head_dim))  # (..., 3, heads, hd)
        return qkv.unbind(-3)

    def finish(self, x: Tensor, attn: Tensor, mod: Tensor) -> Tensor:
        """Residual updates given the attention result attn (..., heads*hd) and mod (..., 6, dim).
        Each update is one fused op (addcmul: x + gate * y): a planning step is mostly small
        kernels, and every one saved is a launch fewer per block (benchmarks/plan_latency.py)."""
        _, _, gate_a, shift_m, scale1p_m, gate_m = mod.unbind(-2)
        x = torch.addcmul(x, gate_a, self.drop(self.out(attn)))
        h = torch.addcmul(shift_m, self.norm2(x), scale1p_m)
        return torch.addcmul(x, gate_m, self.drop(self.fc2(F.gelu(self.fc1(h)))))


class Predictor(nn.Module):
    """(z (B, T, D), action embedding c (B, T, D)) -> z_hat (B, T, D), z_hat[t] ~ z[t+1]."""

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp: int, dropout: float,
                 history: int, proj_hidden: int):
        super().__init__()
        self.dim, self.depth, self.heads, self.history = dim, depth, heads, history
        self.blocks = nn.ModuleList(AdaLNBlock(dim, heads, head_dim, mlp, dropout) for _ in range(depth))
        self.adaln = nn.Linear(dim, depth * 6 * dim)     # all blocks' modulations in one matmul
        self.rel_bias = nn.Parameter(torch.zeros(heads, history))  # logit bias per head and offset
        self.norm = nn.LayerNorm(dim)
        self.projector = BNProjector(dim, proj_hidden, dim)
        init_weights(self)
        nn.init.zeros_(self.adaln.weight)                  # AdaLN-zero: every block starts as identity
        nn.init.zeros_(self.adaln.bias)
        one = torch.zeros(depth, 6, dim)
        one[:, [1, 4]] = 1.0                               # the two scale slots of every block
        self.register_buffer("scale_one", one.flatten(), persistent=False)  # not in checkpoints

    def modulation(self, c: Tensor) -> Tensor:
        """Action embedding (..., D) -> per-block modulation (..., depth, 6, D): shift, 1 + scale,
        gate for attention, then for the MLP. The 1 is added to the linear's bias (a tiny op) rather
        than twice per block and token."""
        bias = self.adaln.bias + self.scale_one             # (depth * 6 * D,)
        return F.linear(F.silu(c), self.adaln.weight, bias).unflatten(-1, (self.depth, 6, self.dim))

    def window_bias(self, t: int, device: torch.device) -> Tensor:
        """Additive attention bias (heads, T, T): relative-offset bias inside the causal window,
        -inf outside it."""
        idx = torch.arange(t, device=device)
        off = idx[:, None] - idx[None, :]                  # (T, T) query minus key position
        valid = (off >= 0) & (off < self.history)
        bias = self.rel_bias[:, off.clamp(0, self.history - 1)]  # (heads, T, T)
        return bias.masked_fill(~valid, float("-inf"))

    def output(self, x: Tensor) -> Tensor:
        return self.projector(self.norm(x))

    def forward(self, z: Tensor, c: Tensor, return_kv: bool = False):
        """z, c (B, T, D) -> z_hat (B, T, D); with return_kv also per-layer (k, v) each (B, T, H, hd)."""
        b, t, _ = z.shape
        mods = self.modulation(c)                          # (B, T, depth, 6, D)
        bias = self.window_bias(t, z.device)               # (H, T, T)
        x, kvs = z, []
        for i, blk in enumerate(self.blocks):
            mod = mods[:, :, i]                            # (B, T, 6, D)
            q, k, v = blk.qkv_of(x, mod[..., 0, :], mod[..., 1, :])  # each (B, T, H, hd)
            kvs.append((k, v))
            qk = q.transpose(1, 2) @ k.permute(0, 2, 3, 1)  # (B, H, T, T)
            logits = torch.add(bias, qk, alpha=blk.scale)  # bias + scale * qk
            attn = logits.softmax(-1) @ v.transpose(1, 2)  # (B, H, T, hd)
            x = blk.finish(x, attn.transpose(1, 2).flatten(2), mod)   # (B, T, D)
        out = self.output(x)
        return (out, kvs) if return_kv else out

    def step(self, x: Tensor, mods: Tensor, cache: list[list[KV]]) -> tuple[Tensor, list[KV]]:
        """Process ONE new token per sequence, attending to its cached predecessors.

        x (B, S or 1, D) the new token; mods (B, S, depth, 6, D) its modulation; cache[i] the
        (k, v) of at most history-1 previous tokens at layer i, oldest first, each
        (B, 1 or S, H, hd) (1 = shared by all S samples: broadcast, never copied).
        Returns the output z_hat (B, S, D) and the new token's (k, v) per layer.
        Attention over <= history keys is a few elementwise ops: far cheaper than a matmul kernel.
        """
        new_kv: list[KV] = []
        n = len(cache[0]) + 1 if cache else 1            # keys per layer: cached + the new one
        bias = self.rel_bias[:, :n].flip(-1)               # (H, n), offsets n-1 .. 0, oldest first
        for i, blk in enumerate(self.blocks):
            mod = mods[:, :, i]                            # (B, S, 6, D)
            q, k, v = blk.qkv_of(x, mod[..., 0, :], mod[..., 1, :])  # each (B, S, H, hd)
            new_kv.append((k, v))
            keys = [kv[0] for kv in cache[i]] + [k]
            vals = [kv[1] for kv in cache[i]] + [v]
            logits = torch.stack([(q * kj).sum(-1) for kj in keys], dim=-1)  # (B, S, H, n)
            # scale on the small logits, not on q, fused with the bias (bias + scale * logits);
            # the key at list position j has offset n-1-j
            logits = torch.add(bias, logits, alpha=blk.scale)
            w = logits.softmax(-1)                         # (B, S, H, n)
            attn = w[..., 0, None] * vals[0]
            for j in range(1, n):
                attn = torch.addcmul(attn, w[..., j, None], vals[j])  # (B, S, H, hd)
            x = blk.finish(x, attn.flatten(-2), mod)       # (B, S, D)
        return self.output(x), new_kv
