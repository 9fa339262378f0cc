"""GeometryAlignmentLoss: the drop-in Geometry Forcing alignment loss module."""
import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from gfcore.losses.chunked_path import ChunkedAlignmentFunction
from gfcore.losses.fused_path import FusedAlignmentFunction
from gfcore.losses.modular_path import KernelMetrics
from gfcore.losses.reference import TorchMetrics, reference_alignment_terms
from gfcore.losses.sync_check import warn_if_unsynchronized
from gfcore.losses.targets import kept_tokens, rows, target_views
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
    angular: torch.Tensor  # L_ang: sum_i w_i mean over tokens of -cos(y_i, f_i(h))
    scale: torch.Tensor    # L_scale: sum_i w_i mean over tokens and channels of (g_i(f_i(h)/|f_i(h)|) - y_i)^2
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


def _target_widths(target_dim, num_targets: int) -> List[int]:
    """target_dim as one width per target."""
    if isinstance(target_dim, (list, tuple)):
        if len(target_dim) == 0:
            raise ValueError("target_dim must be a positive int or a non-empty list of them, got []")
        widths = [_positive_int(f"target_dim[{i}]", d) for i, d in enumerate(target_dim)]
        if num_targets not in (1, len(widths)):
            raise ValueError(f"num_targets={num_targets} but target_dim lists {len(widths)} widths: "
                             f"leave num_targets out when target_dim is a list")
        return widths
    return [_positive_int("target_dim", target_dim)] * _positive_int("num_targets", num_targets)


def _per_target(name: str, modules, targets: int) -> List[Optional[nn.Module]]:
    """projector= / head= as one module (or None) per target."""
    if modules is None:
        return [None] * targets
    if isinstance(modules, nn.Module) and not isinstance(modules, nn.ModuleList):
        modules = [modules]
    modules = list(modules)
    if len(modules) != targets or not all(isinstance(m, nn.Module) for m in modules):
        raise ValueError(f"{name} must be an nn.Module (one target) or a list of {targets} nn.Modules, one per "
                         f"target; got {len(modules)} item(s)")
    return modules


def _weights(target_weights, targets: int) -> Tuple[float, ...]:
    if target_weights is None:
        return (1.0 / targets,) * targets
    weights = tuple(float(w) for w in target_weights)
    if len(weights) != targets or not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) == 0:
        raise ValueError(f"target_weights must be {targets} finite non-negative numbers, not all zero; "
                         f"got {list(target_weights)}")
    return weights


