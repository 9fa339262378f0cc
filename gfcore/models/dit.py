"""VideoDiT: a pixel-space video diffusion transformer with factorized space/time attention.

Each frame is cut into p x p patches (tokens [B, T, P, D]). Every block runs spatial
attention (2-D RoPE over the patch grid), temporal attention (1-D RoPE over frames) and an
MLP, each modulated by adaLN-Zero from the frame's own conditioning: its noise level
(diffusion forcing) plus, when configured, its action embedding. Camera conditioning: the
Pluecker ray map is patch-embedded like the frames and added to the tokens. Conditioning
is dropped per clip (drop_cond) for classifier-free guidance. The hidden state after
`align_depth` blocks is returned for Geometry Forcing's alignment.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import torch
from einops import rearrange
from torch import nn

from gfcore.models.checkpointing import checkpoint_mode, recompute
from gfcore.nn import FactorizedAttention
from gfcore.nn.rope import rope_1d, rope_2d


PREDICTIONS = ("v", "x0", "x0_residual")
PREDICTION_T_MIN = 1e-3  # x0 / x0_residual: v = (x_t - x0_hat) / max(t, this)


def last_clean_frame(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W]: each clip's last frame of its leading run of clean (t == 0) frames; zeros
    for a clip whose first frame is noisy."""
    clean = (t == 0).int().cumprod(dim=1)  # 1 on the leading clean run
    count = clean.sum(dim=1)  # [B]
    index = (count - 1).clamp_min(0)
    anchor = x[torch.arange(x.shape[0], device=x.device), index]
    return anchor * (count > 0).to(x.dtype)[:, None, None, None]


def x0_from_v(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, prediction: str = "v") -> torch.Tensor:
    """The clean-frame estimate implied by v (inverts the x0 / x0_residual conversion exactly)."""
    tt = t[:, :, None, None, None].to(v.dtype)
    if prediction != "v":
        tt = tt.clamp_min(PREDICTION_T_MIN)
    return x_t - tt * v


