"""A diffusers DiT training step before and after adding Geometry Forcing's alignment loss.

The model is diffusers' DiTTransformer2DModel, used as it is: gfcore.capture reads the output of
one of its blocks through a forward hook, so its code is not touched. `step_before` is a plain
epsilon-prediction step; `step_after` adds GeometryAlignmentLoss (projector, angular and scale
terms, fused where gfcore's kernels are built) on that block's tokens. `step_formula` is the
same loss written out in plain PyTorch from the paper's formulas, to check gfcore against.

    python examples/diffusers_dit_step.py   # 4 AdamW steps with gfcore and with the formula:
                                            # both losses, and the parameters' relative L2 difference
The teacher features are random stand-ins for VGGT's (which a real run would compute or cache).
"""
import copy

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel

import gfcore

FEATURE_DIM = 48


def build(seed=0):
    torch.manual_seed(seed)
    # attention_bias=False: the key bias has an identically zero gradient, whose rounding noise Adam
    # would blow up to full-size steps, and the comparison in main() would measure that noise.
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=3,
                                  sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1,
                                  attention_bias=False)
    align = gfcore.GeometryAlignmentLoss(hidden_dim=32, target_dim=FEATURE_DIM, projector_dim=64, head_dim=32)
    return model, align


def noisy(latents, noise, t):
    alpha = torch.cos(t.float() / 10 * torch.pi / 2)[:, None, None, None]
    return alpha * latents + (1 - alpha**2).sqrt() * noise


def step_before(model, optimizer, latents, labels, noise, t):
    prediction = model(noisy(latents, noise, t), timestep=t, class_labels=labels).sample
    loss = F.mse_loss(prediction, noise)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def step_after(model, optimizer, latents, labels, noise, t, hidden, align, features):
    prediction = model(noisy(latents, noise, t), timestep=t, class_labels=labels).sample
    loss = F.mse_loss(prediction, noise) + align(hidden.pop(), features).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def step_formula(model, optimizer, latents, labels, noise, t, hidden, align, features):
    """step_after with the alignment written out: 0.5 * angular + 0.05 * scale (the defaults)."""
    prediction = model(noisy(latents, noise, t), timestep=t, class_labels=labels).sample
    z = align.projector(hidden.pop())
    angular = -F.cosine_similarity(z, features, dim=-1).mean()
    scale = F.mse_loss(align.head(F.normalize(z, dim=-1)), features)
    loss = F.mse_loss(prediction, noise) + 0.5 * angular + 0.05 * scale
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train(step, model, align=None, steps=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the DiT drops class labels at random (classifier-free guidance) from the global RNG
    params = list(model.parameters()) + (list(align.parameters()) if align is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    extra = ()
    if align is not None:
        extra = (gfcore.capture(model, "transformer_blocks.1"), align)
    losses = []
    for _ in range(steps):
        latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        labels, t = torch.randint(0, 10, (2,), generator=g), torch.randint(0, 10, (2,), generator=g)
        features = torch.randn(2, 16, FEATURE_DIM, generator=g)  # [batch, tokens, teacher channels]
        args = (latents, labels, noise, t) + (extra + (features,) if align is not None else ())
        losses.append(step(model, optimizer, *args))
    if extra:
        extra[0].remove()
    return losses


@torch.no_grad()
def relative_l2(a, b) -> float:
    pairs = list(zip(a, b))
    diff = sum(float((p - q).double().pow(2).sum()) for p, q in pairs)
    return (diff / sum(float(p.double().pow(2).sum()) for p, _ in pairs)) ** 0.5


def main():
    model, align = build()
    print("losses, diffusion only:", " ".join(f"{x:.6f}" for x in train(step_before, copy.deepcopy(model))))
    formula_model, formula_align = copy.deepcopy(model), copy.deepcopy(align)
    losses_gfcore = train(step_after, model, align)
    losses_formula = train(step_formula, formula_model, formula_align)
    print("losses, gfcore:        ", " ".join(f"{x:.6f}" for x in losses_gfcore))
    print("losses, formula:       ", " ".join(f"{x:.6f}" for x in losses_formula))
    difference = relative_l2(list(model.parameters()) + list(align.parameters()),
                             list(formula_model.parameters()) + list(formula_align.parameters()))
    print(f"parameters after 4 AdamW steps, relative L2 difference: {difference:.2e}")


if __name__ == "__main__":
    main()
