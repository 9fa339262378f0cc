"""gfcore's DFoT RealEstate10K pipeline against the authors' code on a made-up example.

python_tests/data/dfot_re10k/ holds the example (two clips: camera files and raw frames) and what
the authors' DFoT data pipeline made of it (scripts/make_dfot_data_golden.py): the resized and
cropped frames, the 16-D poses, eleven training items (clip, stride, augmentation by seed) through
their RealEstate10KAdvancedVideoDataset, the normalised pixels, and the clip order and stride
schedule over five subepochs.
"""
import hashlib
import inspect
import json
import os
import random

import numpy as np
import pytest
import torch

pytest.importorskip("PIL", reason="the DFoT resize uses Pillow's LANCZOS filter")

from gfcore.data import DataError, resize_crop_intrinsics  # noqa: E402
from gfcore.data import dfot_re10k as dfot  # noqa: E402
from gfcore.data.camera_file import read_camera_file  # noqa: E402
from gfcore.models.dfot.rays import ray_encoding  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data", "dfot_re10k")
KEYS = ("clip_a", "clip_b")


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(DATA, "golden.npz")) as archive:
        arrays = {k: archive[k] for k in archive.files}
    with open(os.path.join(DATA, "golden.json")) as handle:
        facts = json.load(handle)
    with np.load(os.path.join(DATA, "raw_frames.npz")) as archive:
        raw = {k: archive[k] for k in archive.files}
    return arrays, facts, raw


@pytest.fixture(scope="module")
def clips(golden):
    """gfcore's own preprocessing of the example: frames at 64 and camera rows, per key."""
    arrays, facts, raw = golden
    out = {}
    for key in KEYS:
        rows = read_camera_file(os.path.join(DATA, f"{key}.txt")).rows
        out[key] = (dfot.resize_crop_frames(raw[key], facts["resolution"], source=key), rows)
    return out


def sha256(array) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()


# ---------------------------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS)
def test_resize_crop_matches_theirs(golden, key):
    arrays, _, raw = golden
    for resolution in (64, 32):
        ours = dfot.resize_crop_frames(raw[key], resolution)
        theirs = arrays[f"{key}/frames_{resolution}"]
        assert ours.shape == theirs.shape and ours.dtype == np.uint8
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        assert diff.max() == 0, f"{key} at {resolution}: {np.count_nonzero(diff)} pixels differ, max {diff.max()}"
    # 256 from these small frames is an upscale: refused unless asked for, then theirs exactly
    with pytest.raises(DataError, match=rf"^{key}: frames of \d+x\d+ are smaller than the 256x256 crop"):
        dfot.resize_crop_frames(raw[key], 256, source=key)
    big = dfot.resize_crop_frames(raw[key], 256, allow_upscale=True)
    np.testing.assert_array_equal(big[:, 100], arrays[f"{key}/frames_256_row100"])
    assert sha256(big) == arrays[f"{key}/frames_256_sha256"].tobytes()


def test_crop_geometry_examples():
    # 67x118 -> 64: scale 64/67, 118 * 64/67 = 112.7 -> 113, column (113 - 64) // 2
    assert dfot.crop_geometry(67, 118, 64) == ((64, 113), (0, 24))
    assert dfot.crop_geometry(81, 66, 64) == ((79, 64), (7, 0))
    assert dfot.crop_geometry(360, 640, 256) == ((256, 455), (0, 99))


