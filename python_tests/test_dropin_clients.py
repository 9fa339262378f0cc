"""Third-party models from pip adopt the loss through gfcore.capture, their code untouched: a
diffusers DiT and a timm ViT at random init, each trained three AdamW steps on a captured block."""
import timm  # requirements-dev.txt
import torch

import gfcore
from gfcore import GeometryAlignmentLoss


def train_three_steps(model, block, forward, hidden_dim, target_dim, target_tokens):
    """Three steps of the alignment loss alone on `block`'s output; returns the losses and which
    parameters received a gradient."""
    torch.manual_seed(0)
    hidden = gfcore.capture(model, block)
    loss_fn = GeometryAlignmentLoss(hidden_dim, target_dim, projector_dim=64, head_dim=32)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_fn.parameters()), lr=3e-3)
    y = torch.randn(*target_tokens, target_dim)
    losses, touched = [], set()
    for _ in range(3):
        forward()
        out = loss_fn(hidden.pop(), y)
        optimizer.zero_grad()
        out.loss.backward()
        touched |= {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
        losses.append(out.loss.item())
    hidden.remove()
    return losses, touched


def test_diffusers_dit_block():
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    model = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=3,
                                  sample_size=8, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1)
    x, t, labels = torch.randn(2, 4, 8, 8), torch.tensor([3, 7]), torch.tensor([1, 4])
    losses, touched = train_three_steps(model, "transformer_blocks.1",
                                        lambda: model(x, timestep=t, class_labels=labels), hidden_dim=32,
                                        target_dim=48, target_tokens=(2, 16))
    assert losses[2] < losses[0], losses
    assert any(name.startswith("transformer_blocks.1.") for name in touched)
    assert any(name.startswith("transformer_blocks.0.") for name in touched)
    assert not any(name.startswith(("transformer_blocks.2.", "proj_out")) for name in touched)  # after the block


def test_timm_vit_block():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=0)
    images = torch.randn(2, 3, 32, 32)
    tokens = 1 + (32 // 8) ** 2  # the class token and 16 patches
    losses, touched = train_three_steps(model, "blocks.5", lambda: model(images), hidden_dim=model.embed_dim,
                                        target_dim=40, target_tokens=(2, tokens))
    assert losses[2] < losses[0], losses
    assert {"patch_embed.proj.weight", "blocks.5.mlp.fc2.weight"} <= touched
    assert not any(name.startswith(("blocks.6.", "norm.")) for name in touched)
