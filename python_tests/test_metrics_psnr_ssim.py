"""PSNR and SSIM against torchmetrics and scikit-image."""
import math

import pytest
import torch

from gfcore.metrics.psnr_ssim import psnr, ssim

torchmetrics_image = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics not installed")
skimage_metrics = pytest.importorskip("skimage.metrics", reason="scikit-image not installed")


def _pair(shape, noise=0.1, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=torch.float64)
    b = (a + noise * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a.to(dtype), b.to(dtype)


@pytest.mark.parametrize("shape", [(3, 3, 37, 45), (2, 1, 16, 23)])
def test_psnr_matches_torchmetrics_and_skimage(shape):
    a, b = _pair(shape)
    got = psnr(a, b)
    tm = torchmetrics_image.peak_signal_noise_ratio(a, b, data_range=1.0, reduction="none", dim=(1, 2, 3))
    sk = [skimage_metrics.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0) for i in range(shape[0])]
    torch.testing.assert_close(got, tm, rtol=0, atol=1e-4)
    torch.testing.assert_close(got, torch.tensor(sk, dtype=torch.float64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 3, 37, 45), (2, 1, 16, 23)])
def test_ssim_matches_torchmetrics_reflect(shape, dtype):
    a, b = _pair(shape, dtype=dtype)
    expected = torchmetrics_image.structural_similarity_index_measure(
        a.double(), b.double(), data_range=1.0, reduction="none", gaussian_kernel=True, sigma=1.5, kernel_size=11
    )
    torch.testing.assert_close(ssim(a, b).double(), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_matches_skimage_valid(dtype):
    a, b = _pair((2, 3, 33, 40), noise=0.2, seed=3, dtype=dtype)
    expected = [
        skimage_metrics.structural_similarity(
            a[i].double().numpy(), b[i].double().numpy(), channel_axis=0, gaussian_weights=True,
            sigma=1.5, use_sample_covariance=False, data_range=1.0,
        )
        for i in range(2)
    ]
    torch.testing.assert_close(ssim(a, b, border="valid").double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-4)


def test_video_layout_and_non_contiguous():
    a, b = _pair((2, 5, 3, 24, 30), dtype=torch.float32)  # [B, T, C, H, W]
    flat = ssim(a.flatten(0, 1), b.flatten(0, 1)).view(2, 5)
    torch.testing.assert_close(ssim(a, b), flat)
    a_nc = a.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, strided
    assert not a_nc.is_contiguous()
    torch.testing.assert_close(ssim(a_nc, b), flat)
    torch.testing.assert_close(psnr(a_nc, b), psnr(a, b))


def test_bf16_input_close_to_fp32():
    a, b = _pair((2, 3, 32, 32), dtype=torch.float32)
    torch.testing.assert_close(ssim(a.bfloat16(), b.bfloat16()), ssim(a, b), rtol=0, atol=1e-2)
    torch.testing.assert_close(psnr(a.bfloat16(), b.bfloat16()), psnr(a, b), rtol=0, atol=0.1)
    assert ssim(a.bfloat16(), b.bfloat16()).dtype == torch.float32


def test_identical_frames():
    a, _ = _pair((2, 3, 20, 20))
    assert torch.isinf(psnr(a, a)).all() and (psnr(a, a) > 0).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))


def test_hand_computed_psnr():
    a = torch.zeros(1, 1, 4, 4)
    b = torch.full((1, 1, 4, 4), 0.1)  # MSE 0.01 -> 20 dB
    assert psnr(a, b).item() == pytest.approx(20.0, abs=1e-4)


@pytest.mark.parametrize("data_range", [255.0, 2.0, 0.5])
def test_psnr_and_ssim_with_other_data_ranges(data_range):
    """Images in [0, R]: PSNR = 10 log10(R^2 / MSE), and both metrics match the references at that range."""
    a, b = _pair((2, 3, 17, 21), seed=11)
    a, b = a * data_range, b * data_range
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    expected = 10 * torch.log10(data_range**2 / mse)
    torch.testing.assert_close(psnr(a, b, data_range=data_range), expected, rtol=0, atol=1e-9)
    # hand example: a constant error of R / 10 is 20 dB whatever R is
    zero = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    assert psnr(zero, zero + data_range / 10, data_range=data_range).item() == pytest.approx(20.0, abs=1e-9)
    sk = [skimage_metrics.peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=data_range) for i in range(2)]
    torch.testing.assert_close(psnr(a, b, data_range=data_range), torch.tensor(sk, dtype=torch.float64),
                               rtol=0, atol=1e-9)
    tm = torchmetrics_image.structural_similarity_index_measure(a, b, data_range=data_range, reduction="none")
    torch.testing.assert_close(ssim(a, b, data_range=data_range), tm, rtol=0, atol=1e-6)


