"""DFoT's history guidance: classifier-free guidance over the history (context) frames.

As the authors' HistoryGuidance (algorithms/dfot/history_guidance.py of the Geometry Forcing
repository, which vendors DFoT), restricted to the schemes whose history segments cover every
history frame with one constant noise-level range; checked against their code by
python_tests/test_dfot_guidance.py.

A window's frames are in one of four states: 0 to be generated, 1 ground-truth history, 2
generated history (made by an earlier window), -1 padding. A scheme is a list of segments,
each (range for ground-truth history, range for generated history, weight); a range (k, k')
is a pair of continuous noise levels in [0, 1]. The composed prediction is

    x = x(history at 1, pose dropped?) + sum_seg w_seg * [x(history at k) - x(history at k', pose dropped?)]

where "history at k" noises each history frame to the level its state's range gives, and the
pose (external condition) is dropped in the subtracted terms when use_external_cond_guidance
is set. Terms with the same history levels and pose drop are one model evaluation (a branch)
with the summed weight; branches whose weight sums to exactly 0 are not evaluated. A level k
becomes the discrete index int(k * timesteps - 1) in float32 (0 -> -1: clean, 1 -> 999,
0.02 -> 19).

    scheme                 segments (GT range, generated range, weight)          pose guidance
    conditional            ((0, 1), (0, 1), 1)                                    off
    stabilized_conditional ((0, 1), (s, 1), 1)                                    off
    vanilla                ((0, 1), (0, 1), w)                                    on
    stabilized_vanilla     ((0, 1), (s, 1), w)                                    on
    fractional             ((0, 1), (0, 1), 1), ((f, 1), (f, 1), w - 1)           on
    stabilized_fractional  ((0, 1), (s, 1), 1), ((f, 1), (f, 1), w - 1)           on

(s: stabilization_level, f: freq_scale, w: scale.) So vanilla with scale w evaluates the
model twice per step: history clean with the pose (weight w) and history fully noised
without the pose (weight 1 - w); a window without history frames gets plain classifier-free
guidance on the pose. The authors compose the DDIM outputs x_{k'} of the branches; gfcore
does the same (gfcore.sample.ddim.guided_ddim_sample).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

SCHEMES = ("conditional", "stabilized_conditional", "vanilla", "stabilized_vanilla", "fractional",
           "stabilized_fractional")
# window frame states (the authors' context mask values)
PADDING, GENERATE, GROUND_TRUTH, GENERATED = -1, 0, 1, 2
HISTORY_STATES = (GROUND_TRUTH, GENERATED)

Range = Tuple[float, float]


@dataclass(frozen=True)
class GuidanceBranch:
    """One model evaluation of a guided step: the discrete noise level of each history state
    (-1: clean), whether the pose is dropped, and the branch's weight in the composition."""

    levels: Dict[int, int]
    drop_cond: bool
    weight: float


@dataclass(frozen=True)
class DFoTHistoryGuidance:
    """A history guidance scheme (see the module docstring).

    name: one of SCHEMES. scale: w, the guidance scale (the conditional schemes take none).
    stabilization_level: s, the noise level of generated history in the conditional term.
    freq_scale: f, the low end of the partially noised history of the fractional schemes.
    use_external_cond_guidance: drop the pose in the subtracted terms (None: the scheme's
    default, off for the conditional schemes, on otherwise, as the authors' constructors).
    """

    name: str = "conditional"
    scale: float = 1.0
    stabilization_level: float = 0.02
    freq_scale: float = 0.5
    use_external_cond_guidance: Optional[bool] = None

    def __post_init__(self):
        if self.name not in SCHEMES:
            raise ValueError(f"history guidance name must be one of {SCHEMES}, got {self.name!r}")
        for field in ("stabilization_level", "freq_scale"):
            value = float(getattr(self, field))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"history guidance {field} must lie in [0, 1], got {value}")
        if self.name.endswith("conditional") and float(self.scale) != 1.0:
            raise ValueError(f"history guidance {self.name!r} has no scale (it is plain conditional sampling); "
                             f"got scale={self.scale}: use vanilla or stabilized_vanilla to guide")

    @property
    def external_cond_guidance(self) -> bool:
        if self.use_external_cond_guidance is not None:
            return bool(self.use_external_cond_guidance)
        return not self.name.endswith("conditional")

    def segments(self) -> List[Tuple[Range, Range, float]]:
        """(range for ground-truth history, range for generated history, weight) per segment."""
        full: Range = (0.0, 1.0)
        generated = (float(self.stabilization_level), 1.0) if self.name.startswith("stabilized") else full
        scale = float(self.scale)
        if self.name.endswith("conditional"):
            return [(full, generated, 1.0)]
        if self.name.endswith("vanilla"):
            return [(full, generated, scale)]
        partial: Range = (float(self.freq_scale), 1.0)
        return [(full, generated, 1.0), (partial, partial, scale - 1.0)]

    def branches(self, present_states: Sequence[int] = HISTORY_STATES, timesteps: int = 1000) -> List[GuidanceBranch]:
        """The model evaluations of one step, for a window whose history frames are in
        `present_states` (a subset of HISTORY_STATES): terms with equal levels for those states
        and equal pose drop are merged, zero-weight ones left out, in the authors' order."""
        states = tuple(s for s in HISTORY_STATES if s in set(present_states))
        use_ext = self.external_cond_guidance
        weights: Dict[tuple, float] = {}

        def add(levels_by_state: Mapping[int, float], drop: bool, weight: float) -> None:
            key = tuple(levels_by_state[s] for s in states) + (drop,)
            weights[key] = weights.get(key, 0.0) + weight

        add({s: 1.0 for s in HISTORY_STATES}, use_ext, 1.0)  # the unconditional term
        for gt_range, gen_range, weight in self.segments():
            start = {GROUND_TRUTH: gt_range[0], GENERATED: gen_range[0]}
            end = {GROUND_TRUTH: gt_range[1], GENERATED: gen_range[1]}
            add(start, False, weight)
            add(end, use_ext, -weight)
        out = []
        for key, weight in weights.items():
            if weight == 0:
                continue
            continuous = torch.tensor(key[:-1], dtype=torch.float32)
            discrete = (continuous * timesteps - 1).long().tolist()  # the authors' float32 rounding
            out.append(GuidanceBranch(dict(zip(states, discrete)), bool(key[-1]), float(weight)))
        return out

    @property
    def max_branches(self) -> int:
        """Model evaluations per step at most (over any mix of history states)."""
        return len(self.branches(HISTORY_STATES))

    @classmethod
    def parse(cls, value: Union[None, str, Mapping, "DFoTHistoryGuidance"]) -> "DFoTHistoryGuidance":
        """None (conditional) / a scheme name / a mapping of the fields (the authors' config keys
        guidance_scale and name are accepted) -> DFoTHistoryGuidance."""
        if value is None:
            return cls()
        if isinstance(value, DFoTHistoryGuidance):
            return value
        if isinstance(value, str):
            return cls(name=value)
        fields = dict(value)
        if "guidance_scale" in fields:
            fields["scale"] = fields.pop("guidance_scale")
        known = {"name", "scale", "stabilization_level", "freq_scale", "use_external_cond_guidance"}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown history guidance keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**fields)


__all__ = ["DFoTHistoryGuidance", "GuidanceBranch", "SCHEMES", "PADDING", "GENERATE", "GROUND_TRUTH", "GENERATED"]
