"""Sampling: Euler / Heun ODE steps with clean context, history guidance and sliding-window long rollouts."""
from gfcore.sample.sampler import HISTORY_MODES, HistoryGuidance, denoise_window, revisit_path, rollout, to_uint8

__all__ = ["HISTORY_MODES", "HistoryGuidance", "denoise_window", "rollout", "revisit_path", "to_uint8"]
