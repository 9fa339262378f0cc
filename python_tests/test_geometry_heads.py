"""Camera and DPT heads against functional references written from the architecture notes."""
import pytest
import math

import torch
import torch.nn.functional as F

from gfcore.geometry import VGGT, small_config

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL_HEADS = {"dpt_features": 16, "dpt_out_channels": (8, 16, 24, 24), "camera_trunk_depth": 2,
               "camera_num_heads": 4}


def model_with_lively_weights(seed):
    torch.manual_seed(seed)
    model = VGGT(**{**small_config(), **SMALL_HEADS}).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name.startswith("camera_head.poseLN") or "empty_pose" in name:
                p.normal_(0, 0.5)
    return model


def _lin(x, sd, prefix):
    return x @ sd[prefix + ".weight"].T + sd[prefix + ".bias"]


def _ln(x, sd, prefix, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _plain_block(x, sd, p, heads):
    h = _ln(x, sd, p + ".norm1")
    b, n, c = h.shape
    q, k, v = _lin(h, sd, p + ".attn.qkv").reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads), -1) @ v
    x = x + sd[p + ".ls1.gamma"] * _lin(a.transpose(1, 2).reshape(b, n, c), sd, p + ".attn.proj")
    h = F.gelu(_lin(_ln(x, sd, p + ".norm2"), sd, p + ".mlp.fc1"))
    return x + sd[p + ".ls2.gamma"] * _lin(h, sd, p + ".mlp.fc2")


def reference_camera(sd, layers, depth, heads, iterations=4):
    p = "camera_head."
    tokens = _ln(layers[-1][:, :, 0], sd, p + "token_norm")
    enc, out = None, []
    for _ in range(iterations):
        cond_in = sd[p + "empty_pose_tokens"].expand(*tokens.shape[:2], 9) if enc is None else enc
        shift, scale, gate = _lin(F.silu(_lin(cond_in, sd, p + "embed_pose")), sd, p + "poseLN_modulation.1").chunk(3, -1)
        normed = F.layer_norm(tokens, tokens.shape[-1:], eps=1e-6)
        x = gate * (normed * (1 + scale) + shift) + tokens
        for i in range(depth):
            x = _plain_block(x, sd, f"{p}trunk.{i}", heads)
        delta = _lin(F.gelu(_lin(_ln(x, sd, p + "trunk_norm"), sd, p + "pose_branch.fc1")), sd, p + "pose_branch.fc2")
        enc = delta if enc is None else enc + delta
        out.append(torch.cat([enc[..., :7], enc[..., 7:].clamp_min(0)], -1))
    return out


def _uv_embed(h, w, c, aspect):
    diag = math.sqrt(aspect ** 2 + 1)
    sx, sy = aspect / diag, 1 / diag
    xs = torch.linspace(-sx * (w - 1) / w, sx * (w - 1) / w, w)
    ys = torch.linspace(-sy * (h - 1) / h, sy * (h - 1) / h, h)
    quarter = c // 4
    omega = 1.0 / 100 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    def sincos(vals):
        ang = vals.double()[..., None] * omega
        return torch.cat([ang.sin(), ang.cos()], -1)
    u = sincos(xs)[None].expand(h, w, -1)
    v = sincos(ys)[:, None].expand(h, w, -1)
    return torch.cat([u, v], -1).float().permute(2, 0, 1)


def _rcu(x, sd, p):
    x = F.relu(x)
    out = F.conv2d(F.relu(F.conv2d(x, sd[p + ".conv1.weight"], sd[p + ".conv1.bias"], padding=1)),
                   sd[p + ".conv2.weight"], sd[p + ".conv2.bias"], padding=1)
    return out + x


def _fuse(x, skip, sd, p, size):
    if skip is not None:
        x = x + _rcu(skip, sd, p + ".resConfUnit1")
    x = _rcu(x, sd, p + ".resConfUnit2")
    size = size or (x.shape[-2] * 2, x.shape[-1] * 2)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    return F.conv2d(x, sd[p + ".out_conv.weight"], sd[p + ".out_conv.bias"])


