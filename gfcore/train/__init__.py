"""Training: flow matching + Geometry Forcing objective, teachers, checkpoints, DDP trainer."""
from gfcore.train.config import load_config
from gfcore.train.objective import GFObjective, draw_noise, flow_matching_loss, noisy_input
from gfcore.train.teachers import ORACLE_LABEL, PointmapTeacher, TeacherTargets, build_teacher
from gfcore.train.trainer import train

__all__ = ["load_config", "train", "GFObjective", "draw_noise", "flow_matching_loss", "noisy_input",
           "PointmapTeacher", "TeacherTargets", "build_teacher", "ORACLE_LABEL"]
