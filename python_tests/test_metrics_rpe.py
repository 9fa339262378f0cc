"""RPE on an analytic scene (exact depth and cameras) and the optical flow behind it."""
import math

import pytest
import torch

from gfcore.metrics.optical_flow import forward_backward_error, lucas_kanade_flow
from gfcore.metrics.rpe import pair_errors, reproject, reprojection_error, rpe_summary
from gfcore.metrics.synthetic import camera_path, render_plane_scene, yaw_matrix


pytestmark = pytest.mark.usefixtures("single_thread")



@pytest.fixture(scope="module")
def scene():
    return render_plane_scene(camera_path(4))


def test_reproject_hand_computed():
    """Sideways camera motion tx over a fronto-parallel plane at depth Z shifts pixels by -f tx / Z."""
    f, z, tx = 50.0, 5.0, 0.2
    k = torch.tensor([[f, 0, 15.5], [0, f, 11.5], [0, 0, 1]])
    c2w_j = torch.eye(4)
    c2w_j[0, 3] = tx
    xy, depth_j = reproject(torch.full((24, 32), z), k, torch.eye(4), k, c2w_j)
    ys, xs = torch.meshgrid(torch.arange(24.0), torch.arange(32.0), indexing="ij")
    torch.testing.assert_close(xy[0].float(), xs - f * tx / z)
    torch.testing.assert_close(xy[1].float(), ys)
    torch.testing.assert_close(depth_j.float(), torch.full((24, 32), z))
    # pure rotation: the principal point maps to f * tan(angle) away, independent of depth
    c2w_rot = torch.eye(4, dtype=torch.float64)
    c2w_rot[:3, :3] = yaw_matrix(math.radians(5))
    k_int = torch.tensor([[f, 0, 16.0], [0, f, 12.0], [0, 0, 1]])  # principal point on pixel (16, 12)
    for depth in (2.0, 7.0):
        xy_rot, _ = reproject(torch.full((24, 32), depth), k_int, torch.eye(4), k_int, c2w_rot)
        assert xy_rot[0, 12, 16].item() - 16.0 == pytest.approx(-f * math.tan(math.radians(5)), abs=1e-4)
        assert xy_rot[1, 12, 16].item() == pytest.approx(12.0, abs=1e-4)


def test_flow_recovers_known_translation():
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(64.0), indexing="ij")

    def texture(x, y):
        return 0.5 + 0.2 * torch.sin(x / 2.3 + y / 4.1) + 0.2 * torch.cos(y / 2.9 - x / 5.3)

    dx, dy = 2.6, -1.3
    img_i = texture(xs, ys)[None].expand(3, -1, -1)
    img_j = texture(xs - dx, ys - dy)[None].expand(3, -1, -1)  # content moves by (dx, dy)
    flow, texture_strength = lucas_kanade_flow(img_i, img_j)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    error = (flow - torch.tensor([dx, dy]).view(2, 1, 1))[inner].norm(dim=0)
    assert error.median() < 0.1
    assert (texture_strength > 0).all()
    back, _ = lucas_kanade_flow(img_j, img_i)
    assert forward_backward_error(flow, back)[inner[1:]].median() < 0.2


def test_ground_truth_is_near_zero_and_corruptions_increase(scene):
    gt = reprojection_error(scene["frames"], scene["depth"], scene["intrinsics"], scene["c2w"])
    assert gt.rpe < 0.12  # the Lucas-Kanade floor on this scene, in pixels
    assert gt.covisible_fraction > 0.7 and set(gt.per_pair) == {"0-1", "1-2", "2-3"}

    wrong_pose = scene["c2w"].clone()
    wrong_pose[1:, 0, 3] += 0.05  # 5 cm sideways error -> ~0.75 px at depth 4, focal 60
    bad_pose = reprojection_error(scene["frames"], scene["depth"], scene["intrinsics"], wrong_pose)
    wrong_depth = reprojection_error(scene["frames"], scene["depth"] * 1.3, scene["intrinsics"], scene["c2w"])
    shifted = scene["frames"].clone()
    shifted[2:] = torch.roll(shifted[2:], 2, dims=-1)  # content jumps 2 px: geometry no longer explains it
    bad_frames = reprojection_error(shifted, scene["depth"], scene["intrinsics"], scene["c2w"])
    for corrupted in (bad_pose, wrong_depth, bad_frames):
        assert corrupted.rpe > 2 * gt.rpe


