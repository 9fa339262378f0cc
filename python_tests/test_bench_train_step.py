"""benchmarks.bench_train_step's FLOP count and teacher presets, against hand computations."""
import sys
from pathlib import Path

import torch

# `benchmarks` is not installed: reach it in the checkout, appended (not prepended) to sys.path so
# that gfcore stays the installed package, as `make test-python` runs it.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train_step import _synthetic_batch, step_flops, vggt_config  # noqa: E402
from gfcore.train import load_config  # noqa: E402
from gfcore.train.objective import draw_noise  # noqa: E402
from gfcore.train.trainer import TrainModule, build_training  # noqa: E402


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 5)

    def forward(self, batch, noise, features):
        return {"loss": self.layer(batch).sum()}


def test_step_flops_of_a_linear_layer():
    # forward 2*N*in*out; backward: only the weight gradient (the input needs none), 2*N*in*out
    module = _Linear()
    assert step_flops(module, torch.randn(7, 6), None, None) == 2 * (2 * 7 * 6 * 5)
    assert all(p.grad is None for p in module.parameters())


def _counted(teacher, projector, head):
    cfg = load_config(["experiment=demo", f"teacher={teacher}", "train.batch_size=1", "train.num_frames=2",
                       f"loss.projector_dim={projector}", f"loss.head_dim={head}"])
    model, objective, targets = build_training(cfg, torch.device("cpu"))
    batch = _synthetic_batch(cfg, torch.device("cpu"), with_depth=True)
    noise = draw_noise((1, 2, 3, *cfg.data.resolution), torch.Generator().manual_seed(0))
    flops = step_flops(TrainModule(model, objective), batch, noise, targets(batch) if targets is not None else None)
    return flops, model, targets


def test_gf_minus_baseline_flops_is_the_alignment_mlp():
    """GF's extra FLOPs over the baseline = the projector + head GEMMs: forward, and twice that
    in the backward (input and weight gradients), over every token of the clip."""
    projector, head = 48, 24
    base, model, _ = _counted("none", projector, head)
    gf, _, targets = _counted("pointmap", projector, head)
    tokens = 1 * 2 * model.config.grid[0] * model.config.grid[1]
    hidden, dim = model.hidden_dim, targets.feature_dim
    macs = hidden * projector + projector * projector + projector * dim + dim * head + head * dim
    assert gf - base == 3 * 2 * tokens * macs


def test_vggt_config_widths():
    from gfcore.geometry import VGGT

    for width in (768, 2048):
        vggt = VGGT(**vggt_config(width))
        assert 2 * vggt.aggregator.patch_embed.embed_dim == width if hasattr(vggt.aggregator.patch_embed, "embed_dim") \
            else True
        assert vggt.camera_head is None and vggt.depth_head is None and vggt.point_head is None
    assert vggt_config(2048)["embed_dim"] == 1024 and vggt_config(2048)["depth"] == 1
    try:
        vggt_config(1024)
    except ValueError as exc:
        assert "--teacher-dim" in str(exc)
    else:
        raise AssertionError("vggt_config(1024) should raise")


def test_step_flops_counts_the_attention_and_restores_its_impl():
    from gfcore.nn.attention import FactorizedAttention

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = FactorizedAttention(16, 2, qk_norm=False, impl="fused")

        def forward(self, batch, noise, features):
            return {"loss": self.attn(batch, mode="spatial").sum()}

    module = Attn()
    B, T, P, D = 1, 2, 5, 16
    counted = step_flops(module, torch.randn(B, T, P, D), None, None)
    assert module.attn.impl == "fused"
    tokens = B * T * P
    # linear layers: forward (qkv + proj), their weight gradients (as much), and the gradient into
    # proj's input (x needs none, so qkv's input gradient is not computed)
    linear = 2 * (2 * tokens * (D * 3 * D + D * D)) + 2 * tokens * D * D
    bmm = 2 * (B * T) * P * P * D  # one of q k^T or probs @ v, all heads
    # attention: 2 products forward, 4 backward (grads of q, k, probs and v)
    assert counted == linear + 6 * bmm