def test_pixels_and_normalisation_match_theirs(golden, clips):
    arrays, facts, _ = golden
    frames, rows = clips["clip_a"]
    item = facts["items"][0]
    _, indices = _schedule_for_example(facts, item).item(item["idx"], item["subepoch"])
    # item 0 with the same augmentation draws as theirs; its first frame's exact float32 pixels
    ours = dfot.training_item(frames, rows, indices, random.Random(item["seed"]), **_probs(item))["videos"]
    assert ours.dtype == torch.float32
    assert torch.equal(ours[0], torch.from_numpy(arrays["item0/videos_float32_frame0"]))
    # their buffers are DFoT's constants, as float32
    assert torch.equal(torch.from_numpy(arrays["data_mean"]).flatten(), torch.tensor(dfot.DFOT_MEAN))
    assert torch.equal(torch.from_numpy(arrays["data_std"]).flatten(), torch.tensor(dfot.DFOT_STD))
    normalized = dfot.normalize(ours[None])[0, 0]
    err = (normalized - torch.from_numpy(arrays["item0/normalized_frame0"])).abs().max().item()
    assert err == 0.0, f"normalised pixels differ from theirs by {err}"
    back = dfot.unnormalize(dfot.normalize(ours))[0]
    assert (back - torch.from_numpy(arrays["item0/unnormalized_frame0"])).abs().max().item() == 0.0
    # normalisation is on [0, 1] pixels (no [-1, 1] step): mid-grey 0.5 of channel 0
    assert abs(dfot.normalize(torch.full((3, 1, 1), 0.5))[0, 0, 0].item() - (0.5 - 0.577) / 0.249) < 1e-6


def test_mp4_and_npz_pixel_scaling_agree():
    # their .npz path divides in float64 then casts, their .mp4 path divides the uint8 tensor in float32
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    via_float32 = torch.from_numpy(values).permute(0, 3, 1, 2) / 255.0
    assert torch.equal(dfot.frames_to_unit(values), via_float32)


# ---------------------------------------------------------------------------------------------
# poses
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", KEYS)
def test_pose_vectors_match_theirs(golden, clips, key):
    arrays, _, _ = golden
    _, rows = clips[key]
    assert np.array_equal(torch.from_numpy(rows).float().numpy(), arrays[f"{key}/rows_float32"])
    pose = dfot.pose_from_rows(rows, source=key)
    assert pose.dtype == torch.float32 and pose.shape == (len(rows), 16)
    err = (pose - torch.from_numpy(arrays[f"{key}/pose16_all"])).abs().max().item()
    assert err <= 1e-6, f"{key}: pose differs from theirs by {err}"
    # the intrinsics are the file's, unchanged by the crop
    assert torch.equal(pose[:, :4], torch.from_numpy(rows[:, :4]).float())


@pytest.mark.parametrize("in_hw", [(67, 118), (118, 67)])  # wide: cropped left-right; tall: top-bottom
def test_crop_adjusted_pose_agrees_with_gfcore_intrinsics(clips, in_hw):
    _, rows = clips["clip_a"]
    pose = dfot.pose_from_rows(rows).double()
    res = 64
    adjusted = dfot.crop_adjusted_pose(pose, in_hw, res)
    K = torch.zeros(len(pose), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1] = pose[:, 0] * in_hw[1], pose[:, 1] * in_hw[0]
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = pose[:, 2] * in_hw[1], pose[:, 3] * in_hw[0], 1
    K = resize_crop_intrinsics(K, in_hw, (res, res))
    expected = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], -1) / res
    assert (adjusted[:, :4] - expected).abs().max().item() < 1e-12
    assert torch.equal(adjusted[:, 4:], pose[:, 4:])


# ---------------------------------------------------------------------------------------------
# training items: clip, stride and augmentations, against their dataset
# ---------------------------------------------------------------------------------------------

def _probs(item):
    p = item["probs"]
    return dict(horizontal_flip_prob=p["horizontal_flip_prob"], back_and_forth_prob=p["back_and_forth_prob"],
                reverse_prob=p["reverse_prob"])


def _schedule_for_example(facts, item):
    lengths = [len(read_camera_file(os.path.join(DATA, f"{k}.txt")).rows) for k in KEYS]  # sorted keys
    return dfot.ClipSchedule(lengths, facts["max_frames"], facts["frame_skip"], maximize_training_data=True,
                             subdataset_size=facts["subdataset_size"],
                             frame_skip_increase=item["probs"]["frame_skip_increase"])