def test_occluded_pixels_leave_the_covisibility_mask():
    """A pixel of frame i is occluded in frame j when frame j's depth where it lands is nearer than
    its reprojected depth (beyond depth_tolerance). Same camera for both frames, identical textured
    images (zero flow), depth_i = 5 everywhere; frame j has an occluder at depth 2 in a block:
    exactly the block's pixels must leave the mask, and only them."""
    height, width = 24, 32
    ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    image = (0.5 + 0.2 * torch.sin(xs / 2.3 + ys / 4.1) + 0.2 * torch.cos(ys / 2.9 - xs / 5.3))[None].expand(3, -1, -1)
    k = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    depth_i = torch.full((height, width), 5.0)
    depth_j = depth_i.clone()
    block = (slice(8, 16), slice(10, 20))
    depth_j[block] = 2.0
    # a 4 % mismatch stays within the default 5 % tolerance: not an occlusion
    depth_j[2:6, 2:8] = 5.0 * 1.04
    errors, mask = pair_errors(image, image, depth_i, depth_j, k, k, torch.eye(4), torch.eye(4))
    occluded = torch.zeros(height, width, dtype=torch.bool)
    occluded[block] = True
    assert not mask[occluded].any()
    # every other pixel is inside, in front, with zero flow and textured; the outermost ring is left
    # out (a pixel centre on the border may land a rounding error outside the frame)
    inner = torch.zeros(height, width, dtype=torch.bool)
    inner[1:-1, 1:-1] = True
    assert mask[inner & ~occluded].all()
    assert errors[mask].max() < 1e-3
    # through reprojection_error: the block is missing from the pair's co-visible pixels
    result = reprojection_error(torch.stack([image, image]), torch.stack([depth_i, depth_j]), k.expand(2, 3, 3),
                                torch.eye(4).expand(2, 4, 4))
    assert (height - 2) * (width - 2) - 8 * 10 <= result.covisible_pixels <= height * width - 8 * 10


def _textured_pair(height=24, width=32):
    ys, xs = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return (0.5 + 0.2 * torch.sin(xs / 2.3 + ys / 4.1) + 0.2 * torch.cos(ys / 2.9 - xs / 5.3))[None].expand(3, -1, -1)


def test_thresholds_of_the_covisibility_mask():
    """depth_tolerance, fb_threshold and min_texture each decide the mask as documented."""
    image = _textured_pair()
    k = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    depth_i = torch.full((24, 32), 5.0)
    depth_j = depth_i.clone()
    depth_j[8:16, 10:20] = 2.0  # |2 - 5| = 3: occluded at 5 % tolerance, visible at 70 % (3 <= 3.5)
    args = (image, image, depth_i, depth_j, k, k, torch.eye(4), torch.eye(4))
    _, loose = pair_errors(*args, depth_tolerance=0.7)
    assert loose[8:16, 10:20].all()
    _, none_fb = pair_errors(*args, fb_threshold=0.0)  # the forward-backward error is never < 0
    _, none_tex = pair_errors(*args, min_texture=1e9)
    assert not none_fb.any() and not none_tex.any()
    depth_bad = depth_i.clone()
    depth_bad[0:4, 0:4] = 0.0
    depth_bad[4:6, 0:4] = float("nan")
    _, mask = pair_errors(image, image, depth_bad, depth_bad, k, k, torch.eye(4), torch.eye(4))
    assert not mask[0:6, 0:4].any() and mask[10, 10]


def test_bilinear_lookup_and_inside():
    from gfcore.metrics.rpe import _inside, _sample, pixel_grid

    grid = pixel_grid(5, 7, torch.float64)
    assert grid.shape == (3, 5, 7) and grid[0, 2, 3] == 3 and grid[1, 2, 3] == 2 and (grid[2] == 1).all()
    plane = 2 * grid[0] + 3 * grid[1] + 1  # bilinear lookup is exact on a plane
    xy = torch.stack([torch.full((5, 7), 2.25), torch.full((5, 7), 3.5)]).double()
    torch.testing.assert_close(_sample(plane, xy), torch.full((5, 7), 2 * 2.25 + 3 * 3.5 + 1, dtype=torch.float64))
    pts = torch.tensor([[0.0, 6.0, -0.01, 6.01, 3.0, 3.0], [0.0, 4.0, 2.0, 2.0, -0.01, 4.01]]).view(2, 1, 6)
    assert _inside(pts, 5, 7)[0].tolist() == [True, True, False, False, False, False]


