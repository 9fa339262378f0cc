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
