"""DFoT's pose-conditioned U-ViT backbone (Diffusion Forcing Transformer, the base model of
Geometry Forcing), compatible with the released checkpoints.

- UViT3DPose: the backbone; UViT3DPose.re10k() is the RealEstate10K model.
- ray_encoding: [B, T, 16] poses -> [B, T, 180, H, W] ray map, the model's pose input.
- load_dfot_checkpoint: key-exact loading of Lightning / plain / compiled / EMA files.
- DFoTDiffusion: the continuous-time diffusion (schedules, q_sample, training loss); DDIM
  sampling is gfcore.sample.ddim.
"""
from gfcore.models.dfot.backbone import RE10K, UViT3DPose
from gfcore.models.dfot.diffusion import DFoTDiffusion, DFoTLoss
from gfcore.models.dfot.checkpoint import CheckpointError, dfot_state_dict, load_dfot_checkpoint
from gfcore.models.dfot.rays import camera_rays, ray_encoding

__all__ = ["CheckpointError", "DFoTDiffusion", "DFoTLoss", "RE10K", "UViT3DPose", "camera_rays", "dfot_state_dict",
           "load_dfot_checkpoint", "ray_encoding"]
