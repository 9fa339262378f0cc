"""Frechet distance against scipy, and FVD through a small scripted stand-in for I3D."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gfcore.metrics.fvd import (
    fvd,
    frechet_distance,
    frechet_distance_features,
    i3d_feature_fn,
    load_i3d,
)
from gfcore.metrics.weights import WeightsUnavailable

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script

scipy_linalg = pytest.importorskip("scipy.linalg", reason="scipy not installed")


def _scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: the textbook formula with scipy's general matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,dim", [(200, 16), (64, 33)])
def test_frechet_matches_scipy(n, dim):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n, dim)) @ rng.normal(size=(dim, dim))
    b = rng.normal(size=(n + 7, dim)) @ rng.normal(size=(dim, dim)) * 0.7 + 0.3
    expected = _scipy_frechet(a, b)
    assert frechet_distance_features(a, b) == pytest.approx(expected, rel=1e-6, abs=1e-8)
    # float32 torch input is promoted to float64 before any arithmetic
    got32 = frechet_distance_features(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert got32 == pytest.approx(_scipy_frechet(a.astype(np.float32).astype(np.float64),
                                                 b.astype(np.float32).astype(np.float64)), rel=1e-6)


def test_hand_computed_gaussians():
    # 1-D: (mu1-mu2)^2 + (s1 - s2)^2 in terms of standard deviations
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[1.0]])) == pytest.approx(4 + 1)
    # identical Gaussians -> 0
    s = np.array([[2.0, 0.5], [0.5, 1.0]])
    assert abs(frechet_distance(np.zeros(2), s, np.zeros(2), s)) < 1e-12


def test_fewer_samples_than_dims_is_finite_and_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(10, 40)), rng.normal(size=(12, 40)) + 0.5
    assert frechet_distance_features(a, b) == pytest.approx(_scipy_frechet(a, b), rel=1e-5)


class TinyVideoNet(nn.Module):
    """Stand-in for StyleGAN-V's I3D: same call signature, random 3-D conv features."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1)
        self.conv2 = nn.Conv3d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = True, return_features: bool = True):
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 32, 32), mode="trilinear", align_corners=False)
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return h.mean(dim=(2, 3, 4))


