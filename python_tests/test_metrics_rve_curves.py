"""RVE (first vs last frame) and the per-frame / sliding-window curves."""
import math

import pytest
import torch

from gfcore.metrics.curves import FrameMetricAccumulator, finite_mean, sliding_window_fvd
from gfcore.metrics.fvd import frechet_distance_features
from gfcore.metrics.psnr_ssim import psnr, ssim
from gfcore.metrics.rve import load_inception, revisit_fid, revisit_pair_metrics
from gfcore.metrics.weights import WeightsUnavailable


def _clip(t, seed, h=16, w=20):
    return torch.rand(t, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _mean_pool(images):  # a deterministic stand-in feature network: per-channel statistics
    return torch.cat([images.mean(dim=(-2, -1)), images.std(dim=(-2, -1))], dim=-1).flatten(1).double()


def test_revisit_identical_and_corrupted():
    first = _clip(6, 0)
    same = revisit_pair_metrics(first, first.clone())
    assert torch.isinf(same["psnr"]).all() and torch.allclose(same["ssim"], torch.ones(6, dtype=same["ssim"].dtype))
    assert abs(revisit_fid(first, first.clone(), _mean_pool)) < 1e-9
    drifted = (first + 0.3).clamp(0, 1)  # the scene came back brighter: a revisit failure
    changed = revisit_pair_metrics(first, drifted)
    assert (changed["ssim"] < 1).all() and torch.isfinite(changed["psnr"]).all()
    assert revisit_fid(first, drifted, _mean_pool) > 0.01
    with pytest.raises(WeightsUnavailable, match="--inception"):
        load_inception(None)


def _frechet_by_hand(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) with scipy's matrix square root (float64)."""
    import numpy as np
    import scipy.linalg

    a, b = a.double().numpy(), b.double().numpy()
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def test_revisit_metrics_against_independent_values():
    """PSNR by its formula, SSIM with torchmetrics / scikit-image, FID with scipy, LPIPS passed through."""
    tm_image = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics not installed")
    skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed")
    g = torch.Generator().manual_seed(3)
    first = torch.rand(5, 3, 16, 20, generator=g, dtype=torch.float64)
    last = (first + 0.1 * torch.randn(first.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    calls = []

    def fake_lpips(a, b):  # records its arguments: (generated-side = last, reference-side = first)
        calls.append((a, b))
        return (a - b).abs().mean(dim=(1, 2, 3)).float()

    pairs = revisit_pair_metrics(first, last, lpips_model=fake_lpips)
    expected_psnr = 10 * torch.log10(1 / ((last - first) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(pairs["psnr"], expected_psnr, rtol=0, atol=1e-9)
    tm = tm_image.structural_similarity_index_measure(last, first, data_range=1.0, reduction="none")
    torch.testing.assert_close(pairs["ssim"], tm, rtol=0, atol=1e-6)
    valid = revisit_pair_metrics(first, last, ssim_border="valid")["ssim"]
    sk = [skimage_metrics.structural_similarity(last[i].numpy(), first[i].numpy(), data_range=1.0, channel_axis=0,
                                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
          for i in range(5)]
    torch.testing.assert_close(valid, torch.tensor(sk, dtype=torch.float64), rtol=0, atol=1e-6)
    (a, b), = calls
    assert a is last and b is first and pairs["lpips"].dtype == torch.float64
    torch.testing.assert_close(pairs["lpips"], (last - first).abs().mean(dim=(1, 2, 3)), rtol=1e-6, atol=0)
    assert revisit_fid(first, last, _mean_pool) == pytest.approx(_frechet_by_hand(_mean_pool(last), _mean_pool(first)),
                                                                 rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="last"):
        revisit_pair_metrics(first, last[:, :, :-1])


def test_inception_feature_fn_feeds_uint8_in_batches():
    """StyleGAN's Inception takes uint8 [0, 255]: x -> round(255 clamp(x, 0, 1)), in chunks of batch_size."""
    from gfcore.metrics.rve import inception_feature_fn

    seen = []

    def detector(images, return_features=False):
        assert return_features is True
        seen.append(images)
        return images.float().mean(dim=(2, 3))

    images = torch.tensor([-0.5, 0.0, 0.2, 0.6, 0.999, 1.7]).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    feats = inception_feature_fn(detector, batch_size=4)(images)
    assert [s.shape[0] for s in seen] == [4, 2] and all(s.dtype == torch.uint8 for s in seen)
    # by hand: clamp to [0, 1], times 255, rounded: 0, 0, 51, 153, 254.7 -> 255, 255
    expected = torch.tensor([0.0, 0.0, 51.0, 153.0, 255.0, 255.0], dtype=torch.float64)
    assert feats.dtype == torch.float64 and feats.shape == (6, 3)
    torch.testing.assert_close(feats, expected[:, None].expand(6, 3), rtol=0, atol=0)


def test_accumulator_matches_direct_computation():
    acc = FrameMetricAccumulator()
    gen_a, ref_a = _clip(5, 1), _clip(5, 2)
    gen_b, ref_b = _clip(3, 3), _clip(3, 4)  # a shorter clip contributes to its first 3 frames
    acc.add(gen_a, ref_a)
    acc.add(gen_b, ref_b)
    curves = acc.curves()
    p_a, p_b = psnr(gen_a, ref_a), psnr(gen_b, ref_b)
    assert curves["psnr"][0] == pytest.approx(float((p_a[0] + p_b[0]) / 2))
    assert curves["psnr"][4] == pytest.approx(float(p_a[4]))
    assert acc.means()["ssim"] == pytest.approx(float(torch.cat([ssim(gen_a, ref_a), ssim(gen_b, ref_b)]).mean()))
    assert acc.means()["psnr_identical_frames"] == 0


def test_inf_handling():
    values = torch.tensor([math.inf, 20.0, 30.0])
    assert finite_mean(values) == 25.0
    assert finite_mean(torch.tensor([math.inf, math.inf])) == math.inf
    assert math.isnan(finite_mean(torch.tensor([])))


def test_sliding_window_fvd_against_direct_frechet():
    def video_features(videos):  # [B, T, 3, H, W] -> [B, 6]: statistics of the time-averaged frame
        return _mean_pool(videos.mean(dim=1))

    generated = [_clip(10, s) for s in range(4)]
    reference = [_clip(10, s + 10) * 0.8 for s in range(4)]
    windows = sliding_window_fvd(generated, reference, video_features, window=4, stride=3)
    assert [(w["start"], w["end"]) for w in windows] == [(0, 4), (3, 7), (6, 10)]
    direct = frechet_distance_features(
        torch.cat([video_features(c[None, 3:7]) for c in generated]),
        torch.cat([video_features(c[None, 3:7]) for c in reference]),
    )
    assert windows[1]["fvd"] == pytest.approx(direct)
    with pytest.raises(ValueError, match="at least 2"):
        sliding_window_fvd(generated[:1], reference, video_features, window=4)


class _ScaledMean(torch.nn.Module):
    """A stand-in Inception with one parameter: features = scale * per-channel mean."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.scale * x.float().mean(dim=(2, 3))


def test_load_inception_from_a_file_and_its_errors(tmp_path):
    """The file loads onto the CPU by default and computes what was saved; a missing or bad file
    names the network and the command-line flag."""
    path = tmp_path / "inception.pt"
    torch.jit.script(_ScaledMean()).save(str(path))
    net = load_inception(path, trust=True)
    assert not net.training and net.scale.device.type == "cpu"
    images = torch.rand(3, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(net(images, return_features=True), 2 * images.mean(dim=(2, 3)), rtol=1e-6, atol=0)
    with pytest.raises(WeightsUnavailable, match=r"^no Inception network for FID given \(pass --inception PATH\)$"):
        load_inception(None)
    with pytest.raises(WeightsUnavailable, match=r"^Inception network for FID not found: .*absent\.pt$"):
        load_inception(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"^--inception: cannot load .*corrupt\.pt as a TorchScript module"):
        load_inception(corrupt, trust=True)


def test_inception_feature_fn_default_batch_is_32():
    from gfcore.metrics.rve import inception_feature_fn

    sizes = []

    def detector(images, return_features=False):
        sizes.append(images.shape[0])
        return images.float().mean(dim=(2, 3))

    inception_feature_fn(detector)(torch.rand(65, 3, 2, 2))
    assert sizes == [32, 32, 1]


def test_revisit_errors_name_first_and_last():
    first = _clip(4, 0)
    with pytest.raises(ValueError, match=r"^last and first must have the same shape, got \(4, 3, 16, 19\) and \(4, 3, 16, 20\)$"):
        revisit_pair_metrics(first, first[..., :-1])
    with pytest.raises(TypeError, match=r"^first: expected a floating-point tensor"):
        revisit_pair_metrics(first.to(torch.uint8), first)
    with pytest.raises(TypeError, match=r"^last: expected a floating-point tensor"):
        revisit_fid(first, first.to(torch.uint8), _mean_pool)
    with pytest.raises(ValueError, match=r"^last and first must have the same shape"):
        revisit_fid(first, first[:3], _mean_pool)
