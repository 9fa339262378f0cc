"""A tiny stand-in for gfcore.sample.dfot_guidance / dfot_protocol (the lead's contract) while
they have not landed on this branch: same names and signatures, simple numerics (guidance is
ignored). `install()` puts them in sys.modules only when the real modules are absent.
TEMPORARY: removed once main has the real modules."""
from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Callable, Dict

import torch

NAMES = ("conditional", "stabilized_conditional", "vanilla", "stabilized_vanilla", "fractional",
         "stabilized_fractional")


@dataclass(frozen=True)
class DFoTHistoryGuidance:
    name: str = "conditional"
    scale: float = 1.0
    stabilization_level: float = 0.02
    freq_scale: float = 0.5
    use_external_cond_guidance: bool = True

    def __post_init__(self):
        if self.name not in NAMES:
            raise ValueError(f"history guidance name must be one of {NAMES}, got {self.name!r}")

    @classmethod
    def parse(cls, value):
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(name=value)
        return cls(**dict(value))


Progress = Callable[[str, int, int], None]
PROTOCOLS: Dict[str, dict] = {"dfot256": dict(
    num_frames=256, num_context=1, keyframe_density=0.0625,
    key_guidance=DFoTHistoryGuidance("stabilized_vanilla", 4.0, 0.02),
    interp_guidance=DFoTHistoryGuidance("vanilla", 1.5), interp_max_batch=4, steps=50, max_tokens=16)}


def dfot_long_rollout(model, diffusion, context, conditions, process_conditions, num_frames, *, max_tokens=16,
                      keyframe_density=1.0, key_guidance=None, interp_guidance=None, steps=50,
                      interp_max_batch=None, sliding_context_len=None, generator=None, progress=None):
    from gfcore.sample.ddim import ddim_sample

    batch, given = context.shape[:2]
    video = torch.zeros(batch, num_frames, *context.shape[2:], dtype=context.dtype, device=context.device)
    video[:, :given] = context
    known = list(range(given))
    todo = list(range(given, num_frames))
    count = max(1, round(len(todo) * keyframe_density))
    keys = [todo[round(i * (len(todo) - 1) / max(count - 1, 1))] for i in range(count)] if count < len(todo) else todo
    stages = [("keyframes", keys), ("interpolation", [t for t in todo if t not in keys])]
    for stage, frames in stages:
        if not frames:
            continue
        new = max_tokens - min(len(known), max_tokens - 1)
        windows = [frames[i:i + new] for i in range(0, len(frames), new)]
        done = 0
        for window in windows:
            held = sorted(known, key=lambda t: abs(t - window[0]))[:max_tokens - len(window)]
            index = sorted(held) + window
            index += [index[-1]] * (max_tokens - len(index))
            mask = torch.tensor([t in held for t in index]).expand(batch, -1)
            cond = process_conditions(conditions[:, index])

            def backbone(x, levels, ec, ecm):
                return model(x, levels, ec, external_cond_mask=ecm)

            out = ddim_sample(backbone, diffusion, video[:, index], mask.to(context.device), cond, steps=steps,
                              generator=generator)
            for k, t in enumerate(index):
                if t in window:
                    video[:, t] = out[:, k]
            known += window
            done += steps
            if progress is not None:
                progress(stage, done, steps * len(windows))
    return video


def install() -> None:
    """Register the stand-ins under the real module names when those do not exist."""
    try:
        import gfcore.sample.dfot_protocol  # noqa: F401
        return
    except ImportError:
        pass
    guidance = types.ModuleType("gfcore.sample.dfot_guidance")
    guidance.DFoTHistoryGuidance = DFoTHistoryGuidance
    protocol = types.ModuleType("gfcore.sample.dfot_protocol")
    protocol.Progress, protocol.PROTOCOLS, protocol.dfot_long_rollout = Progress, PROTOCOLS, dfot_long_rollout
    protocol.DFoTHistoryGuidance = DFoTHistoryGuidance
    sys.modules["gfcore.sample.dfot_guidance"] = guidance
    sys.modules["gfcore.sample.dfot_protocol"] = protocol
