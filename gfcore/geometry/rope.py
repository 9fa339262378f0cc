"""2-D rotary position embedding used by the VGGT aggregator, and the token positions it reads."""
from __future__ import annotations

import torch
from torch import nn


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """(y, x) positions for [special tokens, patches] of one frame, repeated over `batch`.

    Patches are numbered row-major starting at 1; special tokens (camera, registers) sit at
    (0, 0), so they never coincide with a patch position. Returns int64 [batch, S + h*w, 2].
    """
    ys = torch.arange(grid_h, device=device)
    xs = torch.arange(grid_w, device=device)
    grid = torch.cartesian_prod(ys, xs) + 1  # [h*w, 2], (y, x), row-major
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0).unsqueeze(0).expand(batch, -1, -1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dimension."""
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class RoPE2D(nn.Module):
    """Rotary embedding over two axes: first half of the head dim rotates by y, second by x.

    Within each half of size n: inv_freq = base^-(arange(0, n, 2) / n), angles = p * inv_freq
    duplicated as cat(angles, angles), out = t * cos + rotate_half(t) * sin. Angles are float32
    products cast to the token dtype before cos/sin, as in the official model.
    Holds no parameters or buffers (nothing appears in the state_dict).
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)

    def _cos_sin(self, pos: torch.Tensor, dim: int, dtype: torch.dtype):
        """cos/sin [B, 1, N, dim] for integer positions [B, N].

        Computed per token rather than looked up in a table indexed by position: the values are
        the same float32 products, and no device sync is needed to size a table.
        """
        inv_freq = 1.0 / (self.base ** (torch.arange(0, dim, 2, device=pos.device).float() / dim))
        angles = (pos.float()[..., None] * inv_freq).to(dtype)
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B, heads, N, d] (d divisible by 4), positions int [B, N, 2] as (y, x)."""
        if tokens.shape[-1] % 4 != 0:
            raise ValueError(f"RoPE2D needs a head dim divisible by 4, got {tokens.shape[-1]}")
        if positions.shape[:2] != (tokens.shape[0], tokens.shape[2]) or positions.shape[-1] != 2:
            raise ValueError(
                f"positions must be [B={tokens.shape[0]}, N={tokens.shape[2]}, 2], got {tuple(positions.shape)}")
        half = tokens.shape[-1] // 2
        out = []
        for axis, part in enumerate((tokens[..., :half], tokens[..., half:])):  # y half, then x half
            cos, sin = self._cos_sin(positions[..., axis], half, tokens.dtype)
            out.append(part * cos + rotate_half(part) * sin)
        return torch.cat(out, dim=-1)
