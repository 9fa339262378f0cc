"""VideoDiT and its attention stand-in against independent references."""
import math

import pytest
import torch

from gfcore.models import FactorizedAttention, VideoDiT, VideoDiTConfig, build_model
from gfcore.nn.rope import rope_1d, rope_2d
from conftest import rel_err, saved_bytes
from trainer_helpers import one_torch_thread  # noqa: F401  (autouse fixture)


def naive_attention(attn: FactorizedAttention, x, mode, causal=False, rope=None):
    """Loop-and-einsum reference: explicit softmax, RMS norm and rotation by angle pairs."""
    B, T, P, D = x.shape
    H, d = attn.num_heads, attn.head_dim
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv.split(D, dim=-1)
    q, k, v = (t.reshape(B, T, P, H, d) for t in (q, k, v))
    if mode == "temporal":  # attend over T: move patches next to batch
        q, k, v = (t.permute(0, 2, 1, 3, 4) for t in (q, k, v))  # B, P, T, H, d

    def rms(t, weight):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * weight

    q, k = rms(q, attn.q_norm_weight), rms(k, attn.k_norm_weight)
    if rope is not None:
        cos, sin = rope  # rotate pairs (i, i + d/2) by the table's angle
        angle = torch.atan2(sin[:, : d // 2], cos[:, : d // 2])  # [S, d/2]

        def rotate(t):
            a, b = t[..., : d // 2], t[..., d // 2:]
            c, s = angle.cos()[:, None], angle.sin()[:, None]  # [S, 1, d/2]
            return torch.cat([a * c - b * s, a * s + b * c], -1)

        q, k = rotate(q), rotate(k)
    logits = torch.einsum("xysha,xyzha->xyhsz", q, k) / math.sqrt(d)
    if causal:
        S = logits.shape[-1]
        logits = logits.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.einsum("xyhsz,xyzha->xysha", logits.softmax(-1), v)
    if mode == "temporal":
        out = out.permute(0, 2, 1, 3, 4)
    return out.reshape(B, T, P, D) @ attn.proj.weight.T + attn.proj.bias


@pytest.mark.parametrize("mode,causal", [("spatial", False), ("temporal", False), ("temporal", True)])
def test_attention_matches_reference_odd_noncontiguous(mode, causal):
    attn = FactorizedAttention(24, 3)
    with torch.no_grad():
        attn.q_norm_weight.uniform_(0.5, 1.5)
        attn.k_norm_weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 24, 5, 3).permute(0, 3, 2, 1)  # [2, 3, 5, 24], non-contiguous
    assert not x.is_contiguous()
    seq = 5 if mode == "spatial" else 3
    rope = rope_1d(seq, 8)
    got = attn(x, mode=mode, causal=causal, rope=rope)
    ref = naive_attention(attn, x.contiguous(), mode, causal, rope)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # gradients too
    x1, x2 = x.detach().clone().requires_grad_(), x.detach().contiguous().requires_grad_()
    attn(x1, mode=mode, causal=causal, rope=rope).square().sum().backward()
    naive_attention(attn, x2, mode, causal, rope).square().sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)


def test_attention_bf16_close_to_fp32():
    attn = FactorizedAttention(32, 4)
    x = torch.randn(1, 4, 7, 32)
    rope = rope_1d(7, 8)
    ref = attn(x, mode="spatial", rope=rope)
    got = attn.to(torch.bfloat16)(x.bfloat16(), mode="spatial", rope=rope).float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


def test_attention_rejects_bad_input():
    attn = FactorizedAttention(16, 2)
    with pytest.raises(ValueError, match="x must be"):
        attn(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="mode"):
        attn(torch.randn(1, 2, 3, 16), mode="diagonal")


def test_rope_2d_is_relative():
    """<R(p) q, R(p') k> depends only on p - p' in each grid axis."""
    cos, sin = rope_2d(4, 5, 16)
    q, k = torch.randn(16), torch.randn(16)

    def rot(t, i):
        a, b = t[:8], t[8:]
        return t * cos[i] + torch.cat([-b, a]) * sin[i]

    def idx(r, c):
        return r * 5 + c

    base = rot(q, idx(2, 3)) @ rot(k, idx(1, 1))
    shifted = rot(q, idx(3, 4)) @ rot(k, idx(2, 2))
    other = rot(q, idx(2, 4)) @ rot(k, idx(1, 1))
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(base, other, atol=1e-4)


def _randomized(model: VideoDiT) -> VideoDiT:
    """Zero-initialised output layers make v = 0; give them weights to test the wiring."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modulation" in name or name.startswith("out."):
                p.normal_(0, 0.05)
    return model


def _inputs(B=2, T=3, H=8, W=12, action_dim=0):
    x, t = torch.randn(B, T, 3, H, W), torch.rand(B, T)
    rays = torch.randn(B, T, 6, H, W)
    actions = torch.randn(B, T, action_dim) if action_dim else None
    return x, t, rays, actions


def test_dit_shapes_zero_init_and_hidden():
    model = build_model(dict(image_size=[8, 12], patch_size=4, hidden_dim=32, depth=3, num_heads=2, align_depth=2,
                             action_dim=5))
    x, t, rays, actions = _inputs(action_dim=5)
    v, hidden = model(x, t, rays=rays, actions=actions)
    assert v.shape == x.shape and hidden.shape == (2, 3, 6, 32)
    assert torch.count_nonzero(v) == 0  # zero-initialised output projection


def test_dit_hidden_is_the_align_depth_block_output():
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=3, num_heads=2, align_depth=2)))
    x, t, rays, _ = _inputs(H=8, W=8)
    captured = []
    handle = model.blocks[1].register_forward_hook(lambda m, i, o: captured.append(o))
    _, hidden = model(x, t, rays=rays)
    handle.remove()
    assert torch.equal(hidden, captured[0])


def test_drop_cond_equals_null_condition():
    """Dropping the condition of a clip = zero ray map and zero action embedding for that clip only."""
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1,
                                         action_dim=4)))
    x, t, rays, actions = _inputs(H=8, W=8, action_dim=4)
    drop = torch.tensor([True, False])
    v_drop, _ = model(x, t, rays=rays, actions=actions, drop_cond=drop)
    # reference for clip 0: bypass the embeddings by zeroing their outputs
    hooks = [m.register_forward_hook(lambda mod, inp, out: out * 0) for m in (model.ray_embed, model.action_embed)]
    v_null, _ = model(x, t, rays=rays, actions=actions)
    for hook in hooks:
        hook.remove()
    v_full, _ = model(x, t, rays=rays, actions=actions)
    torch.testing.assert_close(v_drop[0], v_null[0])
    torch.testing.assert_close(v_drop[1], v_full[1])
    assert not torch.allclose(v_drop[0], v_full[0])


def test_noise_level_is_per_frame():
    """Changing frame 2's noise level changes outputs; frames interact only through temporal attention."""
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1,
                                         temporal_causal=True)))
    x, t, rays, _ = _inputs(H=8, W=8)
    v1, _ = model(x, t, rays=rays)
    t2 = t.clone()
    t2[:, 2] = 0.0
    v2, _ = model(x, t2, rays=rays)
    # causal temporal attention: earlier frames do not see frame 2
    torch.testing.assert_close(v1[:, :2], v2[:, :2])
    assert not torch.allclose(v1[:, 2], v2[:, 2])


