"""The demo's per-frame detectors: sharpness (high-frequency energy) and the noise-dependent part."""
import numpy as np
import pytest
import torch

from gfcore.demo.analysis import NOISE_FRAME_LIMIT, high_frequency_ratio, noise_dependent_ratio, noise_dependent_ratios


def _high_pass_energy_by_hand(frame: np.ndarray) -> float:
    """float64, loops: pixel minus the mean of its in-image 3x3 neighbourhood, squared, averaged."""
    channels, height, width = frame.shape
    total = 0.0
    for c in range(channels):
        for y in range(height):
            for x in range(width):
                window = frame[c, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                total += (frame[c, y, x] - window.mean()) ** 2
    return total / frame.size


def _quantised(video: torch.Tensor) -> np.ndarray:  # the uint8 grid the demo writes, in [0, 1]
    return (((video.double().clamp(-1, 1) + 1) * 127.5).round() / 255.0).numpy()


def _scene(frames=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(frames, 3, 2, 2, generator=g) * 1.2 - 0.6, size=size,
                                             mode="bilinear", align_corners=True)
    return smooth


def _blocky_colour_noise(frames, size, amplitude, seed, block=2):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randn(frames, 3, size // block, size // block, generator=g) * amplitude
    return blocks.repeat_interleave(block, -1).repeat_interleave(block, -2)


def test_high_pass_energies_against_a_float64_loop():
    reference = _scene(seed=1)
    rollouts = [reference + _blocky_colour_noise(5, 8, 0.2, seed) for seed in (3, 4, 5)]
    context = 2
    x = np.stack([_quantised(v[context:]) for v in rollouts])
    deviation = x - x.mean(0, keepdims=True)
    ref = _quantised(reference[context:])
    expected_noise = [sum(_high_pass_energy_by_hand(d[t]) for d in deviation) / 2 / _high_pass_energy_by_hand(ref[t])
                      for t in range(3)]  # the sum over 3 seeds' deviations / (3 - 1)
    expected_sharp = [_high_pass_energy_by_hand(x[0, t]) / _high_pass_energy_by_hand(ref[t]) for t in range(3)]
    noise = noise_dependent_ratio(rollouts, reference, context)
    sharp = high_frequency_ratio(rollouts[0], reference, context)
    assert noise.shape == sharp.shape == (3,)  # the context frames are not scored
    np.testing.assert_allclose(noise.double().numpy(), expected_noise, rtol=1e-4)
    np.testing.assert_allclose(sharp.double().numpy(), expected_sharp, rtol=1e-4)


def test_shared_artefacts_read_zero_noise_while_seed_dependent_noise_is_flagged():
    reference = _scene(seed=2)
    # a stale sharp texture that every sampling seed produces: sharp, but not noise
    stale = reference + _blocky_colour_noise(5, 8, 0.3, seed=9, block=1)
    assert (high_frequency_ratio(stale, reference, 2) > 1.5).all()
    assert noise_dependent_ratio([stale, stale.clone(), stale.clone()], reference, 2).abs().max() < 1e-9  # float32 mean
    # the failure: blocky colour noise that changes with the sampling noise
    weak, strong = ([reference + _blocky_colour_noise(5, 8, a, seed) for seed in (3, 4, 5)] for a in (0.1, 0.2))
    weak_ratio, strong_ratio = noise_dependent_ratio(weak, reference, 2), noise_dependent_ratio(strong, reference, 2)
    assert (strong_ratio > NOISE_FRAME_LIMIT).all()
    # noise energy grows with the amplitude squared (up to the uint8 quantisation)
    np.testing.assert_allclose((strong_ratio / weak_ratio).numpy(), 4.0, rtol=0.15)


def test_noise_dependent_ratio_needs_two_seeds():
    reference = _scene()
    with pytest.raises(ValueError, match="2 or more sampling seeds"):
        noise_dependent_ratio([reference], reference, 2)


def test_two_seeds_read_half_the_energy_of_their_difference():
    """With 2 seeds the estimate is the high-pass energy of (a - b) / 2 per seed, summed: half the
    energy of a - b, which is the per-seed noise energy when the two draws are independent."""
    reference = _scene(seed=1)
    a, b = (reference + _blocky_colour_noise(5, 8, 0.2, seed) for seed in (3, 4))
    difference = _quantised(a[2:]) - _quantised(b[2:])
    ref = _quantised(reference[2:])
    expected = [_high_pass_energy_by_hand(difference[t]) / 2 / _high_pass_energy_by_hand(ref[t]) for t in range(3)]
    np.testing.assert_allclose(noise_dependent_ratio([a, b], reference, 2).double().numpy(), expected, rtol=1e-4)


def test_the_scale_does_not_depend_on_the_number_of_seeds():
    """Same noise level, 2 or 8 seeds: the same reading up to sampling error (the deviations from the
    seeds' own mean alone would read 1/2 and 7/8 of it)."""
    reference = _scene(frames=6, size=32, seed=1)
    rollouts = [reference + _blocky_colour_noise(6, 32, 0.15, seed) for seed in range(8)]
    two = noise_dependent_ratio(rollouts[:2], reference, 2).mean()
    eight = noise_dependent_ratio(rollouts, reference, 2).mean()
    assert float(two / eight) == pytest.approx(1.0, abs=0.15)


def test_batched_ratios_are_each_clips_in_order():
    references = [_scene(seed=1), _scene(seed=2)]
    rollouts = [torch.stack([ref + _blocky_colour_noise(5, 8, 0.1 * (i + 1), 10 * seed + i)
                             for i, ref in enumerate(references)]) for seed in range(3)]  # [S] of [B, T, C, H, W]
    per_clip = [noise_dependent_ratio([r[i] for r in rollouts], references[i], 2) for i in range(2)]
    assert torch.equal(noise_dependent_ratios(rollouts, references, 2), torch.cat(per_clip))
    assert not torch.allclose(per_clip[0], per_clip[1])  # the clips differ: an order mix-up would show
