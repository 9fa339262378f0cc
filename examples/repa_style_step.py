"""A REPA-style training step before and after adopting gfcore's angular loss.

A minimal SiT (patch tokens, transformer blocks, a linear-interpolant velocity target) whose
block `align_depth` feeds a projector MLP inside the model, aligned with teacher features by
the mean negative cosine per token: the representation-alignment recipe. `step_before` is the
step as such a codebase writes it in plain PyTorch; `step_after` is the same step with
gfcore.functional.angular_loss (the fused normalise+cosine kernels, float32 accumulation).
Nothing else changes: the model, its projector, its init and its checkpoint keys stay.

    python examples/repa_style_step.py      # 4 AdamW steps each way; prints both losses and
                                            # the parameters' relative L2 difference (fp32)
The teacher features here are random stand-ins (a DINOv2 would give them in a real run).
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn

import gfcore.functional


def projector_mlp(hidden: int, width: int, out: int) -> nn.Sequential:
    mlp = nn.Sequential(nn.Linear(hidden, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, out))
    for layer in mlp[::2]:
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)
    return mlp


class TinySiT(nn.Module):
    """Patchify, add a timestep embedding, run `depth` blocks; the projector reads block `align_depth`."""

    def __init__(self, channels=4, size=8, patch=2, hidden=64, depth=3, align_depth=1, feature_dim=48):
        super().__init__()
        self.patch, self.align_depth = patch, align_depth
        self.embed = nn.Linear(channels * patch * patch, hidden)
        self.time = nn.Sequential(nn.Linear(1, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.pos = nn.Parameter(0.02 * torch.randn((size // patch) ** 2, hidden))
        # bias=False: attention's key bias has an identically zero gradient, whose rounding noise
        # Adam would blow up to full-size steps, and the comparison below would measure that noise.
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(hidden, 4, 2 * hidden, dropout=0.0, batch_first=True,
                                                               bias=False) for _ in range(depth))
        self.projector = projector_mlp(hidden, 96, feature_dim)
        self.out = nn.Linear(hidden, channels * patch * patch)

    def forward(self, x, t):
        b, c, hgt, wdt = x.shape
        p = self.patch
        tokens = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        h = self.embed(tokens) + self.pos + self.time(t[:, None])[:, None]
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.align_depth:
                z = self.projector(h)
        v = self.out(h).reshape(b, hgt // p, wdt // p, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)
        return v, z


def step_before(model, optimizer, images, features, noise, t, align_weight=0.5):
    x_t = (1 - t[:, None, None, None]) * images + t[:, None, None, None] * noise
    v, z = model(x_t, t)
    denoise = F.mse_loss(v, noise - images)
    z_unit = F.normalize(z, dim=-1)
    y_unit = F.normalize(features, dim=-1)
    align = -(z_unit * y_unit).sum(dim=-1).mean()
    loss = denoise + align_weight * align
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def step_after(model, optimizer, images, features, noise, t, align_weight=0.5):
    x_t = (1 - t[:, None, None, None]) * images + t[:, None, None, None] * noise
    v, z = model(x_t, t)
    denoise = F.mse_loss(v, noise - images)
    align = gfcore.functional.angular_loss(z, features)
    loss = denoise + align_weight * align
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train(step, model, steps=4, seed=1):
    """`steps` AdamW steps on fixed random data (the same draws for either step function)."""
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        images = torch.randn(4, 4, 8, 8, generator=g)
        features = torch.randn(4, 16, 48, generator=g)
        noise = torch.randn(4, 4, 8, 8, generator=g)
        t = torch.rand(4, generator=g)
        losses.append(step(model, optimizer, images, features, noise, t))
    return losses


@torch.no_grad()
def relative_l2(a: nn.Module, b: nn.Module) -> float:
    diff = sum(float((p - q).double().pow(2).sum()) for p, q in zip(a.parameters(), b.parameters()))
    norm = sum(float(p.double().pow(2).sum()) for p in a.parameters())
    return (diff / norm) ** 0.5


def main():
    torch.manual_seed(0)
    before = TinySiT()
    after = copy.deepcopy(before)
    losses_before, losses_after = train(step_before, before), train(step_after, after)
    print("losses, plain PyTorch:", " ".join(f"{x:.6f}" for x in losses_before))
    print("losses, gfcore:       ", " ".join(f"{x:.6f}" for x in losses_after))
    print(f"parameters after 4 AdamW steps, relative L2 difference: {relative_l2(before, after):.2e}")


if __name__ == "__main__":
    main()