def test_dit_bf16_close_to_fp32():
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1)))
    x, t, rays, _ = _inputs(H=8, W=8)
    ref, _ = model(x, t, rays=rays)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = model(x, t, rays=rays)
    assert (got.float() - ref).norm() / ref.norm() < 0.05


def test_dit_input_errors_name_the_argument():
    model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=2, num_heads=2, align_depth=1, action_dim=3))
    x, t, rays, actions = _inputs(H=8, W=8, action_dim=3)
    with pytest.raises(ValueError, match="rays"):
        model(x, t, actions=actions)
    with pytest.raises(ValueError, match="actions"):
        model(x, t, rays=rays)
    with pytest.raises(ValueError, match="t must be"):
        model(x, t[:, :2], rays=rays, actions=actions)
    with pytest.raises(ValueError, match="x must be"):
        model(x[..., :4], t, rays=rays, actions=actions)
    with pytest.raises(ValueError, match="unknown keys"):
        build_model(dict(image_size=[8, 8], widht=3))
    with pytest.raises(ValueError, match="align_depth"):
        VideoDiTConfig(image_size=(8, 8), depth=2, align_depth=3)


def test_timestep_embedding_formula():
    """[cos(1000 t w_i), sin(1000 t w_i)] with w_i = 10000^(-i / (dim / 2)), i = 0 .. dim/2 - 1 (float64 by hand)."""
    from gfcore.models.dit import timestep_embedding

    t = torch.tensor([[0.0, 0.25, 1.0], [0.5, 0.001, 0.75]])
    dim = 12
    got = timestep_embedding(t, dim)
    assert got.shape == (2, 3, dim)
    half = dim // 2
    expected = torch.zeros(2, 3, dim, dtype=torch.float64)
    for b in range(2):
        for f in range(3):
            for i in range(half):
                angle = 1000.0 * float(t[b, f]) * 10000.0 ** (-i / half)
                expected[b, f, i], expected[b, f, half + i] = math.cos(angle), math.sin(angle)
    # fp32 angles up to 1000 carry an absolute error of ~1000 * 2^-24 ~ 6e-5
    torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=0)
    torch.testing.assert_close(timestep_embedding(t, dim, scale=1.0)[0, 2, :half].double(),
                               torch.tensor([math.cos(10000.0 ** (-i / half)) for i in range(half)],
                                            dtype=torch.float64), atol=1e-6, rtol=0)