def test_pairs_offsets_and_fraction():
    image = _textured_pair()
    frames = torch.stack([image] * 4)
    depth = torch.full((4, 24, 32), 5.0)
    k = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]]).expand(4, 3, 3)
    result = reprojection_error(frames, depth, k, torch.eye(4).expand(4, 4, 4), offsets=(1, 2))
    assert list(result.per_pair) == ["0-1", "1-2", "2-3", "0-2", "1-3"]
    assert result.covisible_fraction == result.covisible_pixels / (5 * 24 * 32) and result.covisible_fraction > 0.8
    assert result.rpe < 1e-3 and all(v < 1e-3 for v in result.per_pair.values())
    empty = reprojection_error(frames, torch.zeros(4, 24, 32), k, torch.eye(4).expand(4, 4, 4))
    assert math.isnan(empty.rpe) and empty.covisible_pixels == 0 and math.isnan(empty.per_pair["0-1"])


def test_summary_ratio():
    summary = rpe_summary([0.4, 0.6], [0.25, float("nan")])
    assert summary == {"generated": 0.5, "ground_truth": 0.25, "ratio": 2.0}
    assert math.isnan(rpe_summary([0.4], [])["ratio"])
    assert math.isnan(rpe_summary([0.4], [0.0])["ratio"])  # a zero ground truth has no ratio
    assert math.isnan(rpe_summary([float("nan")], [0.2])["ratio"])
    assert rpe_summary([0.3, 0.5], [0.2])["ratio"] == pytest.approx(2.0)


def test_bad_input_is_named(scene):
    f, d, k, c = scene["frames"], scene["depth"], scene["intrinsics"], scene["c2w"]
    with pytest.raises(ValueError, match="depth"):
        reprojection_error(f, d[:, :-1], k, c)
    with pytest.raises(ValueError, match="intrinsics"):
        reprojection_error(f, d, k[:2], c)
    with pytest.raises(ValueError, match="c2w"):
        reprojection_error(f, d, k, c[..., :3, :])
    with pytest.raises(TypeError, match="frames"):
        reprojection_error((f * 255).to(torch.uint8), d, k, c)


def test_paper_intrinsics():
    from gfcore.metrics.rpe import paper_intrinsics

    k = paper_intrinsics(3, 48, 64)
    assert k.shape == (3, 3, 3)
    assert k[0, 0, 0] == k[0, 1, 1] == pytest.approx(0.9 * 64)
    assert (k[2, 0, 2], k[2, 1, 2]) == (31.5, 23.5)


def _identity_setup(depth_value=5.0):
    image = _textured_pair()
    k = torch.tensor([[30.0, 0, 15.5], [0, 30.0, 11.5], [0, 0, 1]])
    return image, k, torch.full((24, 32), depth_value)


def test_mask_boundaries_are_inclusive_where_documented(monkeypatch):
    """|depth_j - z| <= tol z and texture >= min_texture include their boundary; fb error < threshold
    (default 1 px) excludes it; depths below 1 are valid."""
    import gfcore.metrics.rpe as rpe_module

    image, k, depth4 = _identity_setup(4.0)
    depth_j = torch.full((24, 32), 5.0)  # |5 - 4| = 1 = 0.25 * 4 exactly
    _, mask = pair_errors(image, image, depth4, depth_j, k, k, torch.eye(4), torch.eye(4), depth_tolerance=0.25)
    assert mask[5:-5, 5:-5].all()
    texture = lucas_kanade_flow(image, image)[1]
    _, mask = pair_errors(image, image, depth4, depth4, k, k, torch.eye(4), torch.eye(4),
                          min_texture=float(texture[10, 10]))
    assert mask[10, 10]
    _, near, _ = (None, *pair_errors(image, image, depth4 * 0.125, depth4 * 0.125, k, k, torch.eye(4), torch.eye(4)))
    assert near[5:-5, 5:-5].all()  # depth 0.5: in front, valid
    monkeypatch.setattr(rpe_module, "forward_backward_error", lambda f, b: torch.full(f.shape[1:], 1.5))
    assert not pair_errors(image, image, depth4, depth4, k, k, torch.eye(4), torch.eye(4))[1].any()
    assert pair_errors(image, image, depth4, depth4, k, k, torch.eye(4), torch.eye(4), fb_threshold=2.0)[1][10, 10]


def test_pixels_landing_outside_frame_j_or_with_zero_depth_are_excluded():
    image, k, depth = _identity_setup(5.0)
    c2w_j = torch.eye(4)
    c2w_j[0, 3] = -0.5  # camera j 0.5 to the left: pixels move 30 * 0.5 / 5 = 3 px right
    _, mask = pair_errors(image, image, depth, depth, k, k, torch.eye(4), c2w_j)
    assert not mask[:, 29:].any()  # land beyond the right edge
    assert mask[5:-5, 5:26].all()  # zero flow, but inside and unoccluded: co-visible (their error is 3 px)
    # camera j 1 behind camera i: a pixel of depth 0 (the camera centre) lands in front of camera j,
    # at its principal point, where depth_j says 1: only depth_i > 0 rejects it
    c2w_back = torch.eye(4)
    c2w_back[2, 3] = -1.0
    depth_i = torch.full((24, 32), 5.0)
    depth_i[10:14, 14:18] = 0.0
    depth_j = torch.full((24, 32), 6.0)
    depth_j[9:15, 13:19] = 1.0
    _, mask = pair_errors(image, image, depth_i, depth_j, k, k, torch.eye(4), c2w_back)
    assert not mask[10:14, 14:18].any()


