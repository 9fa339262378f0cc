"""An independent float64 attention for the attention tests: no einops, no SDPA, no gfcore code.

The attended axis is moved next to D with movedim, scores come from einsum, and the causal
mask and RoPE are written out directly.
"""
import torch


def naive_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * x.dim()
    shape[axis], shape[-1] = cos.shape
    cos, sin = cos.double().reshape(shape), sin.double().reshape(shape)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def naive_attention(q, k, v, mode: str, causal: bool = False, rope=None, scale=None,
                    return_lse: bool = False):
    """float64 attention of [B, T, P, H, D] tensors along T (temporal) or P (spatial)."""
    axis = 1 if mode == "temporal" else 2
    q, k, v = q.double(), k.double(), v.double()
    if rope is not None:
        q = naive_rope(q, rope[0], rope[1], axis)
        k = naive_rope(k, rope[0], rope[1], axis)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # [..., H, S, D] with the attended axis S second to last.
    qs, ks, vs = (x.movedim(axis, 3) for x in (q, k, v))
    scores = torch.einsum("...id,...jd->...ij", qs, ks) * scale
    if causal:
        s = scores.shape[-1]
        hidden = torch.arange(s)[None, :] > torch.arange(s)[:, None]
        scores = scores.masked_fill(hidden.to(scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("...ij,...jd->...id", torch.softmax(scores, dim=-1), vs).movedim(3, axis)
    if return_lse:
        return out, lse.movedim(3, axis)
    return out


def random_rope(seq_len: int, head_dim: int, device="cpu", generator=None):
    """Genuine rotations (cos^2 + sin^2 = 1) at random angles."""
    angles = torch.rand(seq_len, head_dim // 2, generator=generator, dtype=torch.float64) * 6.28
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().float().to(device), angles.sin().float().to(device)