def test_patchify_and_unpatchify_by_hand():
    """Token h * gw + w holds pixel (h p + i, w p + j) of channel c at feature c p^2 + i p + j."""
    model = build_model(dict(image_size=[8, 12], patch_size=4, hidden_dim=32, depth=1, num_heads=2, align_depth=1))
    x = torch.randn(2, 3, 3, 8, 12)
    tokens = model._patchify(x)
    p, gh, gw = 4, 2, 3
    assert tokens.shape == (2, 3, gh * gw, 3 * p * p)
    expected = torch.zeros_like(tokens)
    for h in range(gh):
        for w in range(gw):
            for c in range(3):
                for i in range(p):
                    for j in range(p):
                        expected[:, :, h * gw + w, c * p * p + i * p + j] = x[:, :, c, h * p + i, w * p + j]
    assert torch.equal(tokens, expected)
    assert torch.equal(model.unpatchify(expected), x)


def _reference_dit(model: VideoDiT, x, t, rays, actions=None, drop_cond=None):
    """VideoDiT's forward written out in float64: patch/ray embedding, timestep MLP, adaLN-Zero
    blocks (LayerNorm, x (1 + scale) + shift, gated residual) with the loop-and-einsum attention
    above, final adaLN and the output projection, unpatchified by hand."""
    cfg = model.config
    p, (gh, gw), dim = cfg.patch_size, cfg.grid, cfg.hidden_dim
    B, T = x.shape[:2]

    def patches(img):  # [B, T, C, H, W] -> [B, T, P, C p p]
        C = img.shape[2]
        return img.reshape(B, T, C, gh, p, gw, p).permute(0, 1, 3, 5, 2, 4, 6).reshape(B, T, gh * gw, C * p * p)

    def linear(layer, v):
        return v @ layer.weight.T + layer.bias

    def silu(v):
        return v / (1 + torch.exp(-v))

    def layer_norm(v):
        mean = v.mean(-1, keepdim=True)
        return (v - mean) / torch.sqrt(((v - mean) ** 2).mean(-1, keepdim=True) + 1e-6)

    def mlp(v, seq):  # Linear, GELU (tanh), Linear
        u = linear(seq[0], v)
        u = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        return linear(seq[2], u)

    keep = torch.ones(B, dtype=torch.float64) if drop_cond is None else (~drop_cond).double()
    tokens = linear(model.patch_embed, patches(x)) + keep[:, None, None, None] * linear(model.ray_embed, patches(rays))
    half = dim // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = 1000.0 * t.double()[..., None] * freqs
    emb = torch.cat([angles.cos(), angles.sin()], -1)
    cond = linear(model.time_embed[2], silu(linear(model.time_embed[0], emb)))  # [B, T, D]
    if actions is not None:
        seq = model.action_embed
        cond = cond + keep[:, None, None] * linear(seq[2], silu(linear(seq[0], actions.double())))
    spatial_rope = (model.spatial_cos, model.spatial_sin)
    temporal_rope = tuple(r.double() for r in rope_1d(T, dim // cfg.num_heads))
    hidden = None
    for depth, block in enumerate(model.blocks, start=1):
        mods = linear(block.modulation[1], silu(cond))
        for i in range(3):
            shift, scale, gate = (mods[..., (3 * i + k) * dim:(3 * i + k + 1) * dim][:, :, None] for k in range(3))
            h = layer_norm(tokens) * (1 + scale) + shift
            if i == 0:
                h = naive_attention(block.spatial, h, "spatial", rope=spatial_rope)
            elif i == 1:
                h = naive_attention(block.temporal, h, "temporal", causal=cfg.temporal_causal, rope=temporal_rope)
            else:
                h = mlp(h, block.mlp)
            tokens = tokens + gate * h
        if depth == cfg.align_depth:
            hidden = tokens
    mods = linear(model.final_modulation[1], silu(cond))
    shift, scale = mods[..., :dim][:, :, None], mods[..., dim:][:, :, None]
    out = linear(model.out, layer_norm(tokens) * (1 + scale) + shift)  # [B, T, P, C p p]
    C = cfg.channels
    v = out.reshape(B, T, gh, gw, C, p, p).permute(0, 1, 4, 2, 5, 3, 6).reshape(B, T, C, gh * p, gw * p)
    return v, hidden


@pytest.mark.parametrize("causal", [False, True])
def test_dit_forward_matches_a_float64_reference(causal):
    model = build_model(dict(image_size=[8, 12], patch_size=4, hidden_dim=32, depth=2, num_heads=2, align_depth=1,
                             action_dim=3, temporal_causal=causal))
    model = _randomized(model).double()
    with torch.no_grad():  # every weight random, norm weights too, so no term can hide behind a 0 or 1
        for name, p in model.named_parameters():
            p.normal_(0, 0.3 if "norm_weight" not in name else 1.0)
    x, t, rays, actions = (v.double() if v is not None else v for v in _inputs(action_dim=3))
    drop = torch.tensor([False, True])
    got, hidden = model(x, t, rays=rays, actions=actions, drop_cond=drop)
    ref, ref_hidden = _reference_dit(model, x, t, rays, actions, drop)
    # the model embeds t in float32 (angles up to 1000: ~1e-4 absolute): compare in norm
    assert rel_err(got, ref) < 1e-4 and rel_err(hidden, ref_hidden) < 1e-4
    assert ref.norm() > 0.1 * x.norm()  # the reference is far from zero: the comparison means something


def test_config_validation_and_round_trip():
    from gfcore.models.dit import config_dict

    config = VideoDiTConfig(image_size=16, patch_size=4, hidden_dim=32, num_heads=2, depth=2, align_depth=2)
    assert config.image_size == (16, 16) and config.grid == (4, 4)
    assert VideoDiTConfig(image_size=[8, 12], patch_size=4, hidden_dim=32, num_heads=2, depth=1,
                          align_depth=1).grid == (2, 3)
    as_dict = config_dict(config)
    assert as_dict["image_size"] == [16, 16] and build_model(as_dict).config == config
    with pytest.raises(ValueError, match=r"image_size \(10, 12\) must be \(H, W\) divisible by patch_size 4"):
        VideoDiTConfig(image_size=(10, 12))
    with pytest.raises(ValueError, match="must be \\(H, W\\)"):
        VideoDiTConfig(image_size=(8, 8, 8))
    with pytest.raises(ValueError, match="hidden_dim 30 / num_heads 4 must be a multiple of 4"):
        VideoDiTConfig(hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="hidden_dim 40 / num_heads 4 must be a multiple of 4"):
        VideoDiTConfig(hidden_dim=40, num_heads=4)  # head_dim 10: divisible, but not by 4 (2-D RoPE)
    with pytest.raises(ValueError, match=r"align_depth must lie in \[1, depth=2\], got 0"):
        VideoDiTConfig(depth=2, align_depth=0)
    assert VideoDiTConfig(depth=2, align_depth=2).align_depth == 2 and VideoDiTConfig(depth=2, align_depth=1)


def test_input_shape_errors_are_exact():
    model = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1, action_dim=3))
    x, t, rays, actions = _inputs(H=8, W=8, action_dim=3)
    with pytest.raises(ValueError, match=r"^rays must be \[B, T, 6, H, W\] = \(2, 3, 6, 8, 8\), got \(2, 3, 6, 8, 4\)$"):
        model(x, t, rays=rays[..., :4], actions=actions)
    with pytest.raises(ValueError, match=r"^actions must be \[B, T, 3\], got \(2, 3, 2\)$"):
        model(x, t, rays=rays, actions=actions[..., :2])
    with pytest.raises(ValueError, match=r"^drop_cond must be \[B\] = \(2,\), got \(3,\)$"):
        model(x, t, rays=rays, actions=actions, drop_cond=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^x must be \[B, T, 3, 8, 8\], got \(2, 3, 8, 8\)$"):
        model(x[:, :, 0], t, rays=rays, actions=actions)
    no_camera = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1,
                                 camera_cond=False))
    assert no_camera.ray_embed is None and no_camera(x, t)[0].shape == x.shape  # rays not needed


