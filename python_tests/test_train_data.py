"""The training batch: windows cut from the clips, and Pluecker rays relative to each window's first frame."""
import numpy as np
import torch

from gfcore.train import load_config
from gfcore.train.data import StepBatcher, build_dataset
from trainer_helpers import tiny_data_root, tiny_overrides  # noqa: F401  (fixture)


def _rays_by_hand(K: np.ndarray, c2w: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, 6, H, W] in float64: c2w made relative to frame 0 (inv(c2w_0) c2w_t), one ray through each
    pixel centre (u + 0.5, v + 0.5): d = R K^-1 p / |.|, moment = camera centre x d."""
    out = np.zeros((len(c2w), 6, height, width))
    first_inv = np.linalg.inv(c2w[0])
    for t in range(len(c2w)):
        pose = first_inv @ c2w[t]
        rotation, centre = pose[:3, :3], pose[:3, 3]
        for v in range(height):
            for u in range(width):
                d = rotation @ np.linalg.solve(K[t], np.array([u + 0.5, v + 0.5, 1.0]))
                d /= np.linalg.norm(d)
                out[t, :3, v, u] = d
                out[t, 3:, v, u] = np.cross(centre, d)
    return out


def test_batch_rays_are_relative_to_the_window_first_frame(tiny_data_root):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused"))
    dataset = build_dataset(cfg.data, with_depth=False)
    batcher = StepBatcher(dataset, num_frames=4, batch_size=2, seed=5, camera=True, cache=False)
    for step in (0, 3):
        batch = batcher.batch(step)
        height, width = batch["frames"].shape[-2:]
        assert batch["rays"].shape == (2, 4, 6, height, width)
        for sample, (index, fraction) in enumerate(batcher.plan(step)):
            clip = dataset[index]
            total = clip["frames"].shape[0]
            start = int(fraction * (total - 4 + 1))
            window = slice(start, start + 4)
            torch.testing.assert_close(batch["frames"][sample], clip["frames"][window], rtol=0, atol=0)
            K = clip["intrinsics"][window].double().numpy()
            c2w = clip["c2w"][window].double().numpy()
            expected = _rays_by_hand(K, c2w, height, width)
            torch.testing.assert_close(batch["rays"][sample].double(), torch.from_numpy(expected), rtol=0, atol=1e-5)
            # the batch's poses are the relative ones: frame 0 is the identity
            torch.testing.assert_close(batch["c2w"][sample].double(),
                                       torch.from_numpy(np.linalg.inv(c2w[0]) @ c2w), rtol=0, atol=1e-5)
    # the window must actually move, or the test could not tell relative from absolute poses
    c2w = dataset[0]["c2w"].double()
    assert (c2w[1:, :3, 3] - c2w[:1, :3, 3]).norm(dim=-1).max() > 1e-2