def test_corruptions_move_metrics_the_right_way():
    g = torch.Generator().manual_seed(5)
    # a smooth image so that blur and shift are mild, graded corruptions
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 3, 72, 72, generator=g), 5, 1, 2)[..., 4:-4, 4:-4]
    shifted1 = torch.roll(base, 1, dims=-1)
    shifted4 = torch.roll(base, 4, dims=-1)
    assert psnr(base, shifted1) > psnr(base, shifted4)
    assert ssim(base, shifted1) > ssim(base, shifted4)
    blurred = torch.nn.functional.avg_pool2d(base, 5, 1, 2)
    assert ssim(base, blurred) < 1 and math.isfinite(psnr(base, blurred).item())


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="pred and target"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))
    with pytest.raises(TypeError, match="pred"):
        ssim(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="border"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), border="zeros")


def test_gradients_match_torchmetrics():
    """SSIM and PSNR are differentiable (usable as losses); gradients agree with torchmetrics."""
    a, b = _pair((2, 3, 21, 19), seed=7)
    ours_in = a.clone().requires_grad_(True)
    ref_in = a.clone().requires_grad_(True)
    ssim(ours_in, b).sum().backward()
    torchmetrics_image.structural_similarity_index_measure(ref_in, b, data_range=1.0, reduction="sum").backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-6, atol=1e-9)
    ours_in.grad = None
    ref_in.grad = None
    psnr(ours_in, b).sum().backward()
    torchmetrics_image.peak_signal_noise_ratio(ref_in, b, data_range=1.0, reduction="sum", dim=(1, 2, 3)).backward()
    torch.testing.assert_close(ours_in.grad, ref_in.grad, rtol=1e-6, atol=1e-9)


def test_gaussian_window_by_hand():
    """Taps exp(-(i - c)^2 / (2 sigma^2)) / sum, c the middle tap; defaults 11 taps, sigma 1.5."""
    from gfcore.metrics.psnr_ssim import gaussian_window_1d

    raw = [math.exp(-((i - 5) ** 2) / (2 * 1.5**2)) for i in range(11)]
    expected = torch.tensor([v / sum(raw) for v in raw], dtype=torch.float64)
    torch.testing.assert_close(gaussian_window_1d(dtype=torch.float64), expected, rtol=0, atol=1e-16)
    assert gaussian_window_1d().dtype == torch.float32
    raw = [math.exp(-((i - 1) ** 2) / (2 * 0.7**2)) for i in range(3)]
    torch.testing.assert_close(gaussian_window_1d(3, 0.7, torch.float64),
                               torch.tensor([v / sum(raw) for v in raw], dtype=torch.float64), rtol=0, atol=1e-16)
    assert gaussian_window_1d(1).tolist() == [1.0]
    for bad in (4, 0, -1):
        with pytest.raises(ValueError, match="positive odd number, got"):
            gaussian_window_1d(bad)


def test_psnr_edge_values_and_dtypes():
    zeros = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    assert psnr(zeros, zeros + 1).item() == 0.0  # MSE = R^2 = 1: exactly 0 dB, not "identical"
    # R^2 computed in the working dtype: R = 0.3 is not exact in float32
    a, b = _pair((2, 3, 12, 12), seed=4)
    a, b = 0.3 * a, 0.3 * b
    expected = 10 * torch.log10(0.3**2 / ((a - b) ** 2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(psnr(a, b, data_range=0.3), expected, rtol=0, atol=1e-12)
    # mixed inputs work in pred's dtype (float32 here), whatever the target's
    assert psnr(a.float(), b).dtype == torch.float32 and psnr(a, b.float()).dtype == torch.float64
    assert ssim(a.float(), b, data_range=0.3).dtype == torch.float32


def test_bf16_inputs_are_computed_in_float32():
    """bf16 values are upcast before any arithmetic: the same result as their float32 copies."""
    a, b = _pair((2, 3, 24, 24), dtype=torch.float32)
    a16, b16 = a.bfloat16(), b.bfloat16()
    torch.testing.assert_close(ssim(a16, b16), ssim(a16.float(), b16.float()), rtol=0, atol=1e-7)
    torch.testing.assert_close(psnr(a16, b16), psnr(a16.float(), b16.float()), rtol=0, atol=1e-7)


def test_ssim_size_limits_and_names():
    a, b = _pair((1, 3, 11, 11))
    tm = torchmetrics_image.structural_similarity_index_measure(a, b, data_range=1.0, reduction="none")
    torch.testing.assert_close(ssim(a, b), tm, rtol=0, atol=1e-6)  # exactly the window size is enough
    for shape in ((1, 3, 10, 11), (1, 3, 11, 10)):
        with pytest.raises(ValueError, match="at least 11x11"):
            ssim(torch.rand(shape), torch.rand(shape))
    with pytest.raises(ValueError, match="^pred and target must have the same shape"):
        ssim(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 17))
