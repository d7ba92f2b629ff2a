"""The world model's architecture as a typed config (presets in configs/model/). Imports no torch."""
from __future__ import annotations

from dataclasses import dataclass, field

ENCODERS = ("vit", "cnn")   # model.encoder=


@dataclass
class ModelConfig:
    """Architecture. YAML presets in configs/model/ set every field except action_dim (from data)."""

    encoder: str = "vit"           # vit: patches -> transformer -> CLS | cnn: strided convolutions whose
                                   # last feature map, flattened in place, keeps where things are
    image_size: int = 64
    patch_size: int = 8
    enc_width: int = 192
    enc_depth: int = 12
    enc_heads: int = 3
    enc_mlp: int = 768
    latent_dim: int = 192
    proj_hidden: int = 2048
    action_dim: int = 2            # env action width A (filled from the dataset by the trainer)
    frameskip: int = 5             # env steps per action chunk
    history: int = 3               # predictor attention window (tokens)
    pred_depth: int = 6
    pred_heads: int = 16
    pred_head_dim: int = 64
    pred_mlp: int = 2048
    pred_dropout: float = 0.1
    action_embed: int = 10         # width of the 1x1 action map before the action MLP
    action_hidden: int = 768       # hidden width of the action MLP
    num_patches: int = field(init=False)
    chunk_dim: int = field(init=False)

    def __post_init__(self) -> None:
        positive = ["image_size", "patch_size", "enc_width", "enc_depth", "enc_heads", "enc_mlp",
                    "latent_dim", "proj_hidden", "action_dim", "frameskip", "history", "pred_depth",
                    "pred_heads", "pred_head_dim", "pred_mlp", "action_embed", "action_hidden"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"model.encoder must be one of {', '.join(ENCODERS)}, got {self.encoder!r}")
        if self.encoder == "cnn" and (self.image_size % 16 or self.image_size < 32):
            raise ValueError(f"model.encoder=cnn halves the image four times: model.image_size must be a "
                             f"multiple of 16 and >= 32, got {self.image_size}")
        if self.image_size % self.patch_size:
            raise ValueError(f"model.image_size {self.image_size} must be a multiple of "
                             f"model.patch_size {self.patch_size}")
        if self.enc_width % self.enc_heads:
            raise ValueError(f"model.enc_width {self.enc_width} must be divisible by "
                             f"model.enc_heads {self.enc_heads}")
        if not 0.0 <= self.pred_dropout < 1.0:
            raise ValueError(f"model.pred_dropout must be in [0, 1), got {self.pred_dropout}")
        self.num_patches = (self.image_size // self.patch_size) ** 2
        self.chunk_dim = self.frameskip * self.action_dim

    def to_dict(self) -> dict:
        """Constructor arguments only (JSON-able), as stored in checkpoints."""
        return {k: v for k, v in self.__dict__.items() if k not in ("num_patches", "chunk_dim")}