def test_activation_checkpointing_same_values_less_saved():
    """activation_checkpointing recomputes each block in the backward: the same output and
    gradients as the plain model, fewer saved activations; without gradients (or with the switch
    off) nothing changes."""
    torch.manual_seed(0)
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=3, num_heads=2, align_depth=2)))
    x, t, rays, _ = _inputs(H=8, W=8)

    def run(flag):
        model.activation_checkpointing = flag
        model.zero_grad()
        out, saved = saved_bytes(lambda: model(x, t, rays=rays))
        (out[0].square().sum() + out[1].sum()).backward()
        return out, saved, {n: p.grad.clone() for n, p in model.named_parameters()}

    (plain_v, plain_h), plain_saved, plain_grads = run(False)
    (ckpt_v, ckpt_h), ckpt_saved, ckpt_grads = run(True)
    torch.testing.assert_close(ckpt_v, plain_v, rtol=0, atol=0)
    torch.testing.assert_close(ckpt_h, plain_h, rtol=0, atol=0)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert ckpt_saved < plain_saved / 2, (ckpt_saved, plain_saved)
    model.activation_checkpointing = True
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, rays=rays)[0], plain_v, rtol=0, atol=0)


def _float64_model(gates=True, **overrides):
    """A float64 model with every weight random (norm weights around 1); gates=False zeroes the
    blocks' gate rows, so every block passes its input through unchanged."""
    cfg = dict(image_size=[8, 12], patch_size=4, hidden_dim=32, depth=2, num_heads=2, align_depth=1, action_dim=3)
    model = build_model({**cfg, **overrides}).double()
    torch.manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.3 if "norm_weight" not in name else 1.0)
        for block in model.blocks:
            if not gates:
                dim = model.config.hidden_dim
                for i in range(3):  # rows (3 i + 2) D .. (3 i + 3) D are the gate of sub-layer i
                    block.modulation[1].weight[(3 * i + 2) * dim:(3 * i + 3) * dim] = 0
                    block.modulation[1].bias[(3 * i + 2) * dim:(3 * i + 3) * dim] = 0
        model.patch_embed.bias.zero_()
        model.ray_embed.bias.zero_()
    return model


