"""Sampling: Euler / Heun ODE steps with clean context, history guidance and sliding-window long rollouts;
DDIM sampling of DFoT with its history guidance (gfcore.sample.ddim, dfot_guidance) and its
keyframe-then-interpolate long rollouts (gfcore.sample.dfot_protocol)."""
from gfcore.sample.ddim import ddim_noise_levels, ddim_sample, ddim_step, guided_ddim_sample
from gfcore.sample.dfot_guidance import DFoTHistoryGuidance
from gfcore.sample.dfot_protocol import PROTOCOLS, dfot_long_rollout
from gfcore.sample.sampler import HISTORY_MODES, HistoryGuidance, denoise_window, revisit_path, rollout, to_uint8

__all__ = ["DFoTHistoryGuidance", "HISTORY_MODES", "HistoryGuidance", "PROTOCOLS", "ddim_noise_levels", "ddim_sample",
           "ddim_step", "denoise_window", "dfot_long_rollout", "guided_ddim_sample", "rollout", "revisit_path",
           "to_uint8"]
