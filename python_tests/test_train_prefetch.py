"""BatchPrefetcher: batches built ahead on threads are exactly the step's batch, in order, and a
batch that fails to build raises at its own step."""
import pytest
import torch

from gfcore.train import load_config
from gfcore.train.data import BatchPrefetcher, StepBatcher, build_dataset
from trainer_helpers import tiny_data_root, tiny_overrides  # noqa: F401  (fixture)


def assert_same_batch(got, expected):
    assert got.keys() == expected.keys()
    for key in expected:
        if isinstance(expected[key], torch.Tensor):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
        else:
            assert got[key] == expected[key]


def test_prefetched_batches_equal_direct_ones(tiny_data_root):  # noqa: F811
    cfg = load_config(tiny_overrides(tiny_data_root, "unused"))
    dataset = build_dataset(cfg.data, with_depth=False)
    direct = StepBatcher(dataset, 4, 2, seed=3, camera=True, cache=False)
    ahead = StepBatcher(dataset, 4, 2, seed=3, camera=True, cache=False)
    with BatchPrefetcher(ahead, start=5, end=11, depth=3, workers=2) as prefetcher:
        for step in range(5, 11):
            assert_same_batch(prefetcher.get(step), direct.batch(step))


class FailingClips(torch.utils.data.Dataset):
    """Clip 1 is corrupt: reading it raises, as a broken video file would."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        if index == 1:
            raise ValueError("clip 1: corrupt video")
        return {"frames": torch.zeros(6, 3, 4, 4), "key": "clip0"}


def test_a_failing_batch_raises_at_its_step():
    batcher = StepBatcher(FailingClips(), 4, 1, seed=0, camera=False, cache=False)
    steps = [s for s in range(40) if batcher.plan(s)[0][0] == 1]
    bad = steps[0]
    with BatchPrefetcher(batcher, start=0, end=bad + 1, depth=4, workers=2) as prefetcher:
        for step in range(bad):
            assert prefetcher.get(step)["frames"].shape == (1, 4, 3, 4, 4)
        with pytest.raises(ValueError, match="clip 1: corrupt video"):
            prefetcher.get(bad)


def test_steps_must_be_taken_in_order():
    batcher = StepBatcher(FailingClips(), 4, 1, seed=0, camera=False, cache=False)
    with BatchPrefetcher(batcher, start=10, end=12, depth=1, workers=1) as prefetcher:
        with pytest.raises(KeyError, match="step 11 was not prefetched"):
            prefetcher.get(11)
    with pytest.raises(ValueError, match="depth and workers"):
        BatchPrefetcher(batcher, start=0, end=1, depth=0)


class RecordingBatcher:
    """A stand-in StepBatcher: records which steps were asked for, on which thread, and how many
    batches were being built at once; each batch takes a little while."""

    def __init__(self, delay=0.05):
        import threading

        self.delay, self.lock = delay, threading.Lock()
        self.steps, self.threads, self.running, self.most_at_once = [], set(), 0, 0

    def batch(self, step):
        import threading
        import time

        with self.lock:
            self.steps.append(step)
            self.threads.add(threading.current_thread().name)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
        return {"step": step}


def test_prefetch_defaults_range_and_threads():
    """Defaults: two batches ahead on two threads named gfcore-batches_*; never a step at or past
    `end`; a deeper queue is still built by the two threads only."""
    import time

    batcher = RecordingBatcher()
    with BatchPrefetcher(batcher, start=3, end=6) as prefetcher:
        time.sleep(0.3)  # every submitted batch is built by now
        assert sorted(batcher.steps) == [3, 4]  # depth 2
        assert [prefetcher.get(step)["step"] for step in (3, 4, 5)] == [3, 4, 5]
        time.sleep(0.1)
    assert sorted(batcher.steps) == [3, 4, 5]  # nothing for step 6 = end
    assert batcher.most_at_once == 2
    assert batcher.threads and all(name.startswith("gfcore-batches_") for name in batcher.threads)
    wide = RecordingBatcher(delay=0.2)
    with BatchPrefetcher(wide, start=0, end=4, depth=4) as prefetcher:
        assert [prefetcher.get(step)["step"] for step in range(4)] == [0, 1, 2, 3]
    assert wide.most_at_once == 2  # 4 submitted at once, on the default 2 threads


def test_close_waits_for_the_batches_being_built():
    """Leaving the prefetcher (end of training, or an error) cancels queued batches and waits for the
    ones already being built: no thread keeps reading data after close() returns."""
    batcher = RecordingBatcher(delay=0.3)
    with BatchPrefetcher(batcher, start=0, end=10, depth=4, workers=2):
        pass
    assert batcher.running == 0 and len(batcher.steps) == 2