@pytest.mark.parametrize("gates", [True, False])
def test_dit_layer_norm_eps_on_a_tiny_signal(gates):
    """Frames and rays of size 1e-3 (embedding biases 0): the tokens' variance (~1e-7) is below
    LayerNorm's eps, so eps = 1e-6 (DiT's) is visible in the output. With the gates on, the first
    block's norm sees the tiny tokens; with them off, the blocks pass them through and the final
    norm sees them. t = 0 keeps the model's float32 timestep embedding exact (cos 0 = 1, sin 0 = 0),
    so the whole forward is float64 and must match the float64 reference to ~1e-8 (the reference
    rebuilds RoPE angles from the float32 tables: ~4e-9 measured); eps = 1e-5 moves it by > 1e-3."""
    model = _float64_model(gates)
    x, _, rays, actions = (v.double() for v in _inputs(action_dim=3))
    x, rays, t = 1e-3 * x, 1e-3 * rays, torch.zeros(2, 3, dtype=torch.float64)
    got, hidden = model(x, t, rays=rays, actions=actions)
    ref, ref_hidden = _reference_dit(model, x, t, rays, actions)
    assert rel_err(got, ref) < 1e-7 and rel_err(hidden, ref_hidden) < 1e-7
    assert ref.norm() > 0.1 * x.norm() / 1e-3  # not a tiny output: the comparison means something


