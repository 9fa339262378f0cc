"""Data: built-in synthetic 3D scenes, RealEstate10K and Minecraft readers, video I/O, camera geometry.

Video decoding needs decord or PyAV, encoding needs PyAV, image folders and GIFs need Pillow.
"""
from gfcore.data.errors import DataError
from gfcore.data.geometry import (
    cameras_to_re10k_rows,
    dfot_poses_to_cameras,
    flip_horizontal,
    invert_rigid,
    plucker_rays,
    re10k_rows_to_cameras,
    relative_to_first,
    resize_crop_intrinsics,
)
from gfcore.data.minecraft import Minecraft
from gfcore.data.re10k import RealEstate10K
from gfcore.data.video import VideoError, read_video, write_gif, write_video

__all__ = [
    "DataError",
    "VideoError",
    "RealEstate10K",
    "Minecraft",
    "read_video",
    "write_video",
    "write_gif",
    "plucker_rays",
    "re10k_rows_to_cameras",
    "cameras_to_re10k_rows",
    "dfot_poses_to_cameras",
    "invert_rigid",
    "relative_to_first",
    "resize_crop_intrinsics",
    "flip_horizontal",
]
