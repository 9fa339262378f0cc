"""GeometryAlignmentLoss: the drop-in Geometry Forcing alignment loss module."""
from typing import List, NamedTuple, Optional

import torch
from torch import nn

from gfcore.losses.chunked_path import ChunkedAlignmentFunction
from gfcore.losses.fused_path import FusedAlignmentFunction
from gfcore.losses.reference import reference_alignment_terms
from gfcore.losses.sync_check import warn_if_unsynchronized
from gfcore.nvtx import nvtx_range
from gfcore._extension import warn_once
from gfcore.ops.alignment import fused_available, fused_row_supported

IMPLS = ("auto", "fused", "reference")


CHUNKED_TERM_MESSAGE = (
    "GeometryAlignmentLoss(chunk_size=...) computes its gradients during the forward, for out.loss only: "
    "out.angular and out.scale carry none. Backpropagate through out.loss (lambda_angular and lambda_scale set "
    "their weights), or use chunk_size=None to train on the terms separately.")


class _ForwardOnlyTerm(torch.autograd.Function):
    """A loss term whose gradient was never computed (chunked mode): backpropagating through it
    raises instead of silently training nothing."""

    @staticmethod
    def forward(ctx, value, *anchors):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(CHUNKED_TERM_MESSAGE)


class AlignmentOutput(NamedTuple):
    loss: torch.Tensor     # lambda_angular * angular + lambda_scale * scale
    angular: torch.Tensor  # L_ang: mean over tokens and targets of -cos(y, f(h))
    scale: torch.Tensor    # L_scale: mean over tokens, targets and channels of (g(f(h)/|f(h)|) - y)^2
    cosine: torch.Tensor   # mean cosine, detached (for logging)


