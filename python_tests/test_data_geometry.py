"""gfcore.data.geometry and camera files, checked against independent numpy references."""
import os

import numpy as np
import pytest
import torch

from data_test_utils import REAL_CAMERA_DIR, REAL_CAMERA_KEYS
from gfcore.data import geometry
from gfcore.data.camera_file import read_camera_file, write_camera_file
from gfcore.data.errors import DataError


def random_c2w(generator, *batch):
    """Random rigid transforms [*batch, 4, 4] (rotations from QR, translations in [-2, 2])."""
    q, r = torch.linalg.qr(torch.randn(*batch, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    q = q * torch.sign(torch.det(q))[..., None, None]  # proper rotations
    T = torch.zeros(*batch, 4, 4, dtype=torch.float64)
    T[..., :3, :3] = q
    T[..., :3, 3] = 4 * torch.rand(*batch, 3, generator=generator, dtype=torch.float64) - 2
    T[..., 3, 3] = 1
    return T


def random_K(generator, *batch, height=24, width=32):
    K = torch.zeros(*batch, 3, 3, dtype=torch.float64)
    K[..., 0, 0] = width * (0.6 + 0.4 * torch.rand(*batch, generator=generator, dtype=torch.float64))
    K[..., 1, 1] = height * (0.6 + 0.6 * torch.rand(*batch, generator=generator, dtype=torch.float64))
    K[..., 0, 2] = width / 2 + torch.randn(*batch, generator=generator, dtype=torch.float64)
    K[..., 1, 2] = height / 2 + torch.randn(*batch, generator=generator, dtype=torch.float64)
    K[..., 2, 2] = 1
    return K


# ---------------------------------------------------------------- camera files and row conversions
@pytest.mark.parametrize("key", REAL_CAMERA_KEYS)
def test_real_camera_files_convert_to_valid_cameras(key):
    cameras = read_camera_file(os.path.join(REAL_CAMERA_DIR, key + ".txt"))
    assert len(cameras) == 16 and cameras.url.startswith("https://www.youtube.com/")
    with open(os.path.join(REAL_CAMERA_DIR, key + ".txt")) as handle:
        first = [float(x) for x in handle.read().splitlines()[1].split()]
    rows = torch.from_numpy(cameras.rows)
    K, w2c, c2w = geometry.re10k_rows_to_cameras(rows, 640, 360)
    # Independent reading of line 2: fx over width, fy over height, [R|t] row-major.
    assert K[0, 0, 0].item() == pytest.approx(first[1] * 640)
    assert K[0, 1, 1].item() == pytest.approx(first[2] * 360)
    assert K[0, 0, 2].item() == pytest.approx(first[3] * 640) and K[0, 1, 2].item() == pytest.approx(first[4] * 360)
    np.testing.assert_allclose(w2c[0, :3, :].numpy(), np.array(first[7:]).reshape(3, 4))
    R = w2c[:, :3, :3]
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.det(R), torch.ones(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w, torch.linalg.inv(w2c))
    back = geometry.cameras_to_re10k_rows(K, w2c, 640, 360)
    torch.testing.assert_close(back, rows)
    # A 19-number row (timestamp first) is accepted too.
    with_stamp = torch.cat([torch.from_numpy(cameras.timestamps[:, None]).double(), rows], -1)
    torch.testing.assert_close(geometry.re10k_rows_to_cameras(with_stamp, 640, 360)[1], w2c)


def test_dfot_rows_match_re10k_rows():
    cameras = read_camera_file(os.path.join(REAL_CAMERA_DIR, REAL_CAMERA_KEYS[0] + ".txt"))
    rows = torch.from_numpy(cameras.rows)
    dfot = torch.cat([rows[:, :4], rows[:, 6:]], -1)
    for a, b in zip(geometry.dfot_poses_to_cameras(dfot, 256, 256), geometry.re10k_rows_to_cameras(rows, 256, 256)):
        torch.testing.assert_close(a, b)


def test_camera_file_write_read_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    K = random_K(g, 5)
    w2c = random_c2w(g, 5)
    rows = geometry.cameras_to_re10k_rows(K, w2c, 32, 24).numpy()
    path = tmp_path / "clip.txt"
    write_camera_file(path, "https://example.org/v", [0, 33366, 66733, 100100, 133466], rows)
    cameras = read_camera_file(path)
    assert cameras.url == "https://example.org/v"
    np.testing.assert_array_equal(cameras.timestamps, [0, 33366, 66733, 100100, 133466])
    np.testing.assert_allclose(cameras.rows, rows, atol=1e-9)


@pytest.mark.parametrize(
    "body,match",
    [
        ("", r"clip.txt:1: expected the source URL"),
        ("url\n", r"clip.txt: no camera lines"),
        ("url\n" + " ".join(["1"] * 19) + "\n" + " ".join(["1"] * 18) + "\n", r"clip.txt:3: expected 19 numbers, got 18"),
        ("url\n" + " ".join(["1"] * 18) + " x\n", r"clip.txt:2: not a number"),
        ("url\n" + " ".join(["1"] * 18) + " nan\n", r"clip.txt:2: non-finite"),
        ("url\n1.5 " + " ".join(["1"] * 18) + "\n", r"clip.txt:2: not a number"),
    ],
)
def test_malformed_camera_files_name_file_and_line(tmp_path, body, match):
    path = tmp_path / "clip.txt"
    path.write_text(body)
    with pytest.raises(DataError, match=match):
        read_camera_file(path)


def test_missing_camera_file(tmp_path):
    with pytest.raises(DataError, match="camera file not found: .*nope.txt"):
        read_camera_file(tmp_path / "nope.txt")


def test_camera_file_blank_lines_url_spaces_and_dtypes(tmp_path):
    """A blank line between camera lines is skipped, not the end of the file (reading stopped
    there would silently drop frames); the URL is stripped; timestamps int64, rows float64."""
    line1 = "0 " + " ".join(str(0.5 + i) for i in range(18))
    line2 = "33366 " + " ".join(str(-1.25 * i) for i in range(18))
    path = tmp_path / "clip.txt"
    path.write_text("  https://example.org/v \n" + line1 + "\n\n   \n" + line2 + "\n\n")
    cameras = read_camera_file(path)
    assert cameras.url == "https://example.org/v" and len(cameras) == 2
    assert cameras.timestamps.dtype == np.int64 and cameras.rows.dtype == np.float64
    np.testing.assert_array_equal(cameras.timestamps, [0, 33366])
    np.testing.assert_array_equal(cameras.rows, [[0.5 + i for i in range(18)], [-1.25 * i for i in range(18)]])
    path.write_text("   \n" + line1 + "\n")  # a blank first line is no URL
    with pytest.raises(DataError, match=r"clip.txt:1: expected the source URL"):
        read_camera_file(path)


@pytest.mark.parametrize("bad,match", [("x", "expected 19 numbers, got 20"), ("inf", "non-finite value in")])
def test_camera_file_errors_quote_the_line_cut_at_80_characters(tmp_path, bad, match):
    """A long bad line is quoted, but only its first 80 characters: the message stays one readable line."""
    fields = ["1"] + [f"{0.123456789 * i:.9f}" for i in range(18)]
    line = " ".join(fields + ["7"]) if bad == "x" else " ".join(fields[:-1] + [bad])
    assert len(line) > 100
    path = tmp_path / "clip.txt"
    path.write_text("url\n" + line + "\n")
    with pytest.raises(DataError, match=match) as info:
        read_camera_file(path)
    assert str(info.value).endswith(repr(line[:80]))


def test_write_camera_file_rejects_bad_rows_naming_the_shapes(tmp_path):
    rows = np.zeros((5, 18))
    with pytest.raises(ValueError, match=r"rows must have shape \[T, 18\], got \[5, 17\]"):
        write_camera_file(tmp_path / "a.txt", "url", range(5), rows[:, :17])
    with pytest.raises(ValueError, match=r"rows must have shape \[T, 18\], got \[5, 18, 2\]"):
        write_camera_file(tmp_path / "a.txt", "url", range(5), np.zeros((5, 18, 2)))
    with pytest.raises(ValueError, match=r"timestamps \(4\) and rows \(5\) differ in length"):
        write_camera_file(tmp_path / "a.txt", "url", range(4), rows)
    assert not (tmp_path / "a.txt").exists()


def test_write_camera_file_creates_folders_and_nothing_else(tmp_path, monkeypatch):
    rows = np.arange(36, dtype=np.float64).reshape(2, 18) / 7
    nested = tmp_path / "new" / "split" / "clip.txt"
    write_camera_file(nested, "u", [1, 2], rows)
    np.testing.assert_allclose(read_camera_file(nested).rows, rows, rtol=0, atol=5e-10)
    # A bare file name is written in the current folder, and no other folder is made there.
    monkeypatch.chdir(tmp_path / "new")
    write_camera_file("bare.txt", "u", [1, 2], rows)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["bare.txt", "split"]
    assert (tmp_path / "new" / "bare.txt").read_text().splitlines()[1].startswith("1 0.000000000 0.142857143 ")


# ---------------------------------------------------------------- poses
def test_relative_to_first_is_invariant_to_the_world_frame():
    g = torch.Generator().manual_seed(1)
    c2w = random_c2w(g, 2, 6)
    relative = geometry.relative_to_first(c2w)
    torch.testing.assert_close(relative[:, 0], torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    G = random_c2w(g, 1, 1)
    torch.testing.assert_close(geometry.relative_to_first(G @ c2w), relative)
    expected = np.linalg.inv(c2w[:, :1].numpy()) @ c2w.numpy()
    np.testing.assert_allclose(relative.numpy(), expected, atol=1e-12)
    torch.testing.assert_close(geometry.invert_rigid(c2w), torch.linalg.inv(c2w))


def project(K, c2w, points):
    """Independent pinhole projection (numpy) of world points [N, 3] -> pixel coordinates [N, 2]."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    pix = cam @ K.T
    return pix[:, :2] / pix[:, 2:]


def test_flip_matches_a_mirrored_world():
    """Flipped cameras see the x-mirrored world at mirrored pixels: u -> W - u, v unchanged."""
    g = torch.Generator().manual_seed(2)
    width = 32
    K = random_K(g, 4, width=width)
    K[..., 0, 1] = 0.7  # a skew, to check its sign flips too
    c2w = random_c2w(g, 4)
    K_f, c2w_f = geometry.flip_horizontal(K, c2w, width)
    torch.testing.assert_close(torch.det(c2w_f[:, :3, :3]), torch.ones(4, dtype=torch.float64))
    points = np.random.default_rng(0).normal(size=(50, 3)) * 2
    for i in range(4):
        # Put the points in front of camera i so projections are meaningful.
        world = points @ c2w[i, :3, :3].numpy().T * 0.3 + c2w[i, :3, 3].numpy() + 3 * c2w[i, :3, 2].numpy()
        uv = project(K[i].numpy(), c2w[i].numpy(), world)
        mirrored = world * np.array([-1.0, 1.0, 1.0])
        uv_f = project(K_f[i].numpy(), c2w_f[i].numpy(), mirrored)
        np.testing.assert_allclose(uv_f[:, 0], width - uv[:, 0], atol=1e-9)
        np.testing.assert_allclose(uv_f[:, 1], uv[:, 1], atol=1e-9)
    # Flipping twice is the identity.
    K_ff, c2w_ff = geometry.flip_horizontal(K_f, c2w_f, width)
    torch.testing.assert_close(K_ff, K)
    torch.testing.assert_close(c2w_ff, c2w)


# ---------------------------------------------------------------- resize + crop of intrinsics
def blob_image(height, width, centers, sigma):
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    image = np.zeros((len(centers), height, width))
    for i, (cu, cv) in enumerate(centers):
        image[i] = np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma**2))
    return image


def centroids(images):
    height, width = images.shape[-2:]
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    mass = images.sum((-1, -2))
    return np.stack([(images * u).sum((-1, -2)) / mass, (images * v).sum((-1, -2)) / mass], -1)


@pytest.mark.parametrize(
    "in_hw,out_hw", [((96, 128), (48, 48)), ((90, 160), (64, 64)), ((60, 80), (45, 60)), ((40, 40), (64, 96))]
)
def test_resize_crop_intrinsics_follow_the_pixels(in_hw, out_hw):
    """Gaussian blobs drawn at the projections of 3D points, resized and cropped like the frames,
    end up at the projections under the adjusted intrinsics."""
    from gfcore.data.transforms import resize_crop_frames

    height, width = in_hw
    K = np.array([[0.9 * width, 0, 0.52 * width], [0, 1.1 * height, 0.47 * height], [0, 0, 1]])
    rng = np.random.default_rng(3)
    # Points whose projections stay well inside the cropped region.
    (rh, rw), (top, left) = geometry.resize_crop_geometry(in_hw, out_hw)
    scale = max(out_hw[0] / height, out_hw[1] / width)
    u = (left + rng.uniform(0.3, 0.7, 6) * out_hw[1]) / (rw / width)
    v = (top + rng.uniform(0.3, 0.7, 6) * out_hw[0]) / (rh / height)
    depth = rng.uniform(1, 3, 6)
    cam = np.linalg.inv(K) @ np.stack([u * depth, v * depth, depth])
    images = blob_image(height, width, list(zip(u, v)), sigma=2.5 / min(scale, 1.0))
    out = resize_crop_frames(torch.from_numpy(images)[:, None].float() * 2 - 1, out_hw)[:, 0].double().numpy()
    assert out.shape[-2:] == out_hw
    K_out = geometry.resize_crop_intrinsics(torch.from_numpy(K), in_hw, out_hw).numpy()
    expected = (K_out @ cam)[:2] / (K_out @ cam)[2]
    measured = centroids((out + 1) / 2)
    np.testing.assert_allclose(measured, expected.T, atol=0.06)


def test_resize_crop_geometry_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        geometry.resize_crop_geometry((0, 10), (4, 4))


# ---------------------------------------------------------------- Pluecker rays
def plucker_reference(K, c2w, height, width, patch):
    """Per-pixel loop: ray through the patch centre, unit direction d and moment o x d."""
    K, c2w = np.asarray(K, np.float64), np.asarray(c2w, np.float64)
    out = np.zeros((6, height // patch, width // patch))
    for i in range(height // patch):
        for j in range(width // patch):
            pixel = np.array([j * patch + patch / 2, i * patch + patch / 2, 1.0])
            d = c2w[:3, :3] @ np.linalg.solve(K, pixel)
            d /= np.linalg.norm(d)
            out[:3, i, j] = d
            out[3:, i, j] = np.cross(c2w[:3, 3], d)
    return out


@pytest.mark.parametrize("patch", [1, 2, 4])
def test_plucker_rays_match_per_pixel_reference(patch):
    g = torch.Generator().manual_seed(4)
    height, width = 8, 12
    K = random_K(g, 2, 3, height=height, width=width)
    c2w = random_c2w(g, 2, 3)
    rays = geometry.plucker_rays(K, c2w, height, width, patch_size=patch)
    assert rays.shape == (2, 3, 6, height // patch, width // patch) and rays.dtype == torch.float64
    for b in range(2):
        for t in range(3):
            np.testing.assert_allclose(rays[b, t].numpy(), plucker_reference(K[b, t], c2w[b, t], height, width, patch), atol=1e-12)


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 2e-6), (torch.bfloat16, 3e-2)])
def test_plucker_rays_low_precision_and_non_contiguous(dtype, atol):
    g = torch.Generator().manual_seed(5)
    height, width = 6, 10
    K = random_K(g, 4, height=height, width=width)
    c2w = random_c2w(g, 4)
    # Non-contiguous inputs: every other camera of a bigger batch, and a transposed-then-back K.
    K_nc = torch.cat([K, K])[::2].to(dtype).transpose(-1, -2).contiguous().transpose(-1, -2)
    c2w_nc = torch.stack([c2w, c2w], 1)[:, 0].to(dtype)
    assert not K_nc.is_contiguous()
    rays = geometry.plucker_rays(K_nc, c2w_nc, height, width)
    assert rays.dtype == dtype
    ref = np.stack([plucker_reference(K_nc[i].double(), c2w_nc[i].double(), height, width, 1) for i in range(4)])
    np.testing.assert_allclose(rays.double().numpy(), ref, atol=atol, rtol=atol)


def test_plucker_rays_geometric_properties():
    """Directions are unit, moments are orthogonal to them, and points on a ray satisfy X x d = m."""
    g = torch.Generator().manual_seed(6)
    K = random_K(g, 3, height=10, width=14)
    c2w = random_c2w(g, 3)
    rays = geometry.plucker_rays(K, c2w, 10, 14)
    d, m = rays[:, :3], rays[:, 3:]
    torch.testing.assert_close(d.norm(dim=1), torch.ones(3, 10, 14, dtype=torch.float64))
    torch.testing.assert_close((d * m).sum(1), torch.zeros(3, 10, 14, dtype=torch.float64), atol=1e-12, rtol=0)
    points = c2w[:, :3, 3, None, None] + 2.5 * d
    torch.testing.assert_close(torch.cross(points, d, dim=1), m)


def test_plucker_rays_reject_bad_input():
    K = torch.eye(3).expand(2, 3, 3)
    c2w = torch.eye(4).expand(2, 4, 4)
    with pytest.raises(ValueError, match=r"intrinsics must have shape \[..., 3, 3\]"):
        geometry.plucker_rays(torch.eye(4), c2w, 4, 4)
    with pytest.raises(ValueError, match=r"c2w must have shape \[..., 4, 4\]"):
        geometry.plucker_rays(K, torch.eye(3), 4, 4)
    with pytest.raises(TypeError, match="c2w must be a floating-point tensor"):
        geometry.plucker_rays(K, torch.eye(4, dtype=torch.int64), 4, 4)
    with pytest.raises(ValueError, match="divisible by patch_size 3"):
        geometry.plucker_rays(K, c2w, 4, 4, patch_size=3)
    for height, width, patch in [(8, 6, 4), (6, 8, 4), (8, 8, 0), (8, 8, -2)]:  # either side, or a patch < 1
        with pytest.raises(ValueError, match=rf"height {height} and width {width} must be divisible by patch_size {patch}"):
            geometry.plucker_rays(K, c2w, height, width, patch_size=patch)
    with pytest.raises(ValueError, match=r"rows must have shape \[..., 18\]"):
        geometry.re10k_rows_to_cameras(torch.zeros(3, 17), 4, 4)


# ---------------------------------------------------------------- argument checks, batching, dtypes
def _bad_inputs():
    """(call with one bad argument, the argument's name): every public function names what is wrong."""
    K, c2w = torch.eye(3), torch.eye(4)
    return [
        (lambda x: geometry.intrinsics_from_normalized(x, 4, 4), (4,), "fxfycxcy"),
        (lambda x: geometry.normalized_from_intrinsics(x, 4, 4), (3, 3), "K"),
        (lambda x: geometry.invert_rigid(x), (4, 4), "T"),
        (lambda x: geometry.re10k_rows_to_cameras(x, 4, 4), (18,), "rows"),
        (lambda x: geometry.cameras_to_re10k_rows(K, x, 4, 4), (4, 4), "w2c"),
        (lambda x: geometry.cameras_to_re10k_rows(x, c2w, 4, 4), (3, 3), "K"),
        (lambda x: geometry.dfot_poses_to_cameras(x, 4, 4), (16,), "poses"),
        (lambda x: geometry.relative_to_first(x), (4, 4), "c2w"),
        (lambda x: geometry.resize_crop_intrinsics(x, (4, 4), (2, 2)), (3, 3), "K"),
        (lambda x: geometry.flip_horizontal(x, c2w, 4), (3, 3), "K"),
        (lambda x: geometry.flip_horizontal(K, x, 4), (4, 4), "c2w"),
        (lambda x: geometry.plucker_rays(x, c2w, 4, 4), (3, 3), "intrinsics"),
        (lambda x: geometry.plucker_rays(K, x, 4, 4), (4, 4), "c2w"),
    ]


@pytest.mark.parametrize("call,shape,name", _bad_inputs())
def test_bad_geometry_inputs_name_the_argument(call, shape, name):
    """Wrong last dims, a non-tensor, an integer tensor: each error starts with the argument's name.
    (Last dims + 2: rows of 19 numbers are valid, the timestamp first.)"""
    wrong = torch.zeros(2, *[s + 2 for s in shape])
    with pytest.raises(ValueError, match=rf"^{name} must have shape \[\.\.\., {', '.join(map(str, shape))}\], "
                                         rf"got \[2, {', '.join(str(s + 2) for s in shape)}\]$"):
        call(wrong)
    with pytest.raises(TypeError, match=rf"^{name} must be a torch.Tensor, got list$"):
        call(torch.zeros(shape).tolist())
    with pytest.raises(TypeError, match=rf"^{name} must be a floating-point tensor, got torch.int64$"):
        call(torch.zeros(shape, dtype=torch.int64))


def test_relative_to_first_needs_a_frame_axis():
    with pytest.raises(ValueError, match=r"^c2w must have shape \[\.\.\., T, 4, 4\], got \[4, 4\]$"):
        geometry.relative_to_first(torch.eye(4, dtype=torch.float64))
    g = torch.Generator().manual_seed(7)
    c2w = random_c2w(g, 3)  # [T, 4, 4], no batch dims: allowed
    expected = np.linalg.inv(c2w[0].numpy()) @ c2w.numpy()
    np.testing.assert_allclose(geometry.relative_to_first(c2w).numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("batch", [(), (2, 3)])
def test_intrinsics_and_rows_keep_any_leading_dims(batch):
    """Normalised <-> pixel intrinsics and camera rows, element by element against the formulas,
    with no batch dims and with two of them (the last axis only is the one converted)."""
    g = torch.Generator().manual_seed(8)
    width, height = 40, 24
    norm = torch.rand(*batch, 4, generator=g, dtype=torch.float64) + 0.2
    K = geometry.intrinsics_from_normalized(norm, width, height)
    assert K.shape == (*batch, 3, 3)
    flat_norm, flat_K = norm.reshape(-1, 4).numpy(), K.reshape(-1, 3, 3).numpy()
    for (fx, fy, cx, cy), k in zip(flat_norm, flat_K):
        np.testing.assert_array_equal(k, [[fx * width, 0, cx * width], [0, fy * height, cy * height], [0, 0, 1]])
    back = geometry.normalized_from_intrinsics(K, width, height)
    assert back.shape == (*batch, 4)
    np.testing.assert_allclose(back.numpy(), norm.numpy(), rtol=1e-15)
    w2c = random_c2w(g, *batch)
    rows = geometry.cameras_to_re10k_rows(K, w2c, width, height)
    assert rows.shape == (*batch, 18)
    for row, n, T in zip(rows.reshape(-1, 18).numpy(), flat_norm, w2c.reshape(-1, 4, 4).numpy()):
        np.testing.assert_allclose(row, np.concatenate([n, [0, 0], T[:3].reshape(12)]), rtol=1e-15, atol=0)
    # and back: rows (also with a timestamp first) and DFoT poses to (K, w2c, c2w) keep the leading dims
    stamped = torch.cat([torch.full((*batch, 1), 33366.0, dtype=torch.float64), rows], -1)
    dfot = torch.cat([rows[..., :4], rows[..., 6:]], -1)
    for cams in (geometry.re10k_rows_to_cameras(rows, width, height),
                 geometry.re10k_rows_to_cameras(stamped, width, height),
                 geometry.dfot_poses_to_cameras(dfot, width, height)):
        assert [c.shape for c in cams] == [(*batch, 3, 3), (*batch, 4, 4), (*batch, 4, 4)]
        np.testing.assert_allclose(cams[0].numpy(), K.numpy(), rtol=1e-15)
        np.testing.assert_array_equal(cams[1].numpy(), w2c.numpy())
        np.testing.assert_allclose(cams[2].numpy(), np.linalg.inv(w2c.numpy()), atol=1e-12)


def test_camera_rows_take_the_intrinsics_dtype():
    """Rows are in K's dtype: float32 intrinsics with float64 poses give float32 rows (no silent promotion)."""
    g = torch.Generator().manual_seed(9)
    K, w2c = random_K(g, 3).float(), random_c2w(g, 3)
    rows = geometry.cameras_to_re10k_rows(K, w2c, 32, 24)
    assert rows.dtype == torch.float32
    np.testing.assert_array_equal(rows[:, 6:].numpy(), w2c[:, :3].reshape(3, 12).float().numpy())


@pytest.mark.parametrize(
    "in_hw,out_hw,expected",
    [
        # scale = max(out_h / in_h, out_w / in_w); the other side is round(in * scale); centre crop, floor.
        ((90, 160), (64, 64), ((64, 114), (0, 25))),  # 64/90 wins: 160 * 0.7111 = 113.8 -> 114, (114-64)//2
        ((40, 40), (64, 96), ((96, 96), (16, 0))),  # 96/40 wins: 40 * 2.4 = 96, (96-64)//2
        ((100, 50), (30, 20), ((40, 20), (5, 0))),  # 20/50 wins: 100 * 0.4 = 40, (40-30)//2
        ((1, 1), (1, 1), ((1, 1), (0, 0))),  # one pixel is a valid size
    ],
)
def test_resize_crop_geometry_by_hand(in_hw, out_hw, expected):
    assert geometry.resize_crop_geometry(in_hw, out_hw) == expected


@pytest.mark.parametrize("in_hw,out_hw", [((0, 4), (2, 2)), ((4, 0), (2, 2)), ((4, 4), (0, 2)), ((4, 4), (2, -1))])
def test_resize_crop_geometry_rejects_each_non_positive_size(in_hw, out_hw):
    with pytest.raises(ValueError, match=r"image sizes must be positive, got in_hw=\(.*\), out_hw=\(.*\)"):
        geometry.resize_crop_geometry(in_hw, out_hw)


def test_resize_crop_intrinsics_is_the_pixel_map_applied_to_K():
    """K_out = A K with A = [[sx, 0, -left], [0, sy, -top], [0, 0, 1]] (scale, then shift by the crop),
    for a K with skew, checked on every entry."""
    g = torch.Generator().manual_seed(10)
    K = random_K(g, 2, height=90, width=160)
    K[..., 0, 1] = torch.tensor([0.8, -1.3], dtype=torch.float64)
    in_hw, out_hw = (90, 160), (64, 64)
    (rh, rw), (top, left) = (64, 114), (0, 25)  # by hand, as in test_resize_crop_geometry_by_hand
    A = np.array([[rw / 160, 0, -left], [0, rh / 90, -top], [0, 0, 1]])
    np.testing.assert_allclose(geometry.resize_crop_intrinsics(K, in_hw, out_hw).numpy(), A @ K.numpy(),
                               rtol=1e-14, atol=1e-12)
    in_hw, out_hw = (40, 40), (64, 96)  # resized (96, 96), crop top 16
    A = np.array([[96 / 40, 0, 0], [0, 96 / 40, -16], [0, 0, 1]])
    np.testing.assert_allclose(geometry.resize_crop_intrinsics(K, in_hw, out_hw).numpy(), A @ K.numpy(),
                               rtol=1e-14, atol=1e-12)


def test_cameras_to_dfot_poses_by_hand_and_back():
    """(K, c2w) -> DFoT's 16 numbers: fx/W, fy/H, cx/W, cy/H, then the world-to-camera [R|t] row by row;
    dfot_poses_to_cameras gives them back; a c2w of the wrong shape is refused by name."""
    from gfcore.data.geometry import cameras_to_dfot_poses, dfot_poses_to_cameras

    angle = torch.tensor(0.3, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 3, 1, 1)
    c2w[1, 2, :3, :3] = torch.tensor([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=torch.float64)
    c2w[1, 2, :3, 3] = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    K = torch.tensor([[30.0, 0, 16.0], [0, 40.0, 12.0], [0, 0, 1]], dtype=torch.float64).expand(2, 3, 3, 3)
    poses = cameras_to_dfot_poses(K, c2w, 64, 48)
    assert poses.shape == (2, 3, 16)
    torch.testing.assert_close(poses[1, 2, :4], torch.tensor([30 / 64, 40 / 48, 16 / 64, 12 / 48],
                                                             dtype=torch.float64), rtol=0, atol=1e-15)
    w2c = torch.linalg.inv(c2w[1, 2])
    torch.testing.assert_close(poses[1, 2, 4:], w2c[:3, :].reshape(12), rtol=0, atol=1e-14)
    K_back, w2c_back, c2w_back = dfot_poses_to_cameras(poses, 64, 48)
    torch.testing.assert_close(K_back, K, rtol=0, atol=1e-12)
    torch.testing.assert_close(c2w_back, c2w, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"^c2w must have shape \[..., 4, 4\], got \[3, 4\]$"):
        cameras_to_dfot_poses(K[0, 0], c2w[0, 0, :3], 64, 48)


def test_cameras_to_dfot_poses_one_leading_axis_and_the_intrinsics_dtype():
    """[T, 4, 4] cameras (one leading axis) give [T, 16]; the rows come out in K's dtype even when c2w's differs."""
    from gfcore.data.geometry import cameras_to_dfot_poses

    K = torch.tensor([[30.0, 0, 16.0], [0, 40.0, 12.0], [0, 0, 1]]).expand(5, 3, 3)
    c2w = torch.eye(4, dtype=torch.float64).repeat(5, 1, 1)
    c2w[:, :3, 3] = torch.arange(15, dtype=torch.float64).reshape(5, 3)
    poses = cameras_to_dfot_poses(K, c2w, 64, 48)
    assert poses.shape == (5, 16) and poses.dtype == torch.float32
    torch.testing.assert_close(poses[:, [7, 11, 15]], -c2w[:, :3, 3].float(), rtol=0, atol=0)
