"""VGGT model: checkpoint layout, numerics of each documented subtlety, and an independent
functional reference of the aggregator written from the architecture notes (not from gfcore)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from gfcore.geometry import MANIFEST_PATH, VGGT, small_config
from gfcore.geometry.aggregator import first_frame_slots
from gfcore.geometry.camera import activate_pose
from gfcore.geometry.dino import resize_pos_embed
from gfcore.geometry.dpt import FusionBlock, ResidualConvUnit, uv_embedding
from gfcore.geometry.rope import RoPE2D, patch_positions

pytestmark = pytest.mark.usefixtures("single_thread")


HEADLESS = {"enable_camera": False, "enable_depth": False, "enable_point": False}


def small_model(seed=0, heads=False, **overrides):
    """The small configuration with tokens and layer scales at full strength; heads are slow to
    initialise on CPU, so they are built only where a test needs them."""
    torch.manual_seed(seed)
    model = VGGT(**{**small_config(), **({} if heads else HEADLESS), **overrides}).eval()
    with torch.no_grad():  # make every parameter (layer scales, tokens) matter at full strength
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 1 and "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        model.aggregator.camera_token.normal_()
        model.aggregator.register_token.normal_()
    return model


# ---------------------------------------------------------------- checkpoint layout
def test_vggt1b_state_dict_matches_manifest_on_meta():
    manifest = json.loads(MANIFEST_PATH.read_text())
    expected = [(k, tuple(shape)) for k, shape, _ in manifest["keys"] if not k.startswith("track_head.")]
    with torch.device("meta"):
        model = VGGT()
    state = model.state_dict()
    assert [(k, tuple(v.shape)) for k, v in state.items()] == expected  # same keys, shapes and order
    assert all(v.dtype == torch.float32 for v in state.values())
    track = sum(math.prod(shape) for k, shape, _ in manifest["keys"] if k.startswith("track_head."))
    assert sum(v.numel() for v in state.values()) == manifest["num_params"] - track
    agg = sum(v.numel() for k, v in state.items() if k.startswith("aggregator."))
    assert agg == 909_112_320


def test_normalisation_buffers_are_not_persistent():
    model = small_model(heads=True)
    assert not any("mean" in k or "std" in k for k in model.state_dict())
    assert torch.allclose(model.aggregator.image_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert torch.allclose(model.aggregator.image_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))


def test_layernorm_eps_per_part():
    model = small_model(heads=True)
    dino = model.aggregator.patch_embed
    assert {m.eps for m in dino.modules() if isinstance(m, torch.nn.LayerNorm)} == {1e-6}
    for block in list(model.aggregator.frame_blocks) + list(model.aggregator.global_blocks):
        assert block.norm1.eps == block.norm2.eps == block.attn.q_norm.eps == block.attn.k_norm.eps == 1e-5
    cam = model.camera_head
    assert cam.token_norm.eps == cam.trunk_norm.eps == cam.trunk[0].norm1.eps == 1e-5
    assert cam.adaln_norm.eps == 1e-6 and not cam.adaln_norm.elementwise_affine
    assert model.depth_head.norm.eps == 1e-5


def test_small_config_shapes_on_odd_grid():
    model = small_model(heads=True)
    images = torch.rand(2, 3, 3, 28, 42)
    with torch.no_grad():
        outputs, start = model.aggregator(images)
        pred = model(images)
    assert start == 5 and len(outputs) == 2
    assert all(o.shape == (2, 3, 5 + 2 * 3, 768) for o in outputs)
    assert pred["pose_enc"].shape == (2, 3, 9) and len(pred["pose_enc_list"]) == 4
    assert pred["depth"].shape == (2, 3, 28, 42, 1) and pred["depth_conf"].shape == (2, 3, 28, 42)
    assert pred["world_points"].shape == (2, 3, 28, 42, 3)
    assert pred["world_points_conf"].shape == (2, 3, 28, 42)
    assert (pred["depth"] > 0).all() and (pred["depth_conf"] > 1).all()
    assert all(torch.isfinite(v).all() for k, v in pred.items() if k != "pose_enc_list")


def test_bad_images_raise_clear_errors():
    model = small_model()
    with pytest.raises(ValueError, match="multiples of 14"):
        model.aggregator(torch.rand(1, 2, 3, 30, 28))
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        model.aggregator(torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="patch_embed"):
        VGGT(**{**small_config(), "embed_dim": 512, "num_heads": 8})


# ---------------------------------------------------------------- independent aggregator reference
def _ln(x, sd, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _rope_pairs(t, pos, base=100.0):
    """Rotate pairs (j, j + n/2) of each half (y half, then x half) by pos * base^(-2j/n)."""
    d = t.shape[-1]
    out = t.clone()
    half = d // 2
    for axis in range(2):
        seg = t[..., axis * half:(axis + 1) * half]
        p = pos[..., axis].to(t.dtype)[:, None, :, None]  # [B, 1, N, 1]
        n2 = half // 2
        freq = base ** (-2.0 * torch.arange(n2, dtype=torch.float64) / half)
        ang = p * freq.to(t.dtype)
        a, b = seg[..., :n2], seg[..., n2:]
        out[..., axis * half:axis * half + n2] = a * ang.cos() - b * ang.sin()
        out[..., axis * half + n2:(axis + 1) * half] = b * ang.cos() + a * ang.sin()
    return out


def _block(x, sd, prefix, heads, eps, qk_norm, pos):
    h = _ln(x, sd, prefix + ".norm1", eps)
    b, n, c = h.shape
    qkv = h @ sd[prefix + ".attn.qkv.weight"].T + sd[prefix + ".attn.qkv.bias"]
    q, k, v = qkv.reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    if qk_norm:
        q = _ln(q, sd, prefix + ".attn.q_norm", 1e-5)
        k = _ln(k, sd, prefix + ".attn.k_norm", 1e-5)
    if pos is not None:
        q, k = _rope_pairs(q, pos), _rope_pairs(k, pos)
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), dim=-1)
    a = (att @ v).transpose(1, 2).reshape(b, n, c)
    x = x + sd[prefix + ".ls1.gamma"] * (a @ sd[prefix + ".attn.proj.weight"].T + sd[prefix + ".attn.proj.bias"])
    h = _ln(x, sd, prefix + ".norm2", eps)
    h = F.gelu(h @ sd[prefix + ".mlp.fc1.weight"].T + sd[prefix + ".mlp.fc1.bias"])
    return x + sd[prefix + ".ls2.gamma"] * (h @ sd[prefix + ".mlp.fc2.weight"].T + sd[prefix + ".mlp.fc2.bias"])


def reference_aggregator(sd, images, cfg):
    B, S, _, H, W = images.shape
    gh, gw = H // 14, W // 14
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (images.reshape(B * S, 3, H, W) - mean) / std
    p = "aggregator.patch_embed."
    x = F.conv2d(x, sd[p + "patch_embed.proj.weight"], sd[p + "patch_embed.proj.bias"], stride=14)
    x = x.flatten(2).transpose(1, 2)
    pe = sd[p + "pos_embed"]
    grid_pe = pe[0, 1:].reshape(37, 37, -1).permute(2, 0, 1)[None]
    if (gh, gw) != (37, 37):
        grid_pe = F.interpolate(grid_pe, size=(gh, gw), mode="bicubic", antialias=True)
    grid_pe = grid_pe[0].permute(1, 2, 0).reshape(gh * gw, -1)
    cls = sd[p + "cls_token"].expand(B * S, 1, -1) + pe[:, :1]
    regs = sd[p + "register_tokens"].expand(B * S, -1, -1)
    x = torch.cat([cls, regs, x + grid_pe], dim=1)
    for i in range(cfg["dino_depth"]):
        x = _block(x, sd, f"{p}blocks.{i}", 6, 1e-6, False, None)
    x = _ln(x, sd, p + "norm", 1e-6)[:, 5:]
    slot = torch.tensor([0] + [1] * (S - 1)).repeat(B)  # frame 0 -> slot 0
    cam = sd["aggregator.camera_token"][0][slot]
    reg = sd["aggregator.register_token"][0][slot]
    tokens = torch.cat([cam, reg, x], dim=1)
    P, C = tokens.shape[1], tokens.shape[2]
    rows = torch.arange(gh).repeat_interleave(gw) + 1
    cols = torch.arange(gw).repeat(gh) + 1
    pos = torch.cat([torch.zeros(5, 2, dtype=torch.long), torch.stack([rows, cols], 1)])[None]
    outs = []
    for i in range(cfg["depth"]):
        tokens = _block(tokens.reshape(B * S, P, C), sd, f"aggregator.frame_blocks.{i}", 6, 1e-5, True,
                        pos.expand(B * S, -1, -1))
        f_out = tokens.reshape(B, S, P, C)
        tokens = _block(tokens.reshape(B, S * P, C), sd, f"aggregator.global_blocks.{i}", 6, 1e-5, True,
                        pos.repeat(1, S, 1).expand(B, -1, -1))
        outs.append(torch.cat([f_out, tokens.reshape(B, S, P, C)], dim=-1))
    return outs


@pytest.mark.parametrize("hw", [(28, 42), (518, 518)])
def test_aggregator_matches_functional_reference(hw):
    cfg = small_config()
    model = small_model(seed=1)
    sd = model.state_dict()
    batch, frames = (2, 3) if hw[0] < 100 else (1, 1)
    base = torch.rand(batch, frames, hw[1], hw[0], 3)
    images = base.permute(0, 1, 4, 3, 2)  # non-contiguous [B, S, 3, H, W]
    assert not images.is_contiguous()
    with torch.no_grad():
        ours, _ = model.aggregator(images)
        ref = reference_aggregator(sd, images.contiguous(), cfg)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_agrees_with_fp32():
    model = small_model(seed=2)
    images = torch.rand(1, 2, 3, 42, 56)
    with torch.no_grad():
        fp32, _ = model.aggregator(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = model.aggregator(images)
    for a, b in zip(fp32, bf16):
        cos = F.cosine_similarity(a.flatten(0, 2), b.float().flatten(0, 2), dim=-1)
        assert cos.min() > 0.99, cos.min()
        assert (a - b.float()).norm() / a.norm() < 0.05


# ---------------------------------------------------------------- documented subtleties
def test_camera_and_register_slot_zero_only_for_first_frame():
    slots = torch.arange(2.0).view(1, 2, 1, 1).expand(1, 2, 3, 4)
    flat = first_frame_slots(slots, batch=2, frames=3).reshape(2, 3, 3, 4)
    assert (flat[:, 0] == 0).all() and (flat[:, 1:] == 1).all()

    model = small_model(seed=3)
    images = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        before, _ = model.aggregator(images)
        model.aggregator.camera_token[:, 1] += 1.0  # the slot of frames 1..S-1
        after, _ = model.aggregator(images)
    c = before[0].shape[-1] // 2  # frame-attention half of layer 0 sees each frame alone
    assert torch.equal(before[0][:, 0, :, :c], after[0][:, 0, :, :c])
    assert not torch.allclose(before[0][:, 1:, :, :c], after[0][:, 1:, :, :c])


def test_pos_embed_unchanged_at_518_and_resized_as_rows_by_cols():
    table = torch.randn(1, 1 + 37 * 37, 8)
    assert resize_pos_embed(table, 37, 37) is table
    rows = torch.arange(37.0).repeat_interleave(37)  # value = row index only
    table = torch.cat([torch.full((1, 1, 1), 7.0), rows.view(1, -1, 1)], dim=1)
    out = resize_pos_embed(table, 2, 5)
    assert out.shape == (1, 11, 1) and out[0, 0, 0] == 7.0
    grid = out[0, 1:, 0].view(2, 5)
    assert torch.allclose(grid, grid[:, :1].expand(2, 5))  # constant along each row
    assert grid[1, 0] > grid[0, 0]
    half = resize_pos_embed(table.to(torch.bfloat16), 3, 3)
    assert half.dtype == torch.bfloat16


def test_rope_rotates_known_vector():
    rope = RoPE2D(100.0)
    t = torch.zeros(1, 1, 1, 8)
    t[..., 0] = 1.0  # first entry of the y half
    t[..., 5] = 1.0  # second entry of the x half (frequency 100^-0.5 = 0.1)
    pos = torch.tensor([[[2, 3]]])
    out = rope(t, pos)[0, 0, 0]
    y, x = 2.0, 3.0
    expected = torch.tensor([math.cos(y), 0, math.sin(y), 0, 0, math.cos(0.1 * x), 0, math.sin(0.1 * x)])
    torch.testing.assert_close(out, expected)


def test_rope_scores_depend_on_relative_position():
    rope = RoPE2D(100.0)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    def score(pq, pk):
        return (rope(q, torch.tensor([[pq]])) * rope(k, torch.tensor([[pk]]))).sum(-1)
    torch.testing.assert_close(score([3, 5], [1, 2]), score([7, 9], [5, 6]))
    assert not torch.allclose(score([3, 5], [1, 2]), score([3, 5], [2, 1]))


def test_patch_positions_layout():
    pos = patch_positions(2, 2, 3, num_special=5)
    assert pos.shape == (2, 11, 2)
    assert (pos[:, :5] == 0).all()
    assert pos[0, 5:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]


def test_dpt_residual_skip_carries_relu():
    unit = ResidualConvUnit(4)
    for conv in (unit.conv1, unit.conv2):
        torch.nn.init.zeros_(conv.weight)
        torch.nn.init.zeros_(conv.bias)
    x = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(unit(x), F.relu(x))  # not x: the official ReLU is in place
    block = FusionBlock(4, has_residual=True)
    torch.nn.init.eye_(block.out_conv.weight[:, :, 0, 0])
    torch.nn.init.zeros_(block.out_conv.bias)
    for u in (block.resConfUnit1, block.resConfUnit2):
        for conv in (u.conv1, u.conv2):
            torch.nn.init.zeros_(conv.weight)
            torch.nn.init.zeros_(conv.bias)
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    expected = F.interpolate(F.relu(a + F.relu(b)), scale_factor=2, mode="bilinear", align_corners=True)
    torch.testing.assert_close(block(a, b), expected)


def test_uv_embedding_matches_formula():
    h, w, c = 3, 5, 8
    aspect = 70 / 42
    emb = uv_embedding(h, w, c, aspect, torch.float32)
    diag = math.sqrt(aspect ** 2 + 1)
    for i in range(h):
        for j in range(w):
            u = -aspect / diag * (w - 1) / w + j * 2 * (aspect / diag) * (w - 1) / w / (w - 1)
            v = -1 / diag * (h - 1) / h + i * 2 * (1 / diag) * (h - 1) / h / (h - 1)
            vals = []
            for coord in (u, v):
                om = [1.0 / 100 ** (k / (c // 4)) for k in range(c // 4)]
                vals += [math.sin(coord * o) for o in om] + [math.cos(coord * o) for o in om]
            torch.testing.assert_close(emb[:, i, j], torch.tensor(vals), atol=1e-6, rtol=1e-5)


def test_camera_head_activation_and_iterations():
    enc = torch.tensor([[[1.0, -2, 3, -0.1, 0.2, 0.3, 2.0, -0.5, 0.7]]])
    out = activate_pose(enc)
    assert out[0, 0, :7].tolist() == enc[0, 0, :7].tolist()  # quaternion left unnormalised
    assert out[0, 0, 7] == 0 and out[0, 0, 8] == pytest.approx(0.7)
    model = small_model(seed=4, enable_camera=True)
    with torch.no_grad():
        history = model.camera_head(model.aggregator(torch.rand(1, 2, 3, 28, 28))[0], num_iterations=3)
    assert len(history) == 3 and all((h[..., 7:] >= 0).all() for h in history)
    assert not torch.allclose(history[0], history[-1])


def test_every_size_is_a_constructor_argument():
    torch.manual_seed(5)
    model = VGGT(img_size=28, embed_dim=384, depth=3, num_heads=4, num_register_tokens=2,
                 patch_embed="dinov2_vits14_reg", dino_depth=1, mlp_ratio=2.0, camera_trunk_depth=1,
                 camera_num_heads=4, dpt_features=16, dpt_out_channels=(8, 16, 32, 32),
                 dpt_layers=(0, 1, 2, 2)).eval()
    state = model.state_dict()
    assert state["aggregator.patch_embed.pos_embed"].shape == (1, 1 + 2 * 2, 384)
    assert state["aggregator.register_token"].shape == (1, 2, 2, 384)
    assert state["aggregator.frame_blocks.2.mlp.fc1.weight"].shape == (768, 384)
    assert state["aggregator.global_blocks.0.attn.q_norm.weight"].shape == (96,)
    assert "aggregator.patch_embed.blocks.1.norm1.weight" not in state
    assert state["depth_head.projects.3.weight"].shape == (32, 768, 1, 1)
    assert state["depth_head.scratch.output_conv1.weight"].shape == (8, 16, 3, 3)
    assert "camera_head.trunk.1.norm1.weight" not in state
    with torch.no_grad():
        outputs, start = model.aggregator(torch.rand(1, 2, 3, 42, 28))
        pred = model(torch.rand(2, 3, 42, 28))  # [S, 3, H, W] gets a batch axis
    assert start == 3 and len(outputs) == 3 and outputs[0].shape == (1, 2, 3 + 6, 768)
    assert pred["depth"].shape == (1, 2, 42, 28, 1) and pred["pose_enc"].shape == (1, 2, 9)
    with pytest.raises(ValueError, match="dpt_layers"):
        VGGT(**{**small_config(), "dpt_layers": (0, 1, 2, 3)})