@pytest.fixture(scope="module")
def scripted_i3d(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("i3d") / "tiny_i3d.pt"
    torch.jit.script(TinyVideoNet()).save(str(path))
    return path


def _videos(n, seed, t=8, h=24, w=28):
    g = torch.Generator().manual_seed(seed)
    smooth = F.avg_pool3d(torch.rand(n, 3, t, h, w, generator=g), 3, 1, 1)
    return smooth.permute(0, 2, 1, 3, 4).contiguous()  # [N, T, 3, H, W]


def test_fvd_identical_zero_and_corruption_increases(scripted_i3d):
    feature_fn = i3d_feature_fn(load_i3d(scripted_i3d, trust=True), batch_size=5)
    real = _videos(24, 0)
    assert abs(fvd(real, real, feature_fn)) < 1e-9
    mild = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    strong = (real + 0.4 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert 0 < fvd(mild, real, feature_fn) < fvd(strong, real, feature_fn)


def test_feature_fn_layout_and_scale(scripted_i3d):
    """The detector sees [B, 3, T, H, W] in [-1, 1]; non-contiguous input works."""
    seen = {}

    class Spy(nn.Module):
        def forward(self, x, rescale=False, resize=True, return_features=True):
            seen.update(shape=tuple(x.shape), lo=x.min().item(), hi=x.max().item(),
                        kwargs=(rescale, resize, return_features))
            return x.mean(dim=(2, 3, 4))

    videos = torch.zeros(2, 5, 3, 9, 7)
    videos[:, :, :, 0, 0] = 1.0
    feats = i3d_feature_fn(Spy())(videos.transpose(-1, -2).contiguous().transpose(-1, -2))
    assert seen == {"shape": (2, 3, 5, 9, 7), "lo": -1.0, "hi": 1.0, "kwargs": (False, True, True)}
    assert feats.dtype == torch.float64 and feats.shape == (2, 3)


def test_missing_and_bad_inputs(tmp_path):
    with pytest.raises(WeightsUnavailable, match="--i3d"):
        load_i3d(None)
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_i3d(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_i3d(corrupt, trust=True)
    with pytest.raises(ValueError, match="feats_a"):
        frechet_distance_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="videos"):
        i3d_feature_fn(nn.Identity())(torch.rand(2, 3, 8, 8))


def test_frechet_distance_computes_in_float64_from_float32_statistics():
    """float32 means / covariances give the float64 answer for those values (rel 1e-10), not a float32 one."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 12)), rng.normal(size=(280, 12)) * 1.3 + 0.2
    mu1, mu2 = a.mean(0).astype(np.float32), b.mean(0).astype(np.float32)
    s1 = np.cov(a, rowvar=False).astype(np.float32)
    s2 = np.cov(b, rowvar=False).astype(np.float32)
    m1, m2, c1, c2 = (x.astype(np.float64) for x in (mu1, mu2, s1, s2))
    covmean = scipy_linalg.sqrtm(c1 @ c2).real
    expected = float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))
    for args in ((mu1, s1, mu2, s2), (m1, s1, m2, c2), (mu1, c1, mu2, s2)):
        assert frechet_distance(*args) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_shape_checks_name_every_shape():
    mu, sigma = np.zeros(3), np.eye(3)
    shapes = r"^mu/sigma shapes disagree: mu1 \({}\), mu2 \({}\), sigma1 \({}\), sigma2 \({}\)$"
    with pytest.raises(ValueError, match=shapes.format("3,", "2,", "3, 3", "3, 3")):
        frechet_distance(mu, sigma, np.zeros(2), sigma)
    with pytest.raises(ValueError, match=shapes.format("3,", "3,", "3, 3", "2, 2")):
        frechet_distance(mu, sigma, mu, np.eye(2))
    with pytest.raises(ValueError, match=shapes.format("2,", "2,", "3, 3", "3, 3")):
        frechet_distance(np.zeros(2), sigma, np.zeros(2), sigma)


def test_i3d_feature_fn_default_batch_is_8_and_load_errors_name_the_network(tmp_path):
    sizes = []

    class Spy(nn.Module):
        def forward(self, x, rescale=False, resize=True, return_features=True):
            sizes.append(x.shape[0])
            return x.mean(dim=(2, 3, 4))

    i3d_feature_fn(Spy())(torch.rand(17, 2, 3, 4, 4))
    assert sizes == [8, 8, 1]
    with pytest.raises(WeightsUnavailable, match=r"^no I3D network \(i3d_torchscript\.pt\) given \(pass --i3d PATH\)$"):
        load_i3d(None)
    with pytest.raises(WeightsUnavailable, match=r"^I3D network \(i3d_torchscript\.pt\) not found: .*absent\.pt$"):
        load_i3d(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"^--i3d: cannot load .*corrupt\.pt as a TorchScript module"):
        load_i3d(corrupt, trust=True)


def test_gaussian_stats_by_hand_and_its_errors():
    """Two samples are enough: mean and unbiased covariance by hand; float32 or grad-carrying
    torch features give float64 statistics of their values; bad features are named."""
    from gfcore.metrics.fvd import gaussian_stats

    mu, sigma = gaussian_stats(np.array([[0.0, 1.0], [2.0, 5.0]]))
    np.testing.assert_array_equal(mu, [1.0, 3.0])
    np.testing.assert_array_equal(sigma, [[2.0, 4.0], [4.0, 8.0]])  # (x - mean)^2 summed / (N - 1)
    feats = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mu32, sigma32 = gaussian_stats(feats)
    values = feats.detach().double().numpy()
    assert mu32.dtype == np.float64 and sigma32.dtype == np.float64
    np.testing.assert_allclose(mu32, values.sum(0) / 50, rtol=1e-15, atol=0)
    centred = values - values.mean(0)
    np.testing.assert_allclose(sigma32, centred.T @ centred / 49, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match=r"^features: expected \[N, F\] features, got shape \(4,\)$"):
        gaussian_stats(np.zeros(4))
    with pytest.raises(ValueError, match=r"^features: features contain NaN or inf$"):
        gaussian_stats(np.array([[0.0, 1.0], [np.inf, 2.0]]))
    with pytest.raises(ValueError, match=r"^feats_b: need at least 2 samples for a covariance, got 1$"):
        frechet_distance_features(np.zeros((5, 4)), np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"^feats_a: expected \[N, F\] features"):
        frechet_distance_features(np.zeros((5, 4, 1)), np.zeros((5, 4)))