def test_input_errors_name_the_argument_exactly(scene):
    f, d, k, c = scene["frames"], scene["depth"], scene["intrinsics"], scene["c2w"]
    t, _, h, w = f.shape
    with pytest.raises(TypeError, match="^frames"):
        reprojection_error((f * 255).to(torch.uint8), d, k, c)
    with pytest.raises(ValueError, match=rf"^frames: expected \[T, 3, H, W\], got \({t}, 1, {h}, {w}\)$"):
        reprojection_error(f[:, :1], d, k, c)
    with pytest.raises(ValueError, match=f"^depth: dimension T is {t - 1}, expected {t}"):
        reprojection_error(f, d[:-1], k, c)
    with pytest.raises(ValueError, match=f"^depth: dimension W is {w - 1}, expected {w}"):
        reprojection_error(f, d[..., :-1], k, c)
    with pytest.raises(ValueError, match=rf"^depth: expected shape \[T,H,W\]"):
        reprojection_error(f, d[None], k, c)
    with pytest.raises(ValueError, match=rf"^intrinsics: expected shape \[T,3,3\]"):
        reprojection_error(f, d, k[..., :2], c)
    with pytest.raises(ValueError, match=f"^c2w: dimension T is {t - 1}, expected {t}"):
        reprojection_error(f, d, k, c[:-1])
    with pytest.raises(ValueError, match=rf"^c2w: expected shape \[T,4,4\]"):
        reprojection_error(f, d, k, c[..., :3, :])


def test_totals_and_pass_through_arguments():
    image, k, depth = _identity_setup(5.0)
    frames = torch.stack([image] * 3)
    depths = torch.stack([depth] * 3)
    depths[1, 8:16, 10:20] = 2.0  # an occluder in frame 1
    ks, poses = k.expand(3, 3, 3), torch.eye(4).expand(3, 4, 4)
    strict = reprojection_error(frames, depths, ks, poses)
    loose = reprojection_error(frames, depths, ks, poses, depth_tolerance=0.7)  # passed on to pair_errors
    # pair 0-1: |2 - 5| = 3 <= 0.7 * 5 now passes; pair 1-2: |5 - 2| = 3 > 0.7 * 2 still fails
    assert loose.covisible_pixels == strict.covisible_pixels + 8 * 10
    assert strict.rpe < 1e-4  # zero flow and zero motion: the mean error is the flow's noise only


def test_paper_intrinsics_matrix_and_a_single_frame_clip():
    from gfcore.metrics.rpe import paper_intrinsics

    k = paper_intrinsics(2, 48, 64)
    f = 0.9 * 64
    expected = torch.tensor([[f, 0.0, 31.5], [0.0, f, 23.5], [0.0, 0.0, 1.0]])
    assert torch.equal(k[0], expected) and torch.equal(k[1], expected)
    image, kk, depth = _identity_setup()
    single = reprojection_error(image[None], depth[None], kk[None], torch.eye(4)[None])
    assert math.isnan(single.rpe) and single.covisible_pixels == 0 and single.covisible_fraction == 0.0
    assert single.per_pair == {}


def test_rpe_is_invariant_to_the_scene_scale(scene):
    """Scaling the world (depths and camera translations) by s leaves every projection, hence the
    co-visibility mask and the errors, unchanged: a scene 5x smaller (depths below 1) and 3x larger
    give the ground-truth scene's RPE and co-visible count."""
    base = reprojection_error(scene["frames"], scene["depth"], scene["intrinsics"], scene["c2w"])
    for s in (0.2, 3.0):
        c2w = scene["c2w"].clone()
        c2w[:, :3, 3] *= s
        scaled = reprojection_error(scene["frames"], scene["depth"] * s, scene["intrinsics"], c2w)
        assert scaled.covisible_pixels == base.covisible_pixels > 0
        assert scaled.rpe == pytest.approx(base.rpe, rel=1e-6)
    assert float(scene["depth"].max()) * 0.2 < 1.0  # the small scene lies entirely within depth 1