def test_training_items_match_theirs(golden, clips):
    arrays, facts, _ = golden
    seen = set()
    for n, item in enumerate(facts["items"]):
        schedule = _schedule_for_example(facts, item)
        video, indices = schedule.item(item["idx"], item["subepoch"])
        assert (KEYS[video], int(indices[0])) == (item["key"], item["start_frame"]), f"item {n}: other clip"
        frames, rows = clips[KEYS[video]]
        out = dfot.training_item(frames, rows, indices, random.Random(item["seed"]), **_probs(item), source=item["key"])
        conds = torch.from_numpy(arrays[f"item{n}/conds"])
        err = (out["conds"] - conds).abs().max().item()
        assert err <= 1e-6, f"item {n} ({item['variant']}, {out['augmentations']}): poses differ by {err}"
        means = out["videos"].double().mean((-1, -2)).numpy()
        np.testing.assert_allclose(means, arrays[f"item{n}/videos_means"], rtol=0, atol=1e-12,
                                   err_msg=f"item {n} ({item['variant']}, {out['augmentations']}): frames differ")
        assert sha256(out["videos"].numpy()) == arrays[f"item{n}/videos_sha256"].tobytes(), f"item {n}: frames differ"
        assert out["videos"].shape == (facts["max_frames"], 3, 64, 64) and out["nonterminal"].all()
        seen.update(out["augmentations"])
        if item["variant"] in ("flip", "back_and_forth", "reverse"):
            assert out["augmentations"] == (item["variant"],)
        if item["variant"] == "all":
            assert out["augmentations"] == ("flip", "back_and_forth", "reverse")
    assert seen == {"flip", "back_and_forth", "reverse"}


def test_rays_from_item_poses_run(golden, clips):
    _, facts, _ = golden
    item = facts["items"][9]  # all three augmentations
    video, indices = _schedule_for_example(facts, item).item(item["idx"], item["subepoch"])
    frames, rows = clips[KEYS[video]]
    out = dfot.training_item(frames, rows, indices, random.Random(item["seed"]), **_probs(item))
    rays = ray_encoding(out["conds"][None], 64, 64)
    assert rays.shape == (1, facts["max_frames"], 180, 64, 64) and torch.isfinite(rays).all()


def test_flip_is_a_mirror(clips):
    _, rows = clips["clip_a"]
    pose = dfot.pose_from_rows(rows).double()
    frames = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).view(2, 3, 2, 5)
    flipped_frames, flipped = dfot.flip_horizontal(frames, pose[:2])
    assert torch.equal(flipped_frames, frames.flip(-1))
    changed = (flipped != pose[:2]).any(0).nonzero().flatten().tolist()
    assert changed == list(dfot.FLIP_NEGATED) == [5, 6, 7, 8, 12]
    F = torch.diag(torch.tensor([-1.0, 1, 1], dtype=torch.float64))
    E = pose[:2, 4:].view(-1, 3, 4)
    assert torch.allclose(flipped[:, 4:].view(-1, 3, 4), torch.cat([F @ E[..., :3] @ F, F @ E[..., 3:]], -1))
    assert torch.equal(dfot.back_and_forth(torch.arange(6)), torch.tensor([0, 2, 4, 5, 3, 1]))
    assert torch.equal(dfot.back_and_forth(torch.arange(5)), torch.tensor([0, 2, 4, 3, 1]))
    assert torch.equal(dfot.reverse(torch.arange(4)), torch.tensor([3, 2, 1, 0]))


def test_zero_probability_draws_nothing():
    # like their random_bool: p == 0 consumes no random number
    rng, reference = random.Random(5), random.Random(5)
    pose = torch.zeros(4, 16)
    dfot.augment(torch.zeros(4, 3, 2, 2), pose, rng, 0.0, 0.0, 1.0)
    reference.random()
    assert rng.random() == reference.random()


# ---------------------------------------------------------------------------------------------
# the clip order and stride schedule
# ---------------------------------------------------------------------------------------------