@dataclass
class VideoDiTConfig:
    """Sizes of a VideoDiT. image_size is (H, W); both must be divisible by patch_size."""
    image_size: Tuple[int, int] = (32, 32)
    patch_size: int = 4
    channels: int = 3
    hidden_dim: int = 64
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    qk_norm: bool = True
    camera_cond: bool = True
    action_dim: int = 0  # 0: no action conditioning
    align_depth: int = 2  # hidden state after this many blocks is exposed (1..depth)
    temporal_causal: bool = False
    attention_impl: str = "auto"
    # What the output layer predicts; forward always returns v (the sampler's ODE velocity).
    # v: v = eps - x_0 directly. x0: the clean frame, v = (x_t - x0_hat) / max(t, PREDICTION_T_MIN).
    # x0_residual: the change from the last clean context frame (x0_hat = anchor + output, anchor
    # 0 when a clip has no clean leading frame): a zero-initialised model starts by repeating it.
    prediction: str = "v"

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in (self.image_size if not isinstance(self.image_size, int)
                                                  else (self.image_size, self.image_size)))
        if len(self.image_size) != 2 or any(s % self.patch_size for s in self.image_size):
            raise ValueError(f"image_size {self.image_size} must be (H, W) divisible by patch_size {self.patch_size}")
        if self.hidden_dim % self.num_heads or (self.hidden_dim // self.num_heads) % 4:
            raise ValueError(f"hidden_dim {self.hidden_dim} / num_heads {self.num_heads} must be a multiple of 4")
        if not 1 <= self.align_depth <= self.depth:
            raise ValueError(f"align_depth must lie in [1, depth={self.depth}], got {self.align_depth}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    @property
    def grid(self) -> Tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding [..., dim] of noise levels t in [0, 1]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = scale * t.float()[..., None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # shift/scale are per frame [B, T, D]; broadcast over the patches.
    return x * (1 + scale[:, :, None]) + shift[:, :, None]


class DiTBlock(nn.Module):
    """Spatial attention, temporal attention and MLP, each with adaLN-Zero (shift, scale, gate)."""

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        dim = config.hidden_dim
        self.norms = nn.ModuleList([nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(3)])
        self.spatial = FactorizedAttention(dim, config.num_heads, qk_norm=config.qk_norm, impl=config.attention_impl)
        self.temporal = FactorizedAttention(dim, config.num_heads, qk_norm=config.qk_norm, impl=config.attention_impl)
        hidden = int(dim * config.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 9 * dim))
        self.temporal_causal = config.temporal_causal
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, spatial_rope, temporal_rope,
                recompute_sublayers: bool = False) -> torch.Tensor:
        """recompute_sublayers (activation_checkpointing=selective): the two attentions and the MLP
        are recomputed in the backward, the norms, modulations and residual adds are kept."""
        mods = self.modulation(cond).chunk(9, dim=-1)
        for i, run in enumerate((
            lambda h: self.spatial(h, mode="spatial", rope=spatial_rope),
            lambda h: self.temporal(h, mode="temporal", causal=self.temporal_causal, rope=temporal_rope),
            self.mlp,
        )):
            shift, scale, gate = mods[3 * i: 3 * i + 3]
            h = modulate(self.norms[i](x), shift, scale)
            x = x + gate[:, :, None] * (recompute(run, h) if recompute_sublayers else run(h))
        return x


class VideoDiT(nn.Module):
    """v-prediction network: forward(x_t, t, rays=None, actions=None, drop_cond=None) -> (v, hidden).

    x_t [B, T, C, H, W]; t [B, T] noise levels in [0, 1] (0 = clean); rays [B, T, 6, H, W]
    Pluecker maps (needed when camera_cond); actions [B, T, action_dim]; drop_cond [B] bool,
    True where a clip's camera/action conditioning is replaced by the null condition.
    Returns v [B, T, C, H, W] and the hidden state [B, T, P, D] after `align_depth` blocks.

    activation_checkpointing (an attribute, not part of the config: it changes memory, not
    values): "none", "full" or "selective" (gfcore.models.checkpointing; True / False are read as
    full / none). With gradients on, full recomputes each block in the backward
    (torch.utils.checkpoint, use_reentrant=False) instead of keeping its activations; selective
    recomputes only each block's attentions and MLP.
    """

    def __init__(self, config: VideoDiTConfig):
        super().__init__()
        self.config = config
        dim, p = config.hidden_dim, config.patch_size
        self.patch_embed = nn.Linear(config.channels * p * p, dim)
        self.ray_embed = nn.Linear(6 * p * p, dim) if config.camera_cond else None
        self.action_embed = (nn.Sequential(nn.Linear(config.action_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
                             if config.action_dim > 0 else None)
        self.time_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.out = nn.Linear(dim, config.channels * p * p)
        for layer in (self.final_modulation[1], self.out):  # zero-initialised output: starts at v = 0
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        head_dim = dim // config.num_heads
        cos, sin = rope_2d(*config.grid, head_dim)
        self.register_buffer("spatial_cos", cos, persistent=False)
        self.register_buffer("spatial_sin", sin, persistent=False)
        self.activation_checkpointing = "none"

    @property
    def activation_checkpointing(self) -> str:
        return self._checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, value) -> None:
        self._checkpointing = checkpoint_mode(value, "activation_checkpointing")

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b t c (h p) (w q) -> b t (h w) (c p q)", p=self.config.patch_size, q=self.config.patch_size)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.config.grid
        return rearrange(tokens, "b t (h w) (c p q) -> b t c (h p) (w q)", h=gh, w=gw,
                         p=self.config.patch_size, q=self.config.patch_size)

    def _check(self, x, t, rays, actions, drop_cond):
        c = self.config
        expected = (c.channels, *c.image_size)
        if x.dim() != 5 or tuple(x.shape[2:]) != expected:
            raise ValueError(f"x must be [B, T, {expected[0]}, {expected[1]}, {expected[2]}], got {tuple(x.shape)}")
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise ValueError(f"t must be [B, T] = {tuple(x.shape[:2])}, got {tuple(t.shape)}")
        if c.camera_cond:
            if rays is None:
                raise ValueError("rays [B, T, 6, H, W] are required: the model has camera_cond=True")
            if tuple(rays.shape) != (*x.shape[:2], 6, *c.image_size):
                raise ValueError(f"rays must be [B, T, 6, H, W] = {(*x.shape[:2], 6, *c.image_size)}, got {tuple(rays.shape)}")
        if c.action_dim:
            if actions is None:
                raise ValueError(f"actions [B, T, {c.action_dim}] are required: the model has action_dim={c.action_dim}")
            if tuple(actions.shape) != (*x.shape[:2], c.action_dim):
                raise ValueError(f"actions must be [B, T, {c.action_dim}], got {tuple(actions.shape)}")
        if drop_cond is not None and tuple(drop_cond.shape) != (x.shape[0],):
            raise ValueError(f"drop_cond must be [B] = ({x.shape[0]},), got {tuple(drop_cond.shape)}")

    def forward(self, x: torch.Tensor, t: torch.Tensor, rays: Optional[torch.Tensor] = None,
                actions: Optional[torch.Tensor] = None, drop_cond: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        self._check(x, t, rays, actions, drop_cond)
        keep = None if drop_cond is None else (~drop_cond).to(x.dtype)[:, None, None]
        tokens = self.patch_embed(self._patchify(x))
        if self.ray_embed is not None:
            ray_tokens = self.ray_embed(self._patchify(rays.to(x.dtype)))
            tokens = tokens + (ray_tokens if keep is None else ray_tokens * keep[..., None])
        cond = self.time_embed(timestep_embedding(t, self.config.hidden_dim).to(tokens.dtype))
        if self.action_embed is not None:
            action_cond = self.action_embed(actions.to(tokens.dtype))
            cond = cond + (action_cond if keep is None else action_cond * keep)
        spatial_rope = (self.spatial_cos, self.spatial_sin)
        temporal_rope = rope_1d(x.shape[1], self.config.hidden_dim // self.config.num_heads, device=x.device)
        hidden = None
        mode = self.activation_checkpointing if torch.is_grad_enabled() else "none"
        for depth, block in enumerate(self.blocks, start=1):
            if mode == "full":
                tokens = recompute(block, tokens, cond, spatial_rope, temporal_rope)
            else:
                tokens = block(tokens, cond, spatial_rope, temporal_rope, recompute_sublayers=mode == "selective")
            if depth == self.config.align_depth:
                hidden = tokens
        shift, scale = self.final_modulation(cond).chunk(2, dim=-1)
        out = self.unpatchify(self.out(modulate(self.final_norm(tokens), shift, scale)))
        if self.config.prediction == "v":
            return out, hidden
        x0_hat = out if self.config.prediction == "x0" else out + last_clean_frame(x, t)[:, None].to(out.dtype)
        tt = t[:, :, None, None, None].to(out.dtype)
        v = (x - x0_hat) / tt.clamp_min(PREDICTION_T_MIN)
        return v.masked_fill(tt == 0, 0.0), hidden  # clean frames: v = 0, so x0_from_v gives them back


def build_model(config: dict | VideoDiTConfig) -> VideoDiT:
    """A VideoDiT from a VideoDiTConfig or a plain dict of its fields (e.g. a hydra node)."""
    if not isinstance(config, VideoDiTConfig):
        known = set(VideoDiTConfig.__dataclass_fields__)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"model config has unknown keys {unknown}; known: {sorted(known)}")
        config = VideoDiTConfig(**{k: (tuple(v) if k == "image_size" and not isinstance(v, int) else v)
                                   for k, v in config.items()})
    return VideoDiT(config)


def config_dict(config: VideoDiTConfig) -> dict:
    out = asdict(config)
    out["image_size"] = list(out["image_size"])
    return out
