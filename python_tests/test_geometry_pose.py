"""Camera helpers: pose encoding round trips, quaternions, SE(3) inverse, unprojection."""
import math

import pytest
import torch

from gfcore.geometry.pose import (cameras_to_pose_encoding, matrix_to_quaternion, pose_encoding_to_cameras,

                                  quaternion_to_matrix, se3_inverse, unproject_depth)

pytestmark = pytest.mark.usefixtures("single_thread")


def random_quaternions(n, generator):
    q = torch.randn(n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[:, 3:] < 0, -q, q)


def axis_angle_matrix(axis, angle):
    """Rodrigues' formula, written independently of the quaternion code."""
    axis = torch.tensor(axis, dtype=torch.float64)
    axis = axis / axis.norm()
    k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def test_quaternion_matches_rodrigues_xyzw():
    angle, axis = 0.7, (1.0, -2.0, 0.5)
    a = torch.tensor(axis, dtype=torch.float64) / torch.tensor(axis, dtype=torch.float64).norm()
    quat = torch.cat([a * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)], dtype=torch.float64)])
    torch.testing.assert_close(quaternion_to_matrix(quat), axis_angle_matrix(axis, angle))
    torch.testing.assert_close(quaternion_to_matrix(3.0 * quat), axis_angle_matrix(axis, angle))  # any norm


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_quaternion_round_trip_including_half_turns(dtype):
    g = torch.Generator().manual_seed(0)
    quats = random_quaternions(256, g)
    half_turns = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.6, 0.8, 0, 1e-4]], dtype=torch.float64)
    quats = torch.cat([quats, half_turns / half_turns.norm(dim=-1, keepdim=True)]).to(dtype)
    back = matrix_to_quaternion(quaternion_to_matrix(quats))
    tol = 1e-9 if dtype == torch.float64 else 2e-6
    # q and -q are the same rotation; compare the rotations and the canonical sign
    torch.testing.assert_close(quaternion_to_matrix(back), quaternion_to_matrix(quats), atol=tol, rtol=0)
    assert (back[:, 3] >= 0).all()
    torch.testing.assert_close(back[:256], quats[:256], atol=tol * 10, rtol=0)


def test_pose_encoding_round_trip_and_intrinsics():
    g = torch.Generator().manual_seed(1)
    b, s, hw = 2, 3, (280, 518)
    enc = torch.cat([torch.randn(b, s, 3, generator=g, dtype=torch.float64),
                     random_quaternions(b * s, g).view(b, s, 4),
                     torch.rand(b, s, 2, generator=g, dtype=torch.float64) + 0.5], dim=-1)
    ext, intr = pose_encoding_to_cameras(enc, hw)
    assert ext.shape == (b, s, 3, 4) and intr.shape == (b, s, 3, 3)
    fy = (hw[0] / 2) / torch.tan(enc[..., 7] / 2)
    fx = (hw[1] / 2) / torch.tan(enc[..., 8] / 2)
    torch.testing.assert_close(intr[..., 0, 0], fx)
    torch.testing.assert_close(intr[..., 1, 1], fy)
    assert (intr[..., 0, 2] == 259).all() and (intr[..., 1, 2] == 140).all() and (intr[..., 2, 2] == 1).all()
    back = cameras_to_pose_encoding(ext, intr, hw)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back.double(), enc, atol=1e-6, rtol=1e-6)


def test_se3_inverse_composes_to_identity_batched():
    g = torch.Generator().manual_seed(2)
    rot = quaternion_to_matrix(random_quaternions(10, g)).view(2, 5, 3, 3)
    trans = torch.randn(2, 5, 3, 1, generator=g, dtype=torch.float64)
    t34 = torch.cat([rot, trans], dim=-1)
    inv = se3_inverse(t34)
    full = torch.cat([t34, torch.tensor([[0, 0, 0, 1.0]], dtype=torch.float64).expand(2, 5, 1, 4)], dim=-2)
    torch.testing.assert_close(inv @ full, torch.eye(4, dtype=torch.float64).expand(2, 5, 4, 4))
    torch.testing.assert_close(se3_inverse(inv), full)
    with pytest.raises(ValueError, match="transform"):
        se3_inverse(torch.zeros(3, 3))


def test_unprojection_matches_per_pixel_loop_and_reprojects():
    g = torch.Generator().manual_seed(3)
    s, h, w = 2, 4, 5
    depth = torch.rand(s, h, w, generator=g) + 1.0
    rot = quaternion_to_matrix(random_quaternions(s, g)).float()
    ext = torch.cat([rot, torch.randn(s, 3, 1, generator=g)], dim=-1)
    intr = torch.tensor([[50.0, 0, 2.5], [0, 60.0, 2.0], [0, 0, 1]]).expand(s, 3, 3)
    pts = unproject_depth(depth[..., None], ext, intr)  # [S, H, W, 1] depth accepted too
    assert pts.shape == (s, h, w, 3) and pts.dtype == torch.float64
    for i in range(s):
        r, t = ext[i, :, :3].double(), ext[i, :, 3].double()
        for v in range(h):
            for u in range(w):
                z = float(depth[i, v, u])
                cam = torch.tensor([(u - 2.5) * z / 50.0, (v - 2.0) * z / 60.0, z], dtype=torch.float64)
                torch.testing.assert_close(pts[i, v, u], r.T @ (cam - t))
    cam_pts = torch.einsum("sij,shwj->shwi", ext[..., :3].double(), pts) + ext[:, None, None, :, 3].double()
    pix = torch.einsum("sij,shwj->shwi", intr.double(), cam_pts)
    torch.testing.assert_close(pix[..., 2], depth.double(), atol=1e-5, rtol=0)
    # float32 rotations are orthonormal only to ~1e-7, hence the tolerance
    torch.testing.assert_close(pix[..., 0] / pix[..., 2], torch.arange(w, dtype=torch.float64).expand(s, h, w),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(pix[..., 1] / pix[..., 2],
                               torch.arange(h, dtype=torch.float64)[:, None].expand(s, h, w), atol=1e-5, rtol=0)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="encoding"):
        pose_encoding_to_cameras(torch.zeros(3, 9), (10, 10))
    with pytest.raises(ValueError, match="intrinsics"):
        cameras_to_pose_encoding(torch.zeros(1, 2, 3, 4), torch.zeros(1, 3, 3, 3), (10, 10))
    with pytest.raises(ValueError, match="extrinsics"):
        unproject_depth(torch.ones(2, 4, 4), torch.zeros(3, 3, 4), torch.zeros(2, 3, 3))