def test_schedule_matches_theirs(golden):
    _, facts, _ = golden
    for key, rows in facts["schedule"].items():
        subepoch = None if key == "None" else int(key)
        schedule = dfot.ClipSchedule(facts["schedule_lengths"], facts["max_frames"], facts["frame_skip"],
                                     maximize_training_data=True,
                                     subdataset_size=None if subepoch is None else facts["subdataset_size"],
                                     frame_skip_increase=0 if subepoch is None else 1)
        expected_len = schedule.num_clips if subepoch is None else facts["subdataset_size"]
        assert len(rows) == expected_len == len(schedule.order(subepoch))
        for idx, row in enumerate(rows):
            video, indices = schedule.item(idx, subepoch)
            assert [video, int(indices[0])] + indices.tolist() == row, f"subepoch {key} item {idx}"


def test_stride_schedule_rules():
    assert dfot.training_frame_skip(10, 0, 1) == 10 and dfot.training_frame_skip(10, 7, 1) == 17
    assert dfot.training_frame_skip(10, 7, 2) == 24 and dfot.training_frame_skip(10, 7, 0.5) == 13  # int(3.5)
    assert dfot.training_frame_skip(10, None, 0) == 10
    with pytest.raises(ValueError, match="subepoch"):
        dfot.training_frame_skip(10, None, 1)
    # RE10K: 16 frames; a 100-frame video from frame 20 fits stride (100 - 20 - 1) // 15 = 5 at most
    assert dfot.clip_frame_skip(100, 20, 16, 12) == 5 and dfot.clip_frame_skip(400, 0, 16, 12) == 12
    with pytest.raises(DataError, match="does not fit"):
        dfot.clip_frame_skip(10, 0, 16, 10)


def test_config_facts(golden):
    _, facts, _ = golden
    cfg = facts["composed_dataset_config"]
    assert np.allclose(np.ravel(cfg["data_mean"]), dfot.DFOT_MEAN) and np.allclose(np.ravel(cfg["data_std"]), dfot.DFOT_STD)
    assert (cfg["resolution"], cfg["max_frames"], cfg["frame_skip"], cfg["external_cond_dim"]) == (256, 16, 10, 16)
    assert cfg["maximize_training_data"] is True and cfg["latent"]["enable"] is False
    aug = cfg["augmentation"]
    parameters = inspect.signature(dfot.augment).parameters  # (not __defaults__: a wrapper keeps only the signature)
    defaults = tuple(parameters[k].default for k in ("horizontal_flip_prob", "back_and_forth_prob", "reverse_prob"))
    assert (aug["horizontal_flip_prob"], aug["back_and_forth_prob"], aug["reverse_prob"]) == defaults
    assert aug["frame_skip_increase"] == 1


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_bad_input_messages(golden, clips):
    _, _, raw = golden
    frames, rows = clips["clip_a"]
    pose = dfot.pose_from_rows(rows)
    cases = [
        (lambda: dfot.pose_from_rows(pose.numpy(), source="clip_a.txt"),
         r"^clip_a\.txt: expected camera rows \[T, 18\] .*got \[10, 16\] \(already a DFoT pose\?\)$"),
        (lambda: dfot.flip_horizontal(torch.zeros(10, 3, 4, 4), torch.from_numpy(rows)),
         r"^pose: expected a \[T, 16\] tensor .*got \[10, 18\] \(camera-file rows: convert them with pose_from_rows\)$"),
        (lambda: dfot.augment(torch.zeros(10, 3, 4, 4), torch.zeros(10, 18), random.Random(0)),
         r"^pose: expected a \[T, 16\] tensor"),
        (lambda: dfot.resize_crop_frames(raw["clip_a"][:, :40], 64, source="clip_a.mp4"),
         r"^clip_a\.mp4: frames of 40x118 are smaller than the 64x64 crop"),
        (lambda: dfot.resize_crop_frames(raw["clip_a"].astype(np.float32), 64, source="clip_a.mp4"),
         r"^clip_a\.mp4: expected uint8 frames \[T, H, W, 3\], got float32"),
        (lambda: dfot.training_item(frames[:5], rows, [0, 1], source="clip_a"),
         r"^clip_a: 5 frames but 10 camera rows$"),
        (lambda: dfot.training_item(frames, rows, [0, 12], source="clip_a"),
         r"^clip_a: frame indices \[0, 12\] out of range for 10 frames$"),
    ]
    for call, pattern in cases:
        with pytest.raises(DataError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)