def make_projector(hidden_dim: int, projector_dim: int, target_dim: int) -> nn.Sequential:
    """f_phi: Linear-SiLU-Linear-SiLU-Linear, hidden_dim -> projector_dim -> projector_dim -> target_dim."""
    return nn.Sequential(nn.Linear(hidden_dim, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
                         nn.SiLU(), nn.Linear(projector_dim, target_dim))


def make_head(target_dim: int, head_dim: int) -> nn.Sequential:
    """g_phi: Linear-SiLU-Linear, target_dim -> head_dim -> target_dim."""
    return nn.Sequential(nn.Linear(target_dim, head_dim), nn.SiLU(), nn.Linear(head_dim, target_dim))


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class GeometryAlignmentLoss(nn.Module):
    """Angular + scale alignment of a hidden state h with teacher features y (Geometry Forcing).

        loss_fn = GeometryAlignmentLoss(hidden_dim=1152, target_dim=2048)
        out = loss_fn(h, y)          # h [..., hidden_dim], y [..., target_dim]
        (diffusion_loss + out.loss).backward()

    impl: "reference" (plain PyTorch), "fused" (gfcore's kernels for the tensors' device),
    "auto" (fused where built, else reference). chunk_size=N processes N tokens at a time and
    computes all gradients during the forward, so no full-size activation is kept; then only
    `out.loss` carries a gradient (a backward through `out.angular` or `out.scale` raises).
    y is a constant: no gradient flows into it.
    """

    def __init__(self, hidden_dim: int, target_dim: int, num_targets: int = 1, projector_dim: int = 2048,
                 head_dim: int = 512, lambda_angular: float = 0.5, lambda_scale: float = 0.05, impl: str = "auto",
                 chunk_size: Optional[int] = None, eps: float = 1e-8, check_finite: bool = True):
        super().__init__()
        self.hidden_dim = _positive_int("hidden_dim", hidden_dim)
        self.target_dim = _positive_int("target_dim", target_dim)
        self.num_targets = _positive_int("num_targets", num_targets)
        _positive_int("projector_dim", projector_dim)
        _positive_int("head_dim", head_dim)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if chunk_size is not None:
            _positive_int("chunk_size", chunk_size)
            if impl == "reference":
                raise ValueError("chunk_size needs impl='fused' or 'auto': the reference keeps every activation")
        self.lambda_angular = float(lambda_angular)
        self.lambda_scale = float(lambda_scale)
        self.impl = impl
        self.chunk_size = chunk_size
        self.eps = float(eps)
        self.check_finite = check_finite
        projectors = [make_projector(hidden_dim, projector_dim, target_dim) for _ in range(num_targets)]
        heads = [make_head(target_dim, head_dim) for _ in range(num_targets)]
        # One target: the modules themselves; several: projector[i] and head[i] are target i's.
        self.projector = projectors[0] if num_targets == 1 else nn.ModuleList(projectors)
        self.head = heads[0] if num_targets == 1 else nn.ModuleList(heads)
        self._sync_checked = False

    def extra_repr(self) -> str:
        return (f"lambda_angular={self.lambda_angular}, lambda_scale={self.lambda_scale}, impl={self.impl!r}, "
                f"chunk_size={self.chunk_size}")

    def target_modules(self):
        """[(projector, head)] per target."""
        if self.num_targets == 1:
            return [(self.projector, self.head)]
        return list(zip(self.projector, self.head))

    def flat_parameters(self) -> List[torch.Tensor]:
        """Per target: W1, b1, W2, b2, W3, b3 (projector) then W4, b4, W5, b5 (head)."""
        flat = []
        for projector, head in self.target_modules():
            for linear in (projector[0], projector[2], projector[4], head[0], head[2]):
                flat += [linear.weight, linear.bias]
        return flat

    def resolved_impl(self, device: torch.device, dtype: Optional[torch.dtype] = None) -> str:
        """The implementation that runs for tensors on `device` computed in `dtype`."""
        if self.impl == "reference":
            return "reference"
        if not fused_available(device.type):
            if self.impl == "fused":
                from gfcore import backends

                raise RuntimeError(f"impl='fused' but gfcore has no compiled {device.type} kernels "
                                   f"(gfcore.backends() == {backends()}); use impl='auto' or rebuild the extension")
            return "reference"
        if dtype is not None and not fused_row_supported(device.type, dtype, self.target_dim):
            message = (f"the fused {device.type} kernels do not take target_dim={self.target_dim} in {dtype} "
                       f"(rows are held in registers)")
            if self.impl == "fused":
                raise ValueError(message + "; use impl='auto' or 'reference'")
            warn_once(f"GeometryAlignmentLoss: {message}; using the reference implementation")
            return "reference"
        return "fused"

    # -- input checks: every message names the argument ------------------------------------

    def _check_inputs(self, h: torch.Tensor, y: torch.Tensor):
        if not isinstance(h, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("h and y must be tensors")
        for name, t in (("h", h), ("y", y)):
            if not t.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if h.dim() < 1 or h.shape[-1] != self.hidden_dim:
            raise ValueError(f"h must have last dimension hidden_dim={self.hidden_dim}, got shape {tuple(h.shape)}")
        if self.num_targets == 1:
            expected = (*h.shape[:-1], self.target_dim)
            layout = "[..., target_dim]"
        else:
            expected = (*h.shape[:-1], self.num_targets, self.target_dim)
            layout = "[..., num_targets, target_dim]"
        if tuple(y.shape) != expected:
            raise ValueError(f"y must be {layout} = {expected} to match h {tuple(h.shape)}, got {tuple(y.shape)}")
        if h.numel() == 0:
            raise ValueError(f"h is empty (shape {tuple(h.shape)}): there are no tokens to align")
        if y.device != h.device:
            raise ValueError(f"y is on {y.device} but h is on {h.device}")
        weight = self.flat_parameters()[0]
        if weight.device != h.device:
            raise ValueError(f"h is on {h.device} but the loss parameters are on {weight.device}: "
                             f"call loss_fn.to({str(h.device)!r})")
        if not torch.is_autocast_enabled(h.device.type) and h.dtype != weight.dtype:
            raise TypeError(f"h is {h.dtype} but the loss parameters are {weight.dtype}: call "
                            f"loss_fn.to({h.dtype}) or run under torch.autocast")
        if not torch.is_autocast_enabled(h.device.type) and y.dtype != h.dtype:
            # Outside autocast nothing is cast behind the caller's back (as for h and the
            # parameters); under autocast, like any autocast op, y of any floating dtype is
            # taken and computed in the autocast dtype.
            raise TypeError(f"y is {y.dtype} but h is {h.dtype}: pass y.to({h.dtype}) or run under torch.autocast "
                            f"(which computes both in its dtype)")
        rows = h.numel() // self.hidden_dim
        return h.reshape(rows, self.hidden_dim), y.reshape(rows, self.num_targets, self.target_dim)

    def _compute_dtype(self, h: torch.Tensor) -> torch.dtype:
        if torch.is_autocast_enabled(h.device.type):
            return torch.get_autocast_dtype(h.device.type)
        return h.dtype

    def forward(self, h: torch.Tensor, y: torch.Tensor) -> AlignmentOutput:
        if not self._sync_checked and not torch.compiler.is_compiling():
            self._sync_checked = True  # once per module: the wrapping does not change between steps
            warn_if_unsynchronized(self)
        h2d, y3d = self._check_inputs(h, y)
        y3d = y3d.detach()
        impl = self.resolved_impl(h.device, self._compute_dtype(h))
        with nvtx_range(f"gfcore.alignment_loss.{impl}{'.chunked' if self.chunk_size else ''}"):
            # Chunked mode runs the fused ops, each on its compiled kernel or its reference.
            if self.chunk_size is not None:
                params = self.flat_parameters()
                loss, angular, scale, cosine = ChunkedAlignmentFunction.apply(
                    h2d, y3d, self._compute_dtype(h), self.eps, self.check_finite, self.chunk_size,
                    self.lambda_angular, self.lambda_scale, *params)
                if loss.requires_grad:  # the terms join the graph only to refuse a backward through them
                    angular = _ForwardOnlyTerm.apply(angular, h2d, *params)
                    scale = _ForwardOnlyTerm.apply(scale, h2d, *params)
                return AlignmentOutput(loss, angular, scale, cosine)
            if impl == "fused":
                angular, scale, cosine = FusedAlignmentFunction.apply(
                    h2d, y3d, self._compute_dtype(h), self.eps, self.check_finite, *self.flat_parameters())
            else:
                if self.check_finite and not torch.compiler.is_compiling() and not bool(torch.isfinite(y3d).all()):
                    raise ValueError("y (the teacher features) holds NaN or Inf values")
                projectors, heads = zip(*self.target_modules())
                angular, scale, cosine = reference_alignment_terms(h2d, y3d, projectors, heads, self.eps,
                                                                   self._compute_dtype(h))
            loss = self.lambda_angular * angular + self.lambda_scale * scale
            return AlignmentOutput(loss, angular, scale, cosine)
