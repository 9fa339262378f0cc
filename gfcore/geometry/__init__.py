"""VGGT geometry teacher: a checkpoint-compatible VGGT, camera helpers and a feature extractor.

Loads the official VGGT checkpoint from a local path (never downloads anything).
"""
from gfcore.geometry.aggregator import Aggregator
from gfcore.geometry.checkpoint import (CheckpointError, load_vggt_checkpoint, load_vggt_state_dict,
                                        read_state_dict, save_state_dict)
from gfcore.geometry.model import MANIFEST_PATH, SMALL_CONFIG_PATH, VGGT, small_config
from gfcore.geometry.pose import (cameras_to_pose_encoding, matrix_to_quaternion, pose_encoding_to_cameras,
                                  quaternion_to_matrix, se3_inverse, unproject_depth)
from gfcore.geometry.preprocess import resize_for_vggt
from gfcore.geometry.teacher import VGGTTeacher, resample_grid

__all__ = [
    "Aggregator", "CheckpointError", "MANIFEST_PATH", "SMALL_CONFIG_PATH", "VGGT", "VGGTTeacher",
    "cameras_to_pose_encoding", "load_vggt_checkpoint", "load_vggt_state_dict", "matrix_to_quaternion",
    "pose_encoding_to_cameras", "quaternion_to_matrix", "read_state_dict", "resample_grid",
    "resize_for_vggt", "save_state_dict", "se3_inverse", "small_config", "unproject_depth",
]