def test_load_raw_clip_image_folder(golden, tmp_path):
    from PIL import Image

    _, _, raw = golden
    cameras = read_camera_file(os.path.join(DATA, "clip_b.txt"))
    folder = tmp_path / "clip_b"
    folder.mkdir()
    for stamp, frame in zip(cameras.timestamps, raw["clip_b"]):
        Image.fromarray(frame).save(folder / f"{stamp}.png")
    (tmp_path / "clip_b.txt").write_text(open(os.path.join(DATA, "clip_b.txt")).read())
    frames, rows = dfot.load_raw_clip(str(tmp_path / "clip_b.txt"))
    assert np.array_equal(frames, raw["clip_b"]) and np.array_equal(rows, cameras.rows)
    os.remove(folder / f"{cameras.timestamps[3]}.png")
    with pytest.raises(DataError, match=rf"clip_b\.txt: no image for timestamp {cameras.timestamps[3]} in "):
        dfot.load_raw_clip(str(tmp_path / "clip_b.txt"))
    # a camera line of 17 numbers where 19 belong: the file and line are named
    bad = tmp_path / "bad.txt"
    lines = open(os.path.join(DATA, "clip_b.txt")).read().splitlines()
    lines[2] = " ".join(lines[2].split()[:17])
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad\.txt:3: expected 19 numbers, got 17"):
        dfot.load_raw_clip(str(bad))


def test_clip_schedule_defaults_boundaries_and_subepochs_across_epochs():
    """RE10K's defaults (16 frames, stride 10, maximize_training_data, +1 per subepoch); a video of
    exactly max_frames frames is kept; clip numbers past the end are refused; a subepoch that
    straddles two epochs takes the end of one shuffle and the start of the next; a subepoch
    larger than two epochs is refused; the two latest orders are kept."""
    schedule = dfot.ClipSchedule([16, 15, 160])
    assert (schedule.max_frames, schedule.frame_skip, schedule.span, schedule.frame_skip_increase) == (16, 10, 151, 1)
    assert schedule.videos == [0, 2] and schedule.num_clips == 1 + 10  # the 16-frame video: one clip at frame 0
    assert schedule.locate(10) == (2, 9)
    with pytest.raises(IndexError, match="clip 11 out of range for 11 clips"):
        schedule.locate(11)
    with pytest.raises(DataError, match="no video has the 151 frames a clip needs"):
        dfot.ClipSchedule([150], maximize_training_data=False)

    sized = dfot.ClipSchedule([16, 15, 160], subdataset_size=4)  # 11 clips: subepoch 2 = clips 8..11
    shuffles = [list(range(11)) for _ in range(2)]
    for epoch, order in enumerate(shuffles):
        random.Random(epoch).shuffle(order)
    assert sized.order(2) == shuffles[0][8:] + shuffles[1][:1]
    assert sized.order(3) == shuffles[1][1:5]
    with pytest.raises(ValueError, match="subdataset_size 23 exceeds the 11 clips"):
        dfot.ClipSchedule([16, 15, 160], subdataset_size=23).order(0)
    for subepoch in (0, 1, 2):
        sized.item(0, subepoch)
    assert list(sized._orders) == [1, 2]


# ---------------------------------------------------------------------------------------------
# edges and refusals, value by value (data/dfot_*.py mutation survivors)
# ---------------------------------------------------------------------------------------------

