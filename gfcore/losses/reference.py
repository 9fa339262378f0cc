"""The Geometry Forcing alignment loss in plain PyTorch: the readable specification.

For each target i (a teacher layer), with the projector f_i and the head g_i:
    z = f_i(h)                       angular_i = -mean_tokens cos(y_i, z)
    zhat = z / |z|                   scale_i   = mean_{tokens, channels} (g_i(zhat) - y_i)^2
angular and scale are the means of angular_i and scale_i over the targets (geometry_forcing.md).

Dtypes, as in the fused path: the projector and head run in the compute dtype (the autocast
dtype under torch.autocast, else h's); y is taken in that dtype whatever it arrives in; the
normalisation, cosine and squared error accumulate in float32 (float64 for float64), outside
autocast, and the terms come out in that accumulation dtype. Mixing y's own dtype into the
loss (say float64 teacher features under bf16 autocast) would promote the terms to float64
and hand the backward of mse_loss mixed dtypes, which some torch versions refuse.
"""
import torch
import torch.nn.functional as F


def accumulation_dtype(compute_dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other compute dtype accumulates in float32."""
    return torch.float64 if compute_dtype == torch.float64 else torch.float32


def reference_alignment_terms(h, y, projectors, heads, eps: float, compute_dtype: torch.dtype = None):
    """h: [N, hidden]; y: [N, targets, target_dim]. Returns (angular, scale, mean cosine).

    compute_dtype: the dtype the projector and head compute in (default h.dtype).
    """
    compute = h.dtype if compute_dtype is None else compute_dtype
    acc = accumulation_dtype(compute)
    exact = torch.autocast(h.device.type, enabled=False)  # the loss arithmetic stays in `acc`
    angular, scale, cosine = [], [], []
    for i, (projector, head) in enumerate(zip(projectors, heads)):
        y_i = y[:, i].to(compute).to(acc)
        z = projector(h)
        with exact:
            z = z.to(acc)
            cos = F.cosine_similarity(z, y_i, dim=-1, eps=eps)
            zhat = F.normalize(z, dim=-1, eps=eps).to(compute)
        prediction = head(zhat)
        with exact:
            angular.append(-cos.mean())
            scale.append(F.mse_loss(prediction.to(acc), y_i))
            cosine.append(cos.detach().mean())
    return torch.stack(angular).mean(), torch.stack(scale).mean(), torch.stack(cosine).mean()
