"""Image encoders: pixels (N, H, W, 3) -> the latent z, through a BatchNorm projector.

ViTEncoder (model.encoder=vit): patches -> pre-LN transformer -> final LayerNorm -> CLS -> projector
(Linear -> BatchNorm1d -> GELU -> Linear). ConvEncoder (model.encoder=cnn): strided convolutions
whose last feature map, flattened in place, goes to the same projector, so where things are in the
image stays in the latent rather than being pooled into one token. The projector ends the encoder with BatchNorm rather than
LayerNorm because a LayerNorm output lies on a sphere-like set, which works against SIGReg's
isotropic-Gaussian target (LeWM's design).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Pixels are mapped from [0, 1] to [-1, 1]; simple, dataset-independent, and fine for a ViT from scratch.
PIXEL_MEAN = 0.5
PIXEL_STD = 0.5


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated-normal(0.02) linears/convs with zero bias, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm1d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def check_pixels(pixels: Tensor, image_size: int) -> None:
    """Refuse anything but channels-last (N, image_size, image_size, 3) pixels, naming the fix."""
    if pixels.dim() != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"expected pixels (N, H, W, 3) channels-last, got {tuple(pixels.shape)}")
    if pixels.shape[1] != image_size or pixels.shape[2] != image_size:
        raise ValueError(f"pixels are {pixels.shape[1]}x{pixels.shape[2]} but the model expects "
                         f"{image_size}x{image_size}: collect at that size or set model.image_size")


class BNProjector(nn.Module):
    """MLP in_dim -> hidden -> out_dim with BatchNorm1d; accepts (..., in_dim) by flattening leading dims."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        h = self.fc1(x.reshape(-1, x.shape[-1]))         # (N, hidden)
        h = F.gelu(self.bn(h))
        return self.fc2(h).reshape(*lead, -1)            # (..., out_dim)


class ViTBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"enc_width {width} must be divisible by enc_heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, mlp)
        self.fc2 = nn.Linear(mlp, width)

    def forward(self, x: Tensor) -> Tensor:
        n, t, w = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, w // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)   # each (N, heads, T, hd)
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # On the CPU, bf16 attention's backward is much slower than float32's (no fused bf16
            # kernel): attend in float32; the linears stay bf16 (autocast).
            with torch.autocast("cpu", enabled=False):
                a = F.scaled_dot_product_attention(q.float(), k.float(), v.float())   # (N, heads, T, hd)
        else:
            a = F.scaled_dot_product_attention(q, k, v)   # (N, heads, T, hd)
        x = x + self.proj(a.transpose(1, 2).reshape(n, t, w))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViTEncoder(nn.Module):
    """Pixels (N, H, W, 3) uint8 or float in [0, 1] -> latent (N, latent_dim)."""

    def __init__(self, image_size: int, patch_size: int, width: int, depth: int, heads: int,
                 mlp: int, latent_dim: int, proj_hidden: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        self.image_size = image_size
        self.num_patches = (image_size // patch_size) ** 2
        self.patch = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.zeros(1, 1 + self.num_patches, width))
        self.blocks = nn.ModuleList(ViTBlock(width, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.projector = BNProjector(width, proj_hidden, latent_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.pos, std=0.02)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def embed_patches(self, pixels: Tensor) -> Tensor:
        """(N, H, W, 3) uint8 [0, 255] or float [0, 1] -> patch tokens (N, P, width), P row-major.

        The pixels are normalised to [-1, 1] and the `patch` convolution (stride = kernel) applied,
        computed as one matmul on the patches cut straight from the channels-last pixels, with the
        normalisation folded into the weights (no pass over the images but the cast). The same
        function as Conv2d on the normalised (N, 3, H, W) image (tests/test_model.py), and the same
        parameters, so checkpoints keep their layout; on the CPU the convolution's backward costs
        several times its forward, the matmul's does not."""
        check_pixels(pixels, self.image_size)
        n, p = pixels.shape[0], self.patch.kernel_size[0]
        g = self.image_size // p
        x = pixels.reshape(n, g, p, g, p, 3).transpose(2, 3).reshape(n, g * g, p * p * 3)  # (N, P, p*p*3)
        w = self.patch.weight.permute(0, 2, 3, 1).flatten(1)  # (width, p*p*3), the patches' (row, col, rgb)
        # conv((x * a - MEAN) / STD) = (W * a / STD) x + (b - W 1 * MEAN / STD), a = 1/255 for uint8
        a = 1.0 / 255.0 if pixels.dtype == torch.uint8 else 1.0
        bias = self.patch.bias - w.sum(1) * (PIXEL_MEAN / PIXEL_STD)
        return F.linear(x.to(w.dtype), w * (a / PIXEL_STD), bias)      # (N, P, width)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.embed_patches(pixels)                     # (N, P, width)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos  # (N, 1+P, width)
        for blk in self.blocks:
            x = blk(x)
        cls = self.norm(x[:, 0])                           # (N, width)
        return self.projector(cls)                         # (N, latent_dim)


class ConvBlock(nn.Module):
    """x + GELU(GroupNorm(conv3x3(x))): one residual convolution at a fixed resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.GroupNorm(8, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + F.gelu(self.norm(self.conv(x)))


class ConvEncoder(nn.Module):
    """Pixels (N, H, W, 3) uint8 or float in [0, 1] -> latent (N, latent_dim).

    A 4x4 stride-4 stem to width/4 channels, then two stride-2 stages (width/2, width), each followed
    by a residual convolution: the image shrinks 16-fold. The last feature map (N, width, H/16, W/16)
    is flattened as it lies, so the projector sees each cell's features at its place."""

    def __init__(self, image_size: int, width: int, latent_dim: int, proj_hidden: int):
        super().__init__()
        if image_size % 16:
            raise ValueError(f"image_size {image_size} must be a multiple of 16 for the cnn encoder")
        if width % 32:
            raise ValueError(f"enc_width {width} must be a multiple of 32 for the cnn encoder (GroupNorm(8) "
                             "on width/4 channels)")
        self.image_size = image_size
        c1, c2, c3 = width // 4, width // 2, width
        self.body = nn.Sequential(
            nn.Conv2d(3, c1, 4, stride=4), nn.GroupNorm(8, c1), nn.GELU(), ConvBlock(c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GroupNorm(8, c2), nn.GELU(), ConvBlock(c2),
            nn.Conv2d(c2, c3, 3, stride=2, padding=1), nn.GroupNorm(8, c3), nn.GELU(), ConvBlock(c3))
        self.projector = BNProjector(c3 * (image_size // 16) ** 2, proj_hidden, latent_dim)
        init_weights(self.projector)

    def forward(self, pixels: Tensor) -> Tensor:
        check_pixels(pixels, self.image_size)
        dtype = self.body[0].weight.dtype
        x = pixels.to(dtype) / (255.0 if pixels.dtype == torch.uint8 else 1.0)   # (N, H, W, 3) in [0, 1]
        x = ((x - PIXEL_MEAN) / PIXEL_STD).permute(0, 3, 1, 2)                    # (N, 3, H, W), channels-last memory
        f = self.body(x)                                                         # (N, width, H/16, W/16)
        return self.projector(f.flatten(1))                                      # (N, latent_dim)