def test_pose_checks_name_what_they_got():
    """_check_pose and pose_from_rows: non-tensors (numpy rows, a list) are refused by name and
    shape, the hints appear only for 18 (resp. 16) numbers per row, the default source is 'rows';
    rows as a list of 1-D tensors or as bfloat16 are taken like any other rows."""
    frames = torch.zeros(2, 3, 2, 2)
    cases = [
        (np.zeros((10, 18)), r"got \[10, 18\] \(camera-file rows: convert them with pose_from_rows\)$"),
        ([[0.0] * 16] * 2, r"got \['list'\]$"),
        (torch.zeros(10, 15), r"got \[10, 15\]$"),
        (torch.zeros(18), r"got \[18\] \(camera-file rows: convert them with pose_from_rows\)$"),
    ]
    for pose, tail in cases:
        with pytest.raises(DataError, match=r"^pose: expected a \[T, 16\] tensor \(4 intrinsics \+ 3x4 "
                                            r"world-to-camera\), " + tail):
            dfot.flip_horizontal(frames, pose)
    with pytest.raises(DataError, match=r"^rows: expected camera rows \[T, 18\] \(fx fy cx cy 0 0 \+ 3x4 "
                                        r"world-to-camera\), got \[10, 17\]$"):
        dfot.pose_from_rows(torch.zeros(10, 17))
    rows = torch.arange(3 * 18, dtype=torch.float64).view(3, 18) / 7
    keep = [0, 1, 2, 3] + list(range(6, 18))  # the 4 intrinsics, then the 12 numbers of [R|t]
    expected = torch.from_numpy(rows.numpy()[:, keep].astype(np.float32))
    assert torch.equal(dfot.pose_from_rows(list(rows)), expected)  # a list of 1-D tensors
    bf16 = rows.to(torch.bfloat16)
    out = dfot.pose_from_rows(bf16)
    assert out.dtype == torch.float32 and torch.equal(out, bf16.float()[:, keep])


def test_frame_checks_sizes_and_normalisation_edges():
    """frames_to_unit and resize_crop_frames refuse anything but uint8 [T, H, W, 3] (default
    source 'frames'); a frame whose short side equals the resolution is cropped, not refused;
    the default resolution is 256; crop_geometry refuses sizes <= 0 (1 is fine);
    normalize/unnormalize refuse a missing channel axis, take [3, H, W], keep float32 when
    torch's default dtype is float64, and follow the frames' device."""
    for bad, text in ((np.zeros((1, 2, 2, 4), np.uint8), r"uint8 \[1, 2, 2, 4\]"),
                      (np.zeros((1, 2, 2, 3), np.float32), r"float32 \[1, 2, 2, 3\]")):
        with pytest.raises(DataError, match=rf"^frames: expected uint8 \[T, H, W, 3\], got {text}$"):
            dfot.frames_to_unit(bad)
    with pytest.raises(DataError, match=r"^frames: expected uint8 frames \[T, H, W, 3\], got uint8 \[1, 70, 70, 4\]$"):
        dfot.resize_crop_frames(np.zeros((1, 70, 70, 4), np.uint8), 64)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)
    # scale max(64/64, 64/80) = 1: no resampling, columns (80 - 64) // 2 = 8 onwards
    assert np.array_equal(dfot.resize_crop_frames(frame, 64), frame[:, :, 8:72])
    frame = rng.integers(0, 256, (1, 256, 300, 3), dtype=np.uint8)
    assert np.array_equal(dfot.resize_crop_frames(frame), frame[:, :, 22:278])  # 256 by default

    for h, w, r in ((0, 5, 4), (5, 0, 4), (5, 5, 0), (-1, 5, 4)):
        with pytest.raises(ValueError, match=rf"^sizes must be positive, got {h}x{w} to {r}$"):
            dfot.crop_geometry(h, w, r)
    assert dfot.crop_geometry(1, 1, 1) == ((1, 1), (0, 0))
    assert dfot.crop_geometry(1, 3, 2) == ((2, 6), (0, 2))

    for f in (dfot.normalize, dfot.unnormalize):
        for shape in ((4, 2, 2), (3, 2)):
            text = ", ".join(map(str, shape))
            with pytest.raises(ValueError, match=rf"^frames: expected \[\.\.\., 3, H, W\], got \[{text}\]$"):
                f(torch.zeros(shape))
    mean, std = np.array(dfot.DFOT_MEAN), np.array(dfot.DFOT_STD)
    out = dfot.unnormalize(torch.ones(3, 1, 1))
    np.testing.assert_allclose(out.flatten().numpy(), mean + std, rtol=0, atol=1e-7)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        half = torch.full((3, 1, 1), 0.5, dtype=torch.float32)
        normalized, back = dfot.normalize(half), dfot.unnormalize(half)
    finally:
        torch.set_default_dtype(previous)
    assert normalized.dtype == back.dtype == torch.float32
    np.testing.assert_allclose(normalized.flatten().numpy(), (0.5 - mean) / std, rtol=0, atol=1e-6)
    meta = torch.zeros(2, 3, 4, 4, device="meta")
    for f in (dfot.normalize, dfot.unnormalize):
        assert f(meta).device.type == "meta" and f(meta).shape == meta.shape


