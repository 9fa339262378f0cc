"""Sampling: Euler / Heun ODE steps with clean context and sliding-window long rollouts."""
from gfcore.sample.sampler import denoise_window, revisit_path, rollout, to_uint8

__all__ = ["denoise_window", "rollout", "revisit_path", "to_uint8"]