def test_dit_float32_rays_and_actions_into_a_float64_model():
    """rays / actions are cast to the model's dtype: float32 conditioning fed to a float64 model
    gives the float64 reference of the same (exactly representable) values."""
    model = _float64_model()
    x, t, rays, actions = _inputs(action_dim=3)
    t = torch.zeros_like(t)
    got, _ = model(x.double(), t, rays=rays, actions=actions)
    ref, _ = _reference_dit(model, x.double(), t, rays.double(), actions.double())
    assert got.dtype == torch.float64 and rel_err(got, ref) < 1e-7


def test_parameter_shapes_follow_the_config():
    """Widths by hand: MLP hidden = mlp_ratio * dim, adaLN 9 D per block, action MLP present
    from action_dim = 1 on; the RoPE tables are derived buffers, not saved state."""
    model = build_model(dict(image_size=[8, 12], patch_size=4, hidden_dim=32, depth=2, num_heads=2, align_depth=1,
                             mlp_ratio=3.0, action_dim=1))
    block = model.blocks[0]
    assert block.mlp[0].weight.shape == (96, 32) and block.mlp[2].weight.shape == (32, 96)
    assert block.modulation[1].weight.shape == (9 * 32, 32)
    assert model.action_embed[0].weight.shape == (32, 1)
    assert not any("spatial_cos" in k or "spatial_sin" in k for k in model.state_dict())
    assert model.spatial_cos.shape == (6, 16)  # 2 x 3 patches, head_dim 16
    assert model.activation_checkpointing == "none"  # off unless asked for


def test_one_dimensional_actions_condition_the_output():
    """action_dim = 1 is a real action input (a mistaken `> 1` would silently ignore it)."""
    model = _randomized(build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1,
                                         action_dim=1)))
    with torch.no_grad():
        for p in model.action_embed.parameters():
            p.normal_(0, 0.5)
    x, t, rays, actions = _inputs(H=8, W=8, action_dim=1)
    a, _ = model(x, t, rays=rays, actions=actions)
    b, _ = model(x, t, rays=rays, actions=actions + 1.0)
    assert (a - b).norm() > 1e-3 * a.norm()


def test_attention_options_reach_the_blocks():
    """qk_norm and attention_impl of the config are the blocks' attention settings: no q/k norm
    weights without qk_norm, and an unknown impl is rejected when the model is built."""
    plain = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1, qk_norm=False,
                             attention_impl="reference"))
    assert not any("norm_weight" in k for k in plain.state_dict())
    assert {plain.blocks[0].spatial.impl, plain.blocks[0].temporal.impl} == {"reference"}
    normed = build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1))
    assert sum("norm_weight" in k for k in normed.state_dict()) == 4  # q and k, spatial and temporal
    with pytest.raises(ValueError, match="impl must be one of"):
        build_model(dict(image_size=[8, 8], hidden_dim=32, depth=1, num_heads=2, align_depth=1,
                         attention_impl="bogus"))


def test_build_model_accepts_an_int_image_size():
    model = build_model(dict(image_size=8, hidden_dim=32, depth=1, num_heads=2, align_depth=1))
    assert model.config.image_size == (8, 8) and model.config.grid == (2, 2)


def test_more_error_messages_are_exact():
    model = build_model(dict(image_size=[8, 12], hidden_dim=32, depth=1, num_heads=2, align_depth=1))
    x, t, rays, _ = _inputs(H=8, W=12)
    with pytest.raises(ValueError, match=r"^x must be \[B, T, 3, 8, 12\], got \(2, 3, 3, 8, 8\)$"):
        model(x[..., :8], t, rays=rays)
    with pytest.raises(ValueError, match=r"^t must be \[B, T\] = \(2, 3\), got \(2, 2\)$"):
        model(x, t[:, :2], rays=rays)
    with pytest.raises(ValueError, match=r"^rays \[B, T, 6, H, W\] are required: the model has camera_cond=True$"):
        model(x, t)
    with pytest.raises(ValueError, match=r"^prediction must be one of \('v', 'x0', 'x0_residual'\), got 'eps'$"):
        VideoDiTConfig(prediction="eps")
