"""Teachers: a checkpoint-compatible VGGT (camera helpers, feature extractor), a DINOv2 ViT with
the official keys, and the teacher protocol they implement.

Loads official checkpoints from a local path (never downloads anything).
"""
from gfcore.geometry.aggregator import Aggregator
from gfcore.geometry.checkpoint import (CheckpointError, load_state_dict_strict, load_vggt_checkpoint,
                                        load_vggt_state_dict, read_state_dict, save_state_dict)
from gfcore.geometry.model import MANIFEST_PATH, SMALL_CONFIG_PATH, VGGT, small_config
from gfcore.geometry.pose import (cameras_to_pose_encoding, matrix_to_quaternion, pose_encoding_to_cameras,
                                  quaternion_to_matrix, se3_inverse, unproject_depth)
from gfcore.geometry.preprocess import resize_for_vggt
from gfcore.geometry.teacher import VGGTTeacher, resample_grid
from gfcore.geometry.dinov2 import (DINOV2_CONFIGS, DINOv2Teacher, DINOv2ViT, dinov2_config,
                                    load_dinov2_checkpoint, official_state_dict_shapes)
from gfcore.geometry.protocol import FeatureTeacher, check_teacher, teacher_features

__all__ = [
    "Aggregator", "CheckpointError", "DINOV2_CONFIGS", "DINOv2Teacher", "DINOv2ViT", "FeatureTeacher",
    "check_teacher", "dinov2_config", "load_dinov2_checkpoint", "load_state_dict_strict",
    "official_state_dict_shapes", "teacher_features", "MANIFEST_PATH", "SMALL_CONFIG_PATH", "VGGT", "VGGTTeacher",
    "cameras_to_pose_encoding", "load_vggt_checkpoint", "load_vggt_state_dict", "matrix_to_quaternion",
    "pose_encoding_to_cameras", "quaternion_to_matrix", "read_state_dict", "resample_grid",
    "resize_for_vggt", "save_state_dict", "se3_inverse", "small_config", "unproject_depth",
]
