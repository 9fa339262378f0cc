"""Attention written out as matrix products, with the log-sum-exp the fused kernels save.

These are the CPU kernels of the gfcore::{spatial,temporal}_attention_{fwd,bwd} ops and the
spec of what the CUDA kernels compute step by step (the einops + SDPA functions in
attention_reference.py are the spec of the result). Arithmetic runs in float32 (float64 for
float64 inputs); outputs are cast back to the input dtype, the log-sum-exp stays float32/64.

Backward, per sequence, with s = scale * q_rot k_rot^T, p = exp(s - lse):
  dv = p^T do;  dp = do v^T;  delta = rowsum(do * o);  ds = p * (dp - delta)
  dq_rot = scale * ds k_rot;  dk_rot = scale * ds^T q_rot;  then RoPE transposed.
"""
from typing import Optional, Tuple

import torch
from einops import rearrange

from gfcore.ops.attention_reference import broadcast_rope, rotate_half, rotate_half_transpose


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _patterns(mode: str):
    if mode == "spatial":
        return "b t p h d -> b t h p d", "b t h p d -> b t p h d", "b t h p -> b t p h"
    return "b t p h d -> b p h t d", "b p h t d -> b t p h d", "b p h t -> b t p h"


def _rope_tables(rope_cos, rope_sin, mode, dtype):
    if rope_cos is None:
        return None, None
    return broadcast_rope(rope_cos.to(dtype), mode), broadcast_rope(rope_sin.to(dtype), mode)


def _causal_mask(s: int, device) -> torch.Tensor:
    """True where key j is hidden from query i (j > i)."""
    return torch.ones(s, s, dtype=torch.bool, device=device).triu(1)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      rope_cos: Optional[torch.Tensor], rope_sin: Optional[torch.Tensor],
                      scale: float, causal: bool, mode: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (out [B, T, P, H, D] in q's dtype, lse [B, T, P, H] float32/64)."""
    cd = _compute_dtype(q.dtype)
    to_seq, from_seq, lse_back = _patterns(mode)
    cos, sin = _rope_tables(rope_cos, rope_sin, mode, cd)
    qf, kf, vf = q.to(cd), k.to(cd), v.to(cd)
    if cos is not None:
        qf = qf * cos + rotate_half(qf) * sin
        kf = kf * cos + rotate_half(kf) * sin
    qs, ks, vs = (rearrange(x, to_seq) for x in (qf, kf, vf))
    scores = scale * qs @ ks.transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(_causal_mask(scores.shape[-1], scores.device), float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.exp(scores - lse[..., None]) @ vs
    return (rearrange(out, from_seq).to(q.dtype).contiguous(),
            rearrange(lse, lse_back).contiguous())


def attention_backward(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       rope_cos: Optional[torch.Tensor], rope_sin: Optional[torch.Tensor],
                       scale: float, causal: bool, mode: str):
    """Returns (grad_q, grad_k, grad_v), contiguous, in q's dtype."""
    cd = _compute_dtype(q.dtype)
    to_seq, from_seq, lse_back = _patterns(mode)
    lse_to_seq = lse_back.split(" -> ")[1] + " -> " + lse_back.split(" -> ")[0]
    cos, sin = _rope_tables(rope_cos, rope_sin, mode, cd)
    qf, kf = q.to(cd), k.to(cd)
    if cos is not None:
        qf = qf * cos + rotate_half(qf) * sin
        kf = kf * cos + rotate_half(kf) * sin
    qs, ks, vs, os_, dos = (rearrange(x.to(cd), to_seq) for x in (qf, kf, v, out, grad_out))
    lse_s = rearrange(lse.to(cd), lse_to_seq)
    scores = scale * qs @ ks.transpose(-1, -2)
    if causal:
        scores = scores.masked_fill(_causal_mask(scores.shape[-1], scores.device), float("-inf"))
    p = torch.exp(scores - lse_s[..., None])
    dv = p.transpose(-1, -2) @ dos
    dp = dos @ vs.transpose(-1, -2)
    delta = (dos * os_).sum(-1, keepdim=True)
    ds = p * (dp - delta)
    dq = rearrange(scale * ds @ ks, from_seq)
    dk = rearrange(scale * ds.transpose(-1, -2) @ qs, from_seq)
    if cos is not None:
        dq = dq * cos + rotate_half_transpose(dq * sin)
        dk = dk * cos + rotate_half_transpose(dk * sin)
    dv = rearrange(dv, from_seq)
    return tuple(g.to(q.dtype).contiguous() for g in (dq, dk, dv))
