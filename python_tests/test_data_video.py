"""gfcore.data.video: write/read round trips, frame selection, GIFs and clear errors on bad files."""
import numpy as np
import pytest

pytest.importorskip("av", reason="video encoding needs PyAV (pip install av)")

from data_test_utils import smooth_frames  # noqa: E402
from gfcore.data import video  # noqa: E402
from gfcore.data.errors import DataError  # noqa: E402


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    frames = smooth_frames(9, 32, 64, seed=1)
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    video.write_video(path, frames, fps=10)
    return path, frames


def test_round_trip_is_close_to_the_input(clip):
    path, frames = clip
    decoded = video.read_video(path)
    assert decoded.dtype == np.uint8 and decoded.shape == frames.shape
    error = decoded.astype(np.float64) - frames.astype(np.float64)
    # 4:2:0 chroma subsampling dominates the loss (crf 0 measures the same): ~35 dB here.
    psnr = 10 * np.log10(255.0**2 / np.mean(error**2))
    assert psnr > 32.0 and np.abs(error).mean() < 4.5
    assert video.video_num_frames(path) == 9


def test_frame_indices_select_in_order_with_repeats(clip):
    path, _ = clip
    everything = video.read_video(path)
    picked = video.read_video(path, [7, 0, 3, 3, 8])
    np.testing.assert_array_equal(picked, everything[[7, 0, 3, 3, 8]])


def test_decoders_agree(clip):
    """decord (when installed) and PyAV decode the same pixels."""
    path, _ = clip
    by_av = video._read_av(str(path), np.array([1, 5]))
    if video._decord is None:
        pytest.skip("decord is not installed; only PyAV decodes here")
    by_decord = video._read_decord(str(path), np.array([1, 5]))
    assert np.abs(by_av.astype(int) - by_decord.astype(int)).max() <= 1


@pytest.mark.parametrize("height,width", [(31, 47), (32, 48), (18, 30)])
def test_odd_and_unaligned_sizes(tmp_path, height, width):
    # 48 px wide streams are rejected by decord's row-stride check; the PyAV fallback reads them.
    frames = smooth_frames(4, height, width, seed=2)
    path = tmp_path / "odd.mp4"
    video.write_video(path, frames[:, :, ::-1])  # a non-contiguous view is accepted
    decoded = video.read_video(path)
    assert decoded.shape == frames.shape
    error = decoded.astype(np.float64) - frames[:, :, ::-1].astype(np.float64)
    assert 10 * np.log10(255.0**2 / np.mean(error**2)) > 28.0  # tiny frames: steeper chroma


def test_write_gif(tmp_path):
    from PIL import Image

    frames = smooth_frames(5, 24, 40, seed=3)
    path = tmp_path / "clip.gif"
    video.write_gif(path, frames, fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 5 and gif.size == (40, 24)
        gif.seek(2)
        third = np.asarray(gif.convert("RGB"))
    assert np.abs(third.astype(int) - frames[2].astype(int)).mean() < 8.0


def test_bad_frames_are_rejected_naming_the_argument(tmp_path):
    with pytest.raises(TypeError, match="frames must be uint8"):
        video.write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"frames must have shape \[T>0, H, W, 3\]"):
        video.write_video(tmp_path / "a.mp4", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="frames must have shape"):
        video.write_gif(tmp_path / "a.gif", np.zeros((0, 8, 8, 3), np.uint8))


def test_missing_corrupt_and_truncated_files_name_the_file(tmp_path, clip):
    path, _ = clip
    missing = tmp_path / "missing.mp4"
    with pytest.raises(video.VideoError, match=f"not found: {missing}"):
        video.read_video(missing)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 50)
    with pytest.raises(video.VideoError, match=str(corrupt)):
        video.read_video(corrupt)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(video.VideoError, match=str(truncated)):
        video.read_video(truncated)
    with pytest.raises(video.VideoError, match=str(truncated)):
        video.video_num_frames(truncated)
    # Errors are DataErrors, so the datasets' on_error="skip" catches them.
    assert issubclass(video.VideoError, DataError)


def test_indices_past_the_end_name_the_file(clip):
    path, _ = clip
    with pytest.raises(video.VideoError, match=rf"{path}.*out of range.*9 frames"):
        video.read_video(path, [0, 9])
    with pytest.raises(video.VideoError, match="out of range"):
        video.read_video(path, [-1])
