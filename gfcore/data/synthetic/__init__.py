"""Built-in synthetic 3D scenes with ground-truth depth and poses (offline, CPU).

`generate(root, num_clips, num_frames, resolution, seed, task="camera" | "action")` writes
clips in the RealEstate10K or Minecraft layout; `python -m gfcore.data.synthetic --help`.
"""
from gfcore.data.synthetic.generate import FPS, clip_key, generate, generate_clip
from gfcore.data.synthetic.trajectories import ACTION_NAMES, PATH_KINDS

__all__ = ["generate", "generate_clip", "clip_key", "FPS", "ACTION_NAMES", "PATH_KINDS"]