def test_augment_defaults_draws_and_refusals():
    """augment's defaults are DFoT's (0.5, 0.1, 0.5): the same decisions as when passed; a
    draw equal to p is no hit (random() < p); probabilities outside [0, 1] and frames and pose
    of different lengths are refused; an integer pose is flipped by negation."""
    frames = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).view(4, 3, 2, 2)
    pose = torch.arange(4 * 16, dtype=torch.float32).view(4, 16)
    seen = set()
    for seed in range(40):
        a = dfot.augment(frames, pose, random.Random(seed))
        b = dfot.augment(frames, pose, random.Random(seed), 0.5, 0.1, 0.5)
        assert a[2] == b[2] and torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        seen.update(a[2])
    assert seen == {"flip", "back_and_forth", "reverse"}
    p = random.Random(3).random()
    assert dfot.augment(frames, pose, random.Random(3), p, 0.0, 0.0)[2] == ()
    assert dfot.augment(frames, pose, random.Random(3), np.nextafter(p, 1.0), 0.0, 0.0)[2] == ("flip",)
    for bad in (1.5, -0.5):
        with pytest.raises(ValueError, match=rf"^probabilities must lie in \[0, 1\], got {bad}$"):
            dfot.augment(frames, pose, random.Random(0), horizontal_flip_prob=bad)
    with pytest.raises(ValueError, match=r"^frames \(3\) and pose \(4\) differ in length$"):
        dfot.augment(frames[:3], pose, random.Random(0))
    whole = torch.arange(2 * 16).view(2, 16)
    _, flipped = dfot.flip_horizontal(torch.zeros(2, 3, 1, 1), whole)
    expected = whole.clone()
    for k in (5, 6, 7, 8, 12):
        expected[:, k] = -whole[:, k]
    assert flipped.dtype == torch.int64 and torch.equal(flipped, expected)


def test_stride_and_order_defaults_and_edges():
    """training_frame_skip's defaults (10, +1 per subepoch) and its message; two-frame clips
    are fine, one-frame clips are refused; without a subepoch (or a subdataset_size) the order
    is the whole dataset shuffled with seed 0."""
    assert dfot.training_frame_skip(subepoch=3) == 13
    with pytest.raises(ValueError, match=r"^subepoch is needed when frame_skip_increase is not 0$"):
        dfot.training_frame_skip(10)
    assert dfot.clip_frame_skip(10, 0, 2, 3) == 3 and dfot.clip_frame_skip(10, 4, 2, 9) == 5
    with pytest.raises(ValueError, match=r"^max_frames must be >= 2, got 1$"):
        dfot.clip_frame_skip(10, 0, 1, 3)
    shuffled = list(range(11))
    random.Random(0).shuffle(shuffled)
    assert dfot.ClipSchedule([16, 15, 160], subdataset_size=4).order(None) == shuffled
    assert dfot.ClipSchedule([16, 15, 160], frame_skip_increase=0).order(5) == shuffled


