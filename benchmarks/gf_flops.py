"""FLOP model of Geometry Forcing's overhead: counted FLOPs of one training step (forward +
backward, torch.utils.flop_counter on the meta device: no memory, no compute), baseline vs GF,
for the benchmark's CPU shapes and the paper's (256 px, batch 8 x 16 frames).

    python -m benchmarks.gf_flops

The attention runs through PyTorch SDPA, which on the meta device decomposes into counted matmuls.
The alignment loss is the reference path with the paper's head (projector 2048, head 512) and
VGGT-1B-wide targets (2048); the tiny model uses the demo's head (128/64) and 768-wide targets.
Writes benchmarks/results/gf_flops.md.
"""
import sys, torch
_orig_autocast = torch.is_autocast_enabled
torch.is_autocast_enabled = lambda *a: False if (a and a[0] == "meta") else _orig_autocast(*a)  # meta: no autocast
from torch.utils.flop_counter import FlopCounterMode
from gfcore.train import load_config
from gfcore.train.trainer import TrainModule, build_alignment, model_config
from gfcore.models.dit import build_model
from gfcore.train.objective import GFObjective, draw_noise
from gfcore.losses.alignment import GeometryAlignmentLoss

def count(model_name, res, frames, batch, attn, teacher_dim=2048, projector=2048, head=512, align=True):
    cfg = load_config(["experiment=demo", f"model={model_name}", "teacher=none", f"data.resolution=[{res},{res}]",
                       f"train.batch_size={batch}", f"train.num_frames={frames}", f"model.attention_impl={attn}"])
    dev = torch.device("meta")
    with dev:
        model = build_model(model_config(cfg))
        loss = GeometryAlignmentLoss(model.hidden_dim, teacher_dim, projector_dim=projector, head_dim=head, impl="reference", check_finite=False) if align else None
        objective = GFObjective(loss, cfg.train.get("loss_space", "v"))
    module = TrainModule(model, objective)
    H = W = res
    b = {"frames": torch.zeros(batch, frames, 3, H, W, device=dev), "rays": torch.zeros(batch, frames, 6, H, W, device=dev)}
    noise = draw_noise((batch, frames, 3, H, W), torch.Generator().manual_seed(0))
    for name in ("t", "eps", "context", "drop_cond"):
        setattr(noise, name, getattr(noise, name).to(dev))
    P = model.config.grid[0] * model.config.grid[1]
    feats = torch.zeros(batch, frames, P, teacher_dim, device=dev) if align else None
    c = FlopCounterMode(display=False)
    with c:
        module(b, noise, feats)["loss"].backward()
    return c.get_total_flops(), c.get_flop_counts()

if __name__ == "__main__":
    from benchmarks.common import RESULTS_DIR, git_commit
    lines = ["# GF FLOP overhead (counted, one training step, meta device)", "",
             "| model | input | alignment head (projector/head), targets | baseline TFLOP | GF TFLOP | GF / baseline |",
             "|---|---|---|---|---|---|"]
    for (m, res, T, B) in [("tiny", 32, 8, 8), ("dit_b", 32, 4, 1), ("dit_b", 64, 4, 1), ("dit_b", 256, 16, 8), ("dit_l", 256, 16, 8)]:
        base, _ = count(m, res, T, B, "sdpa", align=False)
        tdim, proj, head = (768, 128, 64) if m == "tiny" else (2048, 2048, 512)
        gf, counts = count(m, res, T, B, "sdpa", tdim, proj, head)
        lines.append(f"| {m} | {res} px, batch {B} x {T} frames | {proj}/{head}, {tdim} | {base / 1e12:.4g} | "
                     f"{gf / 1e12:.4g} | {gf / base:.3f} |")
        print(lines[-1], flush=True)
    lines += ["", f"Commit {git_commit()}. `python -m benchmarks.gf_flops`."]
    (RESULTS_DIR / "gf_flops.md").write_text("\n".join(lines) + "\n")