class GeometryAlignmentLoss(nn.Module):
    """Angular + scale alignment of a hidden state h with teacher features y (Geometry Forcing).

        loss_fn = GeometryAlignmentLoss(hidden_dim=1152, target_dim=2048)
        out = loss_fn(h, y)          # h [..., hidden_dim], y [..., target_dim]
        (diffusion_loss + out.loss).backward()

    Targets: target_dim=D with num_targets=L takes y [..., L, D] (the layer axis at layer_dim,
    default -2; or a list of L tensors); target_dim=[D_1, ..., D_L] takes a list of tensors
    [..., D_i], one projector (and head) each. The terms are sum_i w_i term_i with
    target_weights w (default 1/L each: the mean). mask (bool, h's token axes) keeps tokens.

    projector= / head=: any modules (one, or a list with one per target) used as they are and
    not owned by the loss (not in its parameters or state_dict: they stay the caller's, e.g.
    inside the DDP-wrapped model). Otherwise gfcore builds the paper's MLPs, whose whole chain
    (GEMMs, bias+SiLU, normalise+cosine, MSE) runs fused. lambda_scale=0 builds no head and
    computes no scale term (out.scale is 0).

    impl: "reference" (plain PyTorch), "fused" (gfcore's kernels for the tensors' device),
    "auto" (fused where built, else reference). chunk_size=N processes N tokens at a time and
    computes all gradients during the forward, so no full-size activation is kept; then only
    `out.loss` carries a gradient (a backward through `out.angular` or `out.scale` raises).
    y is a constant: no gradient flows into it.
    """

    def __init__(self, hidden_dim: Optional[int] = None, target_dim: Union[int, Sequence[int]] = 2048,
                 num_targets: int = 1, projector_dim: int = 2048, head_dim: int = 512, lambda_angular: float = 0.5,
                 lambda_scale: float = 0.05, impl: str = "auto", chunk_size: Optional[int] = None, eps: float = 1e-8,
                 check_finite: bool = True, projector=None, head=None,
                 target_weights: Optional[Sequence[float]] = None, layer_dim: Optional[int] = None):
        super().__init__()
        self.widths = _target_widths(target_dim, num_targets)
        self.target_dim = list(self.widths) if isinstance(target_dim, (list, tuple)) else self.widths[0]
        self.num_targets = len(self.widths)
        _positive_int("projector_dim", projector_dim)
        _positive_int("head_dim", head_dim)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.lambda_angular = float(lambda_angular)
        self.lambda_scale = float(lambda_scale)
        if self.lambda_scale == 0 and head is not None:
            raise ValueError("head= was given but lambda_scale=0 computes no scale term: drop one of them")
        external_projectors = _per_target("projector", projector, self.num_targets)
        external_heads = _per_target("head", head, self.num_targets)
        self.external = any(m is not None for m in external_projectors + external_heads)
        if chunk_size is not None:
            _positive_int("chunk_size", chunk_size)
            if impl == "reference":
                raise ValueError("chunk_size needs impl='fused' or 'auto': the reference keeps every activation")
            if self.external:
                raise ValueError("chunk_size needs gfcore's own projector and head: projector= or head= modules "
                                 "cannot be run in chunks inside the fused chain")
        if hidden_dim is None and None in external_projectors:
            raise ValueError("hidden_dim is needed to build gfcore's projector (or pass projector=)")
        self.hidden_dim = None if hidden_dim is None else _positive_int("hidden_dim", hidden_dim)
        self.target_weights = _weights(target_weights, self.num_targets)
        if layer_dim is not None and (isinstance(layer_dim, bool) or not isinstance(layer_dim, int)):
            raise ValueError(f"layer_dim must be an int (the axis of y holding the targets), got {layer_dim!r}")
        self.layer_dim = layer_dim
        self.impl = impl
        self.chunk_size = chunk_size
        self.eps = float(eps)
        self.check_finite = check_finite
        # gfcore's own modules are submodules (parameters, state_dict); the caller's are only referenced.
        projectors = [make_projector(hidden_dim, projector_dim, width) if m is None else None
                      for m, width in zip(external_projectors, self.widths)]
        heads = [make_head(width, head_dim) if m is None and self.lambda_scale != 0 else None
                 for m, width in zip(external_heads, self.widths)]
        self.projector = self._own(projectors)
        self.head = self._own(heads)
        self._external_modules = (external_projectors, external_heads)  # a tuple: not registered
        self._sync_checked = False

    def _own(self, modules: List[Optional[nn.Module]]):
        """One target: the module itself; several: a ModuleList (None where the caller's runs)."""
        if all(m is None for m in modules):
            return None
        if self.num_targets == 1:
            return modules[0]
        return nn.ModuleList([nn.Identity() if m is None else m for m in modules])

    def extra_repr(self) -> str:
        return (f"lambda_angular={self.lambda_angular}, lambda_scale={self.lambda_scale}, impl={self.impl!r}, "
                f"chunk_size={self.chunk_size}")

    def target_modules(self) -> List[Tuple[nn.Module, Optional[nn.Module]]]:
        """[(projector, head or None)] per target: the caller's where given, else gfcore's."""
        external_projectors, external_heads = self._external_modules

        def owned(container, i):
            if container is None:
                return None
            return container if self.num_targets == 1 else container[i]

        pairs = []
        for i in range(self.num_targets):
            projector = external_projectors[i] if external_projectors[i] is not None else owned(self.projector, i)
            head = external_heads[i] if external_heads[i] is not None else owned(self.head, i)
            pairs.append((projector, head))
        return pairs

    def flat_parameters(self) -> List[torch.Tensor]:
        """gfcore's own MLPs, per target: W1, b1, W2, b2, W3, b3 (projector), then W4, b4, W5, b5
        (head, when lambda_scale != 0). Only meaningful without projector= / head=."""
        flat = []
        for projector, head in self.target_modules():
            for linear in (projector[0], projector[2], projector[4]) + ((head[0], head[2]) if head is not None else ()):
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
        too_wide = [d for d in self.widths if dtype is not None and not fused_row_supported(device.type, dtype, d)]
        if too_wide and not self.external:
            message = (f"the fused {device.type} kernels do not take target_dim={too_wide[0]} in {dtype} "
                       f"(rows are held in registers)")
            if self.impl == "fused":
                raise ValueError(message + "; use impl='auto' or 'reference'")
            warn_once(f"GeometryAlignmentLoss: {message}; using the reference implementation")
            return "reference"
        return "fused"

    # -- input checks: every message names the argument ------------------------------------

    def _check_inputs(self, h: torch.Tensor, y):
        y_tensors = list(y) if isinstance(y, (list, tuple)) else [y]
        if not isinstance(h, torch.Tensor) or not all(isinstance(t, torch.Tensor) for t in y_tensors):
            raise TypeError("h and y must be tensors")
        if not h.is_floating_point():
            raise TypeError(f"h must be a floating-point tensor, got {h.dtype}")
        if h.dim() < 1 or (self.hidden_dim is not None and h.shape[-1] != self.hidden_dim):
            raise ValueError(f"h must have last dimension hidden_dim={self.hidden_dim}, got shape {tuple(h.shape)}")
        h_lead = tuple(h.shape[:-1])
        views = target_views(y, self.widths, self.layer_dim, h_lead, h.device)
        if h.numel() == 0:
            raise ValueError(f"h is empty (shape {tuple(h.shape)}): there are no tokens to align")
        owned = next(self.parameters(), None)
        if owned is not None and owned.device != h.device:
            raise ValueError(f"h is on {h.device} but the loss parameters are on {owned.device}: "
                             f"call loss_fn.to({str(h.device)!r})")
        if not torch.is_autocast_enabled(h.device.type):
            if owned is not None and h.dtype != owned.dtype:
                raise TypeError(f"h is {h.dtype} but the loss parameters are {owned.dtype}: call "
                                f"loss_fn.to({h.dtype}) or run under torch.autocast")
            # Outside autocast nothing is cast behind the caller's back (as for h and the
            # parameters); under autocast, like any autocast op, y of any floating dtype is
            # taken and computed in the autocast dtype.
            for view in views:
                if view.dtype != h.dtype:
                    raise TypeError(f"y is {view.dtype} but h is {h.dtype}: pass y.to({h.dtype}) or run under "
                                    f"torch.autocast (which computes both in its dtype)")
        return h.reshape(-1, h.shape[-1]), [view.detach() for view in views]

    def _compute_dtype(self, h: torch.Tensor) -> torch.dtype:
        if torch.is_autocast_enabled(h.device.type):
            return torch.get_autocast_dtype(h.device.type)
        return h.dtype

    def forward(self, h: torch.Tensor, y, mask: Optional[torch.Tensor] = None) -> AlignmentOutput:
        """h [..., hidden_dim]; y as the class docstring says; mask bool [...] (h's token axes)."""
        if not self._sync_checked and not torch.compiler.is_compiling():
            self._sync_checked = True  # once per module: the wrapping does not change between steps
            warn_if_unsynchronized(self)
        h2d, ys = self._check_inputs(h, y)
        keep = kept_tokens(mask, h.shape[:-1], h.device)
        if keep is not None:
            h2d, ys = h2d.index_select(0, keep), [rows(y_i).index_select(0, keep) for y_i in ys]
        compute = self._compute_dtype(h)
        impl = self.resolved_impl(h.device, compute)
        path = impl + (".chunked" if self.chunk_size else "") + (".modules" if self.external else "")
        with nvtx_range(f"gfcore.alignment_loss.{path}"):
            if self.external or impl == "reference":
                projectors, heads = zip(*self.target_modules())
                metrics = KernelMetrics if impl == "fused" else TorchMetrics
                angular, scale, cosine = reference_alignment_terms(
                    h2d, [rows(y_i) for y_i in ys], projectors, heads, self.eps, compute, self.target_weights,
                    metrics, self.check_finite)
            elif self.chunk_size is not None:
                # Chunked mode runs the fused ops, each on its compiled kernel or its reference.
                params = self.flat_parameters()
                loss, angular, scale, cosine = ChunkedAlignmentFunction.apply(
                    h2d, compute, self.eps, self.check_finite, self.chunk_size, self.lambda_angular,
                    self.lambda_scale, self.target_weights, *ys, *params)
                if loss.requires_grad:  # the terms join the graph only to refuse a backward through them
                    angular = _ForwardOnlyTerm.apply(angular, h2d, *params)
                    scale = _ForwardOnlyTerm.apply(scale, h2d, *params)
                return AlignmentOutput(loss, angular, scale, cosine)
            else:
                angular, scale, cosine = FusedAlignmentFunction.apply(
                    h2d, compute, self.eps, self.check_finite, self.target_weights, *ys, *self.flat_parameters())
            if self.lambda_scale == 0:
                scale = torch.zeros_like(cosine)
            loss = self.lambda_angular * angular + self.lambda_scale * scale
            return AlignmentOutput(loss, angular, scale, cosine)
