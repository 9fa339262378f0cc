"""Dense optical flow by pyramidal Lucas-Kanade (deterministic, no learned weights).

Used by RPE to find where each pixel of frame i appears in frame j. Every pixel p gets its
own Lucas-Kanade problem: find the displacement d minimising
    sum over q in a window around p of (J(q + d) - I(q))^2,
solved by Gauss-Newton steps with the gradients of I held fixed (the "inverse" form, stable
because the 2x2 normal matrix does not change). Each pixel's whole window is warped with
that pixel's own d (not a dense warp of J followed by pooling, which couples neighbouring
pixels and drifts). A coarse-to-fine pyramid handles displacements of many pixels.

Conventions: images [C, H, W] in [0, 1] (converted to luminance); flow [2, H, W] holds
(dx, dy) in pixels such that I(x, y) ~ J(x + dx, y + dy).
Accuracy on clean synthetic translations is ~0.02-0.05 px (bilinear sampling is the floor).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [1, 1, H, W] luminance in float32 (float64 for float64 input)."""
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    image = image.to(dtype)
    if image.shape[0] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=dtype, device=image.device).view(3, 1, 1)
        image = (image * weights).sum(0, keepdim=True)
    elif image.shape[0] != 1:
        image = image.mean(0, keepdim=True)
    return image[None]


def _normalised_grid(xs: torch.Tensor, ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return torch.stack([xs * (2.0 / max(width - 1, 1)) - 1, ys * (2.0 / max(height - 1, 1)) - 1], dim=-1)


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample image [N, C, H, W] at (x + dx, y + dy) for flow [N, 2, H, W] (bilinear, border)."""
    _, _, height, width = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=flow.dtype, device=flow.device),
        torch.arange(width, dtype=flow.dtype, device=flow.device),
        indexing="ij",
    )
    grid = _normalised_grid(xs + flow[:, 0], ys + flow[:, 1], height, width)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Central differences with replicated borders, [N, 1, H, W] each."""
    padded = F.pad(image, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    return gx, gy


def _windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """[1, 1, H, W] -> [H*W, window*window]: each pixel's neighbourhood (replicated border)."""
    r = window // 2
    return F.unfold(F.pad(x, (r, r, r, r), mode="replicate"), window)[0].T


def _pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    pyramid = [image]
    for _ in range(levels - 1):
        if min(pyramid[-1].shape[-2:]) < 32:
            break
        pyramid.append(F.interpolate(pyramid[-1], scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False))
    return pyramid


def _refine(img_i: torch.Tensor, img_j: torch.Tensor, flow: torch.Tensor, window: int, iterations: int) -> torch.Tensor:
    """Gauss-Newton refinement of flow [2, H, W] at one pyramid level."""
    _, _, height, width = img_i.shape
    gx, gy = _gradients(img_i)
    win_x, win_y, win_i = _windows(gx, window), _windows(gy, window), _windows(img_i, window)
    a11, a12, a22 = (win_x * win_x).sum(1), (win_x * win_y).sum(1), (win_y * win_y).sum(1)
    ridge = 1e-3 * (a11 + a22).mean()  # damps steps along directions without texture
    a11, a22 = a11 + ridge, a22 + ridge
    det = a11 * a22 - a12 * a12

    r = window // 2
    like = dict(dtype=img_i.dtype, device=img_i.device)
    offsets = torch.arange(-r, r + 1, **like)
    off_y, off_x = torch.meshgrid(offsets, offsets, indexing="ij")
    ys, xs = torch.meshgrid(torch.arange(height, **like), torch.arange(width, **like), indexing="ij")
    base_x = xs.reshape(-1, 1) + off_x.reshape(1, -1)
    base_y = ys.reshape(-1, 1) + off_y.reshape(1, -1)
    disp = flow.reshape(2, -1).T.clone()  # [H*W, 2]
    for _ in range(iterations):
        grid = _normalised_grid(base_x + disp[:, :1], base_y + disp[:, 1:], height, width)[None]
        sampled = F.grid_sample(img_j, grid, mode="bilinear", padding_mode="border", align_corners=True)[0, 0]
        residual = sampled - win_i
        b1, b2 = -(win_x * residual).sum(1), -(win_y * residual).sum(1)
        step = torch.stack([(a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det], dim=1)
        disp = disp + step.clamp(-2.0, 2.0)  # bounded steps keep flat regions from running away
    return disp.T.reshape(2, height, width)


def lucas_kanade_flow(
    image_i: torch.Tensor,
    image_j: torch.Tensor,
    levels: int = 4,
    iterations: int = 5,
    window: int = 9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense flow from image_i to image_j ([C, H, W] each), plus the texture strength.

    Returns flow [2, H, W] and min_eig [H, W]: the smaller eigenvalue of the windowed
    gradient structure tensor of image_i (mean over the window; near 0 in flat regions,
    where the flow is not determined and should not be trusted).
    """
    pyr_i = _pyramid(to_gray(image_i), levels)
    pyr_j = _pyramid(to_gray(image_j), levels)
    flow = torch.zeros(2, *pyr_i[-1].shape[-2:], dtype=pyr_i[0].dtype, device=pyr_i[0].device)
    for level in reversed(range(len(pyr_i))):
        img_i, img_j = pyr_i[level], pyr_j[level]
        if flow.shape[-2:] != img_i.shape[-2:]:
            scale_x, scale_y = img_i.shape[-1] / flow.shape[-1], img_i.shape[-2] / flow.shape[-2]
            flow = F.interpolate(flow[None], size=img_i.shape[-2:], mode="bilinear", align_corners=False)[0]
            flow = torch.stack([flow[0] * scale_x, flow[1] * scale_y])
        flow = _refine(img_i, img_j, flow, window, iterations)

    gx, gy = _gradients(pyr_i[0])
    win_x, win_y = _windows(gx, window), _windows(gy, window)
    a11, a12, a22 = (win_x * win_x).mean(1), (win_x * win_y).mean(1), (win_y * win_y).mean(1)
    min_eig = (a11 + a22) / 2 - torch.sqrt(((a11 - a22) / 2) ** 2 + a12**2)
    return flow, min_eig.reshape(pyr_i[0].shape[-2:])


def forward_backward_error(flow_ij: torch.Tensor, flow_ji: torch.Tensor) -> torch.Tensor:
    """|flow_ij(p) + flow_ji(p + flow_ij(p))| per pixel [H, W]: ~0 where the two agree."""
    back = warp(flow_ji[None], flow_ij[None])[0]
    return (flow_ij + back).norm(dim=0)
