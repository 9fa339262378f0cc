"""Sampling: Euler / Heun ODE steps with clean context, history guidance and sliding-window long rollouts;
DDIM sampling of DFoT (gfcore.sample.ddim)."""
from gfcore.sample.ddim import ddim_noise_levels, ddim_sample, ddim_step
from gfcore.sample.sampler import HISTORY_MODES, HistoryGuidance, denoise_window, revisit_path, rollout, to_uint8

__all__ = ["HISTORY_MODES", "HistoryGuidance", "ddim_noise_levels", "ddim_sample", "ddim_step", "denoise_window",
           "rollout", "revisit_path", "to_uint8"]