def reference_dpt(sd, p, layers, hw, start, idx):
    h, w = hw
    gh, gw = h // 14, w // 14
    b, s = layers[0].shape[:2]
    feats = []
    for i, layer in enumerate(idx):
        x = _ln(layers[layer][:, :, start:].reshape(b * s, gh * gw, -1), sd, p + "norm")
        x = x.transpose(1, 2).reshape(b * s, -1, gh, gw)
        x = F.conv2d(x, sd[f"{p}projects.{i}.weight"], sd[f"{p}projects.{i}.bias"])
        x = x + 0.1 * _uv_embed(gh, gw, x.shape[1], w / h)
        if i == 0:
            x = F.conv_transpose2d(x, sd[p + "resize_layers.0.weight"], sd[p + "resize_layers.0.bias"], stride=4)
        elif i == 1:
            x = F.conv_transpose2d(x, sd[p + "resize_layers.1.weight"], sd[p + "resize_layers.1.bias"], stride=2)
        elif i == 3:
            x = F.conv2d(x, sd[p + "resize_layers.3.weight"], sd[p + "resize_layers.3.bias"], stride=2, padding=1)
        feats.append(F.conv2d(x, sd[f"{p}scratch.layer{i + 1}_rn.weight"], padding=1))
    sc = p + "scratch."
    out = _fuse(feats[3], None, sd, sc + "refinenet4", feats[2].shape[-2:])
    out = _fuse(out, feats[2], sd, sc + "refinenet3", feats[1].shape[-2:])
    out = _fuse(out, feats[1], sd, sc + "refinenet2", feats[0].shape[-2:])
    out = _fuse(out, feats[0], sd, sc + "refinenet1", None)
    out = F.conv2d(out, sd[sc + "output_conv1.weight"], sd[sc + "output_conv1.bias"], padding=1)
    out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=True)
    out = out + 0.1 * _uv_embed(h, w, out.shape[1], w / h)
    out = F.relu(F.conv2d(out, sd[sc + "output_conv2.0.weight"], sd[sc + "output_conv2.0.bias"], padding=1))
    out = F.conv2d(out, sd[sc + "output_conv2.2.weight"], sd[sc + "output_conv2.2.bias"])
    out = out.permute(0, 2, 3, 1).reshape(b, s, h, w, -1)
    return out[..., :-1], 1 + out[..., -1].exp()


def test_heads_match_functional_references():
    model = model_with_lively_weights(7)
    sd = model.state_dict()
    images = torch.rand(1, 3, 3, 42, 70)  # 3 x 5 patches: odd sizes through every resize layer
    with torch.no_grad():
        pred = model(images)
        layers, start = model.aggregator(images)
        cams = reference_camera(sd, layers, depth=2, heads=4)
        raw_depth, depth_conf = reference_dpt(sd, "depth_head.", layers, (42, 70), start, (0, 0, 1, 1))
        raw_points, point_conf = reference_dpt(sd, "point_head.", layers, (42, 70), start, (0, 0, 1, 1))
    for ours, ref in zip(pred["pose_enc_list"], cams):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred["depth"], raw_depth.exp(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred["depth_conf"], depth_conf, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred["world_points"], raw_points.sign() * raw_points.abs().expm1(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred["world_points_conf"], point_conf, rtol=1e-4, atol=1e-5)


def test_dpt_frame_chunks_do_not_change_results():
    model = model_with_lively_weights(8)
    images = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        layers, start = model.aggregator(images)
        whole = model.depth_head(layers, (28, 28), start)
        model.depth_head.frames_chunk_size = 2
        chunked = model.depth_head(layers, (28, 28), start)
    torch.testing.assert_close(whole, chunked)
