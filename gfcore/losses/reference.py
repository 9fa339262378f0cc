"""The Geometry Forcing alignment loss in plain PyTorch: the readable specification.

For each target i (a teacher layer), with the projector f_i and the head g_i:
    z = f_i(h)                       angular_i = -mean_tokens cos(y_i, z)
    zhat = z / |z|                   scale_i   = mean_{tokens, channels} (g_i(zhat) - y_i)^2
angular and scale are the means of angular_i and scale_i over the targets (geometry_forcing.md).
"""
import torch
import torch.nn.functional as F


def reference_alignment_terms(h, y, projectors, heads, eps: float):
    """h: [N, hidden]; y: [N, targets, target_dim]. Returns (angular, scale, mean cosine)."""
    angular, scale, cosine = [], [], []
    for i, (projector, head) in enumerate(zip(projectors, heads)):
        y_i = y[:, i]
        z = projector(h)
        cos = F.cosine_similarity(z, y_i, dim=-1, eps=eps)
        zhat = F.normalize(z, dim=-1, eps=eps)
        angular.append(-cos.mean())
        scale.append(F.mse_loss(head(zhat), y_i))
        cosine.append(cos.detach().to(torch.float64 if cos.dtype == torch.float64 else torch.float32).mean())
    return torch.stack(angular).mean(), torch.stack(scale).mean(), torch.stack(cosine).mean()