def test_training_item_defaults_sources_and_indices(clips):
    """training_item: DFoT's probabilities by default; 'clip' and the given source name errors
    (pose_from_rows' too); whole-number float indices are taken as indices; index len(frames)
    is refused; nonterminal is a bool mask of ones."""
    frames, rows = clips["clip_a"]
    for seed in range(6):
        a = dfot.training_item(frames, rows, [0, 2, 4, 6], random.Random(seed))
        b = dfot.training_item(frames, rows, [0, 2, 4, 6], random.Random(seed), 0.5, 0.1, 0.5)
        assert a["augmentations"] == b["augmentations"] and torch.equal(a["videos"], b["videos"])
    with pytest.raises(DataError, match=r"^clip: 5 frames but 10 camera rows$"):
        dfot.training_item(frames[:5], rows, [0, 1])
    with pytest.raises(DataError, match=r"^clip_a\.pt: expected camera rows \[T, 18\]"):
        dfot.training_item(frames, rows[:, :16], [0], source="clip_a.pt")
    with pytest.raises(DataError, match=r"^clip: frame indices \[0, 10\] out of range for 10 frames$"):
        dfot.training_item(frames, rows, [0, 10])
    out = dfot.training_item(frames, rows, np.array([4.0, 0.0, 9.0]))
    assert torch.equal(out["videos"], torch.from_numpy(frames[[4, 0, 9]]).permute(0, 3, 1, 2) / 255.0)
    assert torch.equal(out["conds"], torch.from_numpy(rows[[4, 0, 9]][:, [0, 1, 2, 3] + list(range(6, 18))]).float())
    assert out["nonterminal"].dtype == torch.bool and out["nonterminal"].tolist() == [True] * 3


def test_load_raw_clip_prefers_the_mp4_beside_the_camera_file(golden, tmp_path):
    """{stem}.mp4 is read when it exists, not the {stem} folder; a video of fewer frames than
    camera lines and a clip with neither are refused, naming both paths."""
    pytest.importorskip("av", reason="writing test videos needs PyAV")
    from PIL import Image

    from gfcore.data.video import write_video

    _, _, raw = golden
    cameras = read_camera_file(os.path.join(DATA, "clip_b.txt"))
    text = open(os.path.join(DATA, "clip_b.txt")).read()
    camera_path = tmp_path / "clip_b.txt"
    camera_path.write_text(text)
    folder = tmp_path / "clip_b"
    folder.mkdir()
    for stamp, frame in zip(cameras.timestamps, raw["clip_b"]):
        Image.fromarray(255 - frame).save(folder / f"{stamp}.png")  # not the video's frames
    write_video(str(tmp_path / "clip_b.mp4"), raw["clip_b"], crf=0)
    frames, rows = dfot.load_raw_clip(str(camera_path))
    assert frames.shape == raw["clip_b"].shape and np.array_equal(rows, cameras.rows)
    # lossless H.264 in yuv444p: within the RGB <-> YUV rounding of the raw frames
    assert np.abs(frames.astype(int) - raw["clip_b"]).max() <= 3
    short = tmp_path / "short.mp4"
    write_video(str(short), raw["clip_b"][:5], crf=0)
    with pytest.raises(DataError, match=rf"^{camera_path}: 8 camera lines but {short} has 5 frames$"):
        dfot.load_raw_clip(str(camera_path), str(short))
    lone = tmp_path / "lone.txt"
    lone.write_text(text)
    with pytest.raises(DataError, match=rf"^{lone}: no frames: {tmp_path / 'lone'} is neither a video nor a folder$"):
        dfot.load_raw_clip(str(lone))
