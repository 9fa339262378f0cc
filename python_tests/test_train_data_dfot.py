"""data.kind=dfot_re10k: DFoT's RealEstate10K training pipeline as the trainer's batches.

Two datasets in DFoT's preprocessed layout ({split}_{res}/KEY.mp4|.npz, {split}_poses/KEY.pt):
* the authors' example (python_tests/data/dfot_re10k: what their code made of two clips, see
  scripts/make_dfot_data_golden.py), written as their 64 px .npz layout: the reader's items must
  be theirs;
* made here: six videos of 16 px mp4 frames and made-up cameras (one too short to take part),
  for the step-indexed batches: determinism in (seed, step), resume, DDP slices, the stride
  schedule, the augmentation draws, the cameras the DFoT objective reads, and bad input.
"""
import hashlib
import json
import math
import os
import random
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("av", reason="writing test videos needs PyAV (pip install av)")

from gfcore.data import DataError  # noqa: E402
from gfcore.data import dfot_re10k as dfot  # noqa: E402
from gfcore.data.geometry import cameras_to_dfot_poses  # noqa: E402
from gfcore.data.video import read_video, write_video  # noqa: E402
from gfcore.models.dfot import camera_rays, ray_encoding  # noqa: E402
from gfcore.train.data import BatchPrefetcher, build_batcher, build_dataset  # noqa: E402
from gfcore.train.dfot_data import item_rng  # noqa: E402
from trainer_helpers import one_torch_thread  # noqa: E402,F401  (fixture)

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "dfot_re10k")
CONFIG = os.path.join(os.path.dirname(__file__), "..", "gfcore", "configs", "data", "dfot_re10k.yaml")
RES = 16
LENGTHS = {"hall": 30, "kitchen": 9, "loft": 17, "porch": 44, "stair": 5, "tiny": 3}  # tiny: < max_frames
MAX_FRAMES, FRAME_SKIP, SUBDATASET = 4, 2, 20
PROBS = dict(horizontal_flip_prob=0.5, back_and_forth_prob=0.1, reverse_prob=0.5)  # DFoT's RE10K values


# ---------------------------------------------------------------------------------------------
# the datasets
# ---------------------------------------------------------------------------------------------

def rotation(rx, ry, rz):
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
            @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))


def camera_rows(num, seed):
    """[num, 18] camera rows: fx fy cx cy (cx off-centre) 0 0, then a turning, moving w2c [R|t]."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(num):
        R = rotation(0.04 * t + 0.1 * seed, -0.07 * t + 0.2, 0.03 * t - 0.1)
        tvec = np.array([0.2 * t - 0.3, -0.05 * t + 0.1, 0.1 * t + 0.5]) + rng.normal(0, 0.05, 3)
        rows.append(np.concatenate([[0.61, 1.07, 0.46, 0.53, 0, 0], np.concatenate([R, tvec[:, None]], 1).ravel()]))
    return torch.tensor(np.array(rows), dtype=torch.float32)


def frames_for(num, seed, size=RES):
    """uint8 [num, size, size, 3]: smooth content, frame-dependent, left-right asymmetric."""
    rng = np.random.default_rng(seed)
    v, u = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, 3)
    out = [np.stack([0.5 + 0.4 * np.sin(np.pi * (1.5 * u + (c + 1) * v * v) + phase[c] + 0.4 * t) for c in range(3)], -1)
           for t in range(num)]
    return (np.stack(out) * 255).round().astype(np.uint8)


def write_split(root, lengths, res=RES, split="training"):
    os.makedirs(os.path.join(root, f"{split}_{res}"), exist_ok=True)
    os.makedirs(os.path.join(root, f"{split}_poses"), exist_ok=True)
    for n, (key, length) in enumerate(sorted(lengths.items())):
        write_video(os.path.join(root, f"{split}_{res}", f"{key}.mp4"), frames_for(length, n, res))
        torch.save(camera_rows(length, n), os.path.join(root, f"{split}_poses", f"{key}.pt"))


@pytest.fixture(scope="module")
def made_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dfot_made"))
    write_split(root, LENGTHS)
    return root


@pytest.fixture(scope="module")
def golden():
    with np.load(os.path.join(GOLDEN, "golden.npz")) as archive:
        arrays = {k: archive[k] for k in archive.files}
    with open(os.path.join(GOLDEN, "golden.json")) as handle:
        return arrays, json.load(handle)


@pytest.fixture(scope="module")
def golden_root(tmp_path_factory, golden):
    """The authors' preprocessed example in their 64 px layout: frames as their resize made them,
    poses as their camera-file reader made them."""
    arrays, _ = golden
    root = str(tmp_path_factory.mktemp("dfot_golden"))
    os.makedirs(os.path.join(root, "training_64"))
    os.makedirs(os.path.join(root, "training_poses"))
    for key in ("clip_a", "clip_b"):
        np.savez_compressed(os.path.join(root, "training_64", f"{key}.npz"),
                            video=arrays[f"{key}/frames_64"].transpose(0, 3, 1, 2).copy())
        torch.save(torch.from_numpy(arrays[f"{key}/rows_float32"]), os.path.join(root, "training_poses", f"{key}.pt"))
    return root


def data_config(root, **changes):
    cfg = OmegaConf.load(CONFIG)
    cfg.root = root
    settings = dict(resolution=[RES, RES], clip_frames=MAX_FRAMES, frame_skip=FRAME_SKIP, subdataset_size=SUBDATASET)
    for key, value in (settings | changes).items():
        cfg[key] = value
    return cfg


def run_config(data, seed=0, objective="dfot"):
    return OmegaConf.create({"data": data, "seed": seed, "train": {"num_frames": int(data.clip_frames),
                                                                      "objective": objective}})


def batcher_for(root, seed=0, batch_size=6, rank=0, world_size=1, objective="dfot", **changes):
    data = data_config(root, **changes)
    return build_batcher(run_config(data, seed, objective), build_dataset(data, with_depth=False), batch_size,
                         rank, world_size)


def sha256(array) -> bytes:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest()


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ---------------------------------------------------------------------------------------------
# the authors' items through the reader
# ---------------------------------------------------------------------------------------------

def test_reader_items_are_the_authors(golden, golden_root):
    """Every item their RealEstate10KAdvancedVideoDataset made of the example (clip, stride and
    augmentations by seed, over subepochs 0-3) comes out of the reader with the same random
    state: the same frames to the bit, the same 16-D poses; and the batch's frames are them in
    [-1, 1] with the cameras of those poses."""
    from gfcore.train.dfot_data import DFoTTrainData, to_trainer_item

    arrays, facts = golden
    for n, item in enumerate(facts["items"]):
        p = item["probs"]
        data = data_config(golden_root, resolution=[64, 64], clip_frames=facts["max_frames"],
                           frame_skip=facts["frame_skip"], subdataset_size=facts["subdataset_size"],
                           frame_skip_increase=p["frame_skip_increase"], horizontal_flip_prob=p["horizontal_flip_prob"],
                           back_and_forth_prob=p["back_and_forth_prob"], reverse_prob=p["reverse_prob"])
        dataset = build_dataset(data, with_depth=False)
        assert isinstance(dataset, DFoTTrainData)
        ours = dataset.clips.item(item["subepoch"], item["idx"], random.Random(item["seed"]))
        label = f"item {n} ({item['variant']}, {ours['augmentations']})"
        assert ours["key"] == item["key"], label
        assert int(ours["frame_indices"].min()) == item["start_frame"], label
        assert sha256(ours["videos"].numpy()) == arrays[f"item{n}/videos_sha256"].tobytes(), f"{label}: frames differ"
        err = (ours["conds"] - torch.from_numpy(arrays[f"item{n}/conds"])).abs().max().item()
        assert err <= 1e-6, f"{label}: poses differ from theirs by {err}"  # float32 rows, as theirs
        converted = to_trainer_item(ours, 64)
        # x * 2 - 1 in float32 rounds by at most half an ulp of [0.5, 1) (2^-25); the DFoT objective's
        # (x + 1) / 2 then gives the authors' pixels back to that
        assert ((converted["frames"] + 1) / 2 - ours["videos"]).abs().max() <= 2 ** -25
        assert torch.equal(converted["intrinsics"][:, 0, 0], ours["conds"][:, 0] * 64)
    assert {i["variant"] for i in facts["items"]} >= {"flip", "back_and_forth", "reverse", "all"}


# ---------------------------------------------------------------------------------------------
# the step-indexed batches
# ---------------------------------------------------------------------------------------------

def test_batches_are_a_function_of_seed_and_step(made_root):
    """Two batchers built apart give the same batch for a step in any call order; another seed
    keeps DFoT's clip order (seeded by the subepoch alone) but draws other augmentations."""
    first, second = batcher_for(made_root, seed=3), batcher_for(made_root, seed=3)
    batches = {step: first.batch(step) for step in range(6)}
    for step in (4, 1, 5, 0, 3, 2, 1):
        assert_batches_equal(second.batch(step), batches[step])
    other = batcher_for(made_root, seed=4)
    assert [other.plan(s) for s in range(6)] == [first.plan(s) for s in range(6)]
    draws = [b["augmentations"] for b in batches.values()]
    assert draws != [other.batch(s)["augmentations"] for s in range(6)]
    for batch in batches.values():
        assert batch["frames"].shape == (6, MAX_FRAMES, 3, RES, RES) and batch["frames"].dtype == torch.float32
        assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1
        assert batch["intrinsics"].shape == (6, MAX_FRAMES, 3, 3) and batch["c2w"].shape == (6, MAX_FRAMES, 4, 4)
        assert "rays" not in batch  # the DFoT objective makes its own ray map


def test_resume_and_ranks_see_the_same_batches(made_root):
    """A batcher started at step 3 (a resumed run, batches prefetched on threads) gives the
    batches of steps 3.. that an uninterrupted one gives; rank r of 3 takes rows [2r, 2r + 2)."""
    straight = batcher_for(made_root, seed=1)
    expected = {step: straight.batch(step) for step in range(8)}
    with BatchPrefetcher(batcher_for(made_root, seed=1), 3, 8, depth=2, workers=2) as prefetcher:
        for step in range(3, 8):
            assert_batches_equal(prefetcher.get(step), expected[step])
    parts = [batcher_for(made_root, seed=1, rank=r, world_size=3).batch(5) for r in range(3)]
    for key in ("frames", "c2w", "intrinsics", "frame_indices", "flipped"):
        assert torch.equal(torch.cat([p[key] for p in parts]), expected[5][key]), key
    assert sum((p["key"] for p in parts), []) == expected[5]["key"]


def test_clip_strides_follow_the_schedule(made_root):
    """Sample b of step s is clip s B + b of the stream: item (s B + b) % 20 of subepoch
    (s B + b) // 20, at its place in DFoT's order; its frames are evenly spaced with stride
    min((L - start - 1) // 3, 2 + subepoch), the video that short is left out."""
    batcher = batcher_for(made_root)
    schedule = batcher.data.clips.schedule
    lengths = [LENGTHS[k] for k in sorted(LENGTHS)]
    strides = set()
    for step in range(14):  # 84 clips: subepochs 0 to 4
        batch = batcher.batch(step)
        for b in range(6):
            subepoch, index = divmod(step * 6 + b, SUBDATASET)
            frames = torch.sort(batch["frame_indices"][b]).values  # the augmentations reorder them
            start = int(frames[0])
            video, expected_start = schedule.locate(schedule.order(subepoch)[index])
            assert (batch["key"][b], start) == (sorted(LENGTHS)[video], expected_start), (step, b)
            length = lengths[video]
            stride = min((length - start - 1) // (MAX_FRAMES - 1), FRAME_SKIP + subepoch)
            assert torch.equal(frames, start + stride * torch.arange(MAX_FRAMES)), (step, b)
            strides.add(stride)
            assert batch["key"][b] != "tiny"
    assert strides >= {1, 2, 3, 4, 5, 6}  # capped (stair: 5 frames), the base and the grown strides


def test_augmentations_are_augment_with_the_same_random_state(made_root):
    """Each sample is DFoT's augment of the unaugmented clip with the sample's random.Random:
    the same decisions, frames and poses; frame_indices follow the frames; DFoT's probabilities
    show (every kind drawn, flips and reversals about half the time)."""
    from gfcore.train.dfot_data import to_trainer_item

    batcher = batcher_for(made_root, seed=7)
    clips = batcher.data.clips
    counts = {"flip": 0, "back_and_forth": 0, "reverse": 0}
    total = 0
    for step in range(12):
        batch = batcher.batch(step)
        for b, (subepoch, index) in enumerate(batcher.plan(step)):
            plain = clips.item(subepoch, index, None)
            assert plain["augmentations"] == ()
            videos, conds, applied = dfot.augment(plain["videos"], plain["conds"], item_rng(7, step, b), **PROBS)
            assert batch["augmentations"][b] == applied and bool(batch["flipped"][b]) == ("flip" in applied)
            assert torch.equal(batch["frames"][b], videos * 2 - 1), (step, b, applied)
            order = plain["frame_indices"]
            if "back_and_forth" in applied:
                order = dfot.back_and_forth(order)
            if "reverse" in applied:
                order = dfot.reverse(order)
            assert torch.equal(batch["frame_indices"][b], order)
            expected = to_trainer_item(dict(plain, videos=videos, conds=conds, augmentations=applied), RES)
            for key in ("intrinsics", "c2w"):
                assert torch.equal(batch[key][b], expected[key]), key
            counts.update({name: counts[name] + 1 for name in applied})
            total += 1
    assert all(counts.values()) and 0.3 < counts["flip"] / total < 0.7 and 0.3 < counts["reverse"] / total < 0.7


def test_cameras_are_the_items_poses_and_give_their_ray_map(made_root):
    """intrinsics = DFoT's normalised ones x res; c2w = inverse of the (flipped) world-to-camera,
    relative to the first frame (numpy by hand); the ray map the trainer makes of them
    (gfcore.train.dfot.dfot_external_cond) is ray_encoding of the augmented 16-D pose, flipped
    clips included, and not that of the pose without the flip's negations."""
    from gfcore.train.dfot import dfot_external_cond

    batcher = batcher_for(made_root, seed=2, horizontal_flip_prob=1.0)
    clips = batcher.data.clips
    batch = batcher.batch(1)
    maps = dfot_external_cond(batch)
    assert maps.shape == (6, MAX_FRAMES, 180, RES, RES) and batch["flipped"].all()
    for b, (subepoch, index) in enumerate(batcher.plan(1)):
        item = clips.item(subepoch, index, item_rng(2, 1, b))
        conds = item["conds"].double().numpy()
        K = batch["intrinsics"][b].double().numpy()
        assert np.array_equal(K[:, [0, 1, 0, 1], [0, 1, 2, 2]], (item["conds"][:, :4] * RES).numpy())
        w2c = np.tile(np.eye(4), (MAX_FRAMES, 1, 1))
        w2c[:, :3] = conds[:, 4:].reshape(-1, 3, 4)
        c2w = np.linalg.inv(w2c)
        # float32 storage of values up to ~3: a few 1e-7
        np.testing.assert_allclose(batch["c2w"][b].double().numpy(), np.linalg.inv(c2w[0]) @ c2w, rtol=0, atol=2e-6)
        # the rays of both, in float64: equal up to the float32 rounding of the stored cameras
        pose = cameras_to_dfot_poses(batch["intrinsics"][b:b + 1].double(), batch["c2w"][b:b + 1].double(), RES, RES)
        ours, theirs = camera_rays(pose, RES, RES), camera_rays(item["conds"][None].double(), RES, RES)
        delta = max((a - t).abs().max().item() for a, t in zip(ours, theirs))
        assert delta < 1e-6, delta  # coordinates up to ~4: float32 spacing 2.4e-7 (measured: <= 5e-7)
        # Both ray maps are float32, each coordinate v rounded its own way by ~1e-6 at most, and
        # sin(2^k pi v) moves by at most 2^k pi |dv|: band k within 2^k pi 2e-6 (measured: about
        # 2^k pi 5e-7, so the top band's 0.1 is what float32 allows, not a loose test)
        reference = ray_encoding(item["conds"][None], RES, RES)[0]
        bound = torch.tensor([min(2.0, 2 ** k * math.pi * 2e-6) for k in range(15)])
        per_channel = bound.repeat(3).repeat(4)  # sin / cos of origin xyz, then of direction xyz
        diff = (maps[b] - reference).abs().amax(dim=(0, 2, 3))
        assert (diff <= per_channel + 1e-6).all(), diff
        unflipped = item["conds"].clone()
        unflipped[:, list(dfot.FLIP_NEGATED)] *= -1
        wrong = (ray_encoding(unflipped[None], RES, RES)[0] - maps[b]).abs().amax(dim=(0, 2, 3))
        assert (wrong[:45] > 10 * per_channel[:45]).any()  # the low bands tell a missing negation


def test_flow_objective_gets_pluecker_rays(made_root):
    """With train.objective=flow the batch also carries the Pluecker rays of its cameras."""
    from gfcore.data.geometry import plucker_rays

    batch = batcher_for(made_root, objective="flow").batch(0)
    expected = plucker_rays(batch["intrinsics"], batch["c2w"], RES, RES)
    assert batch["rays"].shape == (6, MAX_FRAMES, 6, RES, RES) and torch.equal(batch["rays"], expected)


def test_unaugmented_items_and_mp4_frames(made_root):
    """dataset[i]: item i of subepoch 0, unaugmented, its frames the decoded video's."""
    dataset = build_dataset(data_config(made_root), with_depth=False)
    assert len(dataset) == SUBDATASET
    schedule = dataset.clips.schedule
    for i in (0, 7, 19):
        item = dataset[i]
        video, indices = schedule.item(i, 0)
        key = sorted(LENGTHS)[video]
        decoded = read_video(os.path.join(made_root, f"training_{RES}", f"{key}.mp4"), indices.tolist())
        assert item["key"] == key and torch.equal(item["frame_indices"], indices) and not item["flipped"]
        expected = torch.from_numpy(decoded).permute(0, 3, 1, 2) / 255.0 * 2 - 1
        assert torch.equal(item["frames"], expected)
    with pytest.raises(IndexError, match="item 20 out of range for 20 clips per subepoch"):
        dataset[20]


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------

def trainer_overrides(root, out, *extra):
    return ["model=dfot_tiny", "train.objective=dfot", "teacher=none", "data=dfot_re10k", f"data.root={root}",
            f"data.resolution=[{RES},{RES}]", f"data.clip_frames={MAX_FRAMES}", f"data.frame_skip={FRAME_SKIP}",
            "data.subdataset_size=5", "train.batch_size=2", f"train.num_frames={MAX_FRAMES}", "train.steps=5",
            "train.ckpt_every=2", "train.log_every=1", "train.warmup_steps=1", "train.progress=false",
            "train.device=cpu", f"out_dir={out}", *extra]


def test_trainer_takes_the_dfot_batches_and_resumes_them(tmp_path, made_root, monkeypatch):
    """gfcore train with data=dfot_re10k consumes DFoTStepBatcher's batches (subepochs of 5 clips
    cross inside a step); killed after step 3 and resumed from step 2, it sees the same batches
    and ends bit-identical."""
    from gfcore.train import load_config, train
    from gfcore.io.checkpoint_file import read_checkpoint
    from gfcore.train.dfot_data import DFoTStepBatcher
    from gfcore.train.trainer import CrashForTesting

    seen = {}
    original = DFoTStepBatcher.batch

    def recording(self, step, device=None):
        batch = original(self, step, device)
        seen.setdefault(self.seed, []).append((step, batch["key"], batch["frame_indices"].tolist(),
                                               batch["augmentations"]))
        return batch

    monkeypatch.setattr(DFoTStepBatcher, "batch", recording)
    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    train(load_config(trainer_overrides(made_root, straight, "seed=11")))
    first = sorted(seen.pop(11))
    assert [s for s, *_ in first] == list(range(5))
    with pytest.raises(CrashForTesting):
        train(load_config(trainer_overrides(made_root, interrupted, "seed=11", "train.crash_after_step=3")))
    seen.clear()
    assert train(load_config(trainer_overrides(made_root, interrupted, "seed=11")))["resumed_from"] == 2
    assert sorted(seen[11]) == first[2:]
    a = read_checkpoint(os.path.join(straight, "final.pt"))
    b = read_checkpoint(os.path.join(interrupted, "final.pt"))
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


# ---------------------------------------------------------------------------------------------
# configuration and bad input
# ---------------------------------------------------------------------------------------------

def test_re10k_gf_finetune_uses_the_authors_numbers(golden):
    """experiment=re10k_gf_finetune reads data=dfot_re10k with DFoT's RE10K dataset numbers (their
    composed config, recorded in golden.json) and Geometry Forcing's subdataset_size (10000,
    scripts/train_geometry_forcing.sh)."""
    from gfcore.train import load_config

    _, facts = golden
    theirs = facts["composed_dataset_config"]
    cfg = load_config(["experiment=re10k_gf_finetune", "train.init_from=/ckpt", "data.root=/x"]).data
    assert cfg.kind == "dfot_re10k" and list(cfg.resolution) == [theirs["resolution"]] * 2
    assert (cfg.clip_frames, cfg.frame_skip, cfg.maximize_training_data) == (
        theirs["max_frames"], theirs["frame_skip"], theirs["maximize_training_data"])
    for key in ("frame_skip_increase", "horizontal_flip_prob", "back_and_forth_prob", "reverse_prob"):
        assert cfg[key] == theirs["augmentation"][key], key
    assert cfg.subdataset_size == 10000
    plain = OmegaConf.load(CONFIG)
    for key in ("clip_frames", "frame_skip", "frame_skip_increase", "subdataset_size", "horizontal_flip_prob",
                "back_and_forth_prob", "reverse_prob"):
        assert plain[key] == cfg[key], key


def one_line_error(error, pattern, call):
    with pytest.raises(error, match=pattern) as info:
        call()
    assert "\n" not in str(info.value)


def test_bad_input_is_named(tmp_path, made_root):
    missing = str(tmp_path / "nowhere")
    one_line_error(DataError, rf"^{missing}: data.root does not exist \(expected DFoT's RealEstate10K layout: "
                   r"training_16/KEY.mp4 \(or .npz\) and training_poses/KEY.pt\)$",
                   lambda: build_dataset(data_config(missing), with_depth=False))
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(DataError, rf"^{empty}/training_16: no such folder",
                   lambda: build_dataset(data_config(str(empty)), with_depth=False))

    # a pose file of DFoT's 16-D poses where the 18 camera-row numbers belong
    sixteen = str(tmp_path / "sixteen")
    write_split(sixteen, {"a": 12, "b": 10})
    path = os.path.join(sixteen, "training_poses", "b.pt")
    torch.save(dfot.pose_from_rows(camera_rows(10, 1)), path)
    one_line_error(DataError, rf"^{path}: expected camera rows \[T, 18\] .*got \[10, 16\] \(a DFoT 16-D pose",
                   lambda: build_dataset(data_config(sixteen), with_depth=False))
    os.remove(path)
    one_line_error(DataError, rf"^{path}: pose file not found",
                   lambda: build_dataset(data_config(sixteen), with_depth=False))

    # frames that are not data.resolution: found when a clip of that video is read
    wrong = str(tmp_path / "wrong")
    write_split(wrong, {"a": 12})
    os.replace(os.path.join(wrong, "training_16", "a.mp4"), os.path.join(wrong, "a24.mp4"))
    write_video(os.path.join(wrong, "training_16", "a.mp4"), frames_for(12, 0, size=24))
    video = os.path.join(wrong, "training_16", "a.mp4")
    one_line_error(DataError, rf"^{video}: frames are 24x24x3, expected 16x16x3 \(data.resolution",
                   lambda: batcher_for(wrong, subdataset_size=None, frame_skip_increase=0).batch(0))
    np.savez_compressed(os.path.join(wrong, "training_16", "a.npz"), video=frames_for(12, 0, 8).transpose(0, 3, 1, 2))
    os.remove(video)
    npz = os.path.join(wrong, "training_16", "a.npz")
    one_line_error(DataError, rf"^{npz}: frames are 8x8x3, expected 16x16x3",
                   lambda: batcher_for(wrong, subdataset_size=None, frame_skip_increase=0).batch(0))
    np.savez_compressed(npz, video=frames_for(11, 0).transpose(0, 3, 1, 2))
    one_line_error(DataError, rf"^{npz}: 11 frames but its pose file has 12 rows",
                   lambda: batcher_for(wrong, subdataset_size=None, frame_skip_increase=0).batch(0))

    # settings
    one_line_error(ValueError, r"^data.kind=dfot_re10k takes square frames .*\[16, 24\]$",
                   lambda: build_dataset(data_config(made_root, resolution=[16, 24]), with_depth=False))
    one_line_error(ValueError, r"^data.frame_skip_increase needs data.subdataset_size",
                   lambda: build_dataset(data_config(made_root, subdataset_size=None), with_depth=False))
    one_line_error(ValueError, r"^data.reverse_prob must lie in \[0, 1\], got 1.5$",
                   lambda: build_dataset(data_config(made_root, reverse_prob=1.5), with_depth=False))
    one_line_error(ValueError, r"^data.kind=dfot_re10k has no ground-truth depth",
                   lambda: build_dataset(data_config(made_root), with_depth=True))
    data = data_config(made_root)
    dataset = build_dataset(data, with_depth=False)
    config = run_config(data)
    config.train.num_frames = 8
    one_line_error(ValueError, r"^train.num_frames=8 must equal data.clip_frames=4",
                   lambda: build_batcher(config, dataset, 6))
    one_line_error(ValueError, r"^data.kind=dfot_re10k: split must be one of",
                   lambda: build_dataset(data, with_depth=False, split="holdout"))


def test_a_feature_cache_is_refused_for_flipped_clips():
    from gfcore.train.data import check_feature_cache

    data = OmegaConf.create({"kind": "dfot_re10k", "horizontal_flip_prob": 0.5})
    one_line_error(ValueError, r"^teacher.cache holds features of unflipped frames; data.horizontal_flip_prob=0.5",
                   lambda: check_feature_cache(data, cached=True))
    check_feature_cache(data, cached=False)
    check_feature_cache(OmegaConf.create({"kind": "dfot_re10k", "horizontal_flip_prob": 0.0}), cached=True)
    check_feature_cache(OmegaConf.create({"kind": "re10k"}), cached=True)


def test_train_refuses_a_cache_for_flipped_clips_before_writing(tmp_path):
    """The trainer checks it before the run folder is touched: nothing is written or moved."""
    from gfcore.train import load_config, train

    run = tmp_path / "run"
    cfg = load_config(["model=dfot_tiny", "train.objective=dfot", "data=dfot_re10k", "data.root=/unused",
                       "teacher=vggt", "teacher.cache=/unused", f"out_dir={run}", "train.device=cpu"])
    with pytest.raises(ValueError, match="^teacher.cache holds features of unflipped frames"):
        train(cfg)
    assert not run.exists()


def test_build_dfot_data_reads_the_training_split_and_its_video_choice(made_root):
    """build_dfot_data without a split reads training_16; maximize_training_data keeps the videos of
    >= clip_frames frames (stair: 5), off only those of >= the 1 + 3 x 2 = 7-frame span. Clips per
    video: max(L - 7 + 1, 1), so 24 + 3 + 11 + 38 (+ 1 for stair)."""
    from gfcore.train.dfot_data import DFoTTrainData, build_dfot_data

    for maximize, keys, clips in ((True, ["hall", "kitchen", "loft", "porch", "stair"], 77),
                                  (False, ["hall", "kitchen", "loft", "porch"], 76)):
        data = build_dfot_data(data_config(made_root, maximize_training_data=maximize))
        assert isinstance(data, DFoTTrainData) and data.resolution == RES
        schedule = data.clips.schedule
        assert [data.clips.files.keys[v] for v in schedule.videos] == keys, maximize
        assert schedule.num_clips == clips, maximize
        assert data[0]["frames"].shape == (MAX_FRAMES, 3, RES, RES)


def test_step_batcher_defaults_to_the_whole_batch_and_slices_down_to_one_sample(made_root):
    """DFoTStepBatcher built without rank / world_size gives the whole global batch: row b of step
    s is clip 6 s + b of the stream (subepochs of 20: item (6 s + b) % 20 of subepoch (6 s + b) // 20)
    with the draws of item_rng(seed, s, b); a rank's slice may be a single sample; a batch size the
    world size does not divide is refused."""
    from gfcore.train.dfot_data import DFoTStepBatcher

    dataset = build_dataset(data_config(made_root), with_depth=False)
    clips = dataset.clips
    batch = DFoTStepBatcher(dataset, MAX_FRAMES, 6, 3, rays=False).batch(3)
    assert batch["frames"].shape == (6, MAX_FRAMES, 3, RES, RES) and len(batch["key"]) == 6
    for b in range(6):
        subepoch, index = divmod(18 + b, SUBDATASET)
        item = clips.item(subepoch, index, item_rng(3, 3, b))
        assert batch["key"][b] == item["key"] and batch["augmentations"][b] == item["augmentations"], b
        assert torch.equal(batch["frames"][b], item["videos"] * 2 - 1), b
        assert torch.equal(batch["frame_indices"][b], item["frame_indices"]), b
    single = DFoTStepBatcher(dataset, MAX_FRAMES, 2, 3, rays=False, rank=1, world_size=2).batch(4)
    item = clips.item(0, 9, item_rng(3, 4, 1))  # sample 1 of step 4 with 2 clips a step: clip 9
    assert single["frames"].shape == (1, MAX_FRAMES, 3, RES, RES) and single["key"] == [item["key"]]
    assert torch.equal(single["frames"][0], item["videos"] * 2 - 1)
    with pytest.raises(ValueError, match=r"^train\.batch_size=5 must be divisible by the world size 2$"):
        DFoTStepBatcher(dataset, MAX_FRAMES, 5, 3, rays=False, rank=0, world_size=2)


# ---------------------------------------------------------------------------------------------
# DFoTFiles and DFoTTrainingClips, edge by edge (data/dfot_*.py mutation survivors)
# ---------------------------------------------------------------------------------------------

def layout(root, res, lengths, names=None):
    """{root}/training_{res}/ with empty video files (never read here) and float64 camera rows."""
    frame_dir, pose_dir = os.path.join(root, f"training_{res}"), os.path.join(root, "training_poses")
    os.makedirs(frame_dir, exist_ok=True)
    os.makedirs(pose_dir, exist_ok=True)
    for n, (name, length) in enumerate(zip(names or [f"{k}.npz" for k in lengths], lengths.values())):
        os.makedirs(os.path.dirname(os.path.join(frame_dir, name)), exist_ok=True)
        open(os.path.join(frame_dir, name), "wb").close()
        torch.save(camera_rows(length, n).double(), os.path.join(pose_dir, f"{os.path.splitext(os.path.basename(name))[0]}.pt"))
    return frame_dir, pose_dir


def test_dfot_files_walks_subfolders_and_checks_pose_files(tmp_path):
    """DFoTFiles' defaults (split training, 256 px); videos in subfolders are found, other and
    hidden files are not; rows come back float32; a pose file that is not [T, 18] camera rows
    is refused naming the file, what it held, and the 16-D pose hint only for 16 numbers."""
    from gfcore.data.dfot_files import DFoTFiles

    root = str(tmp_path / "root")
    frame_dir, pose_dir = layout(root, 256, {"a": 20, "b": 16}, ["a.npz", "sub/b.mp4"])
    for name in ("notes.txt", "._a.npz", ".c.mp4"):
        open(os.path.join(frame_dir, name), "wb").close()
    files = DFoTFiles(root)
    assert (files.split, files.resolution, files.frame_dir) == ("training", 256, frame_dir)
    assert files.keys == ["a", "b"] and files.lengths == [20, 16]
    assert files.frame_paths == [os.path.join(frame_dir, "a.npz"), os.path.join(frame_dir, "sub", "b.mp4")]
    rows = files.rows(0)
    assert rows.dtype == torch.float32 and torch.equal(rows, camera_rows(20, 0))

    path = files.pose_paths[0]
    assert path == os.path.join(pose_dir, "a.pt")
    head = rf"^{re.escape(path)}: expected camera rows \[T, 18\] \(fx fy cx cy 0 0 \+ 3x4 world-to-camera\), got "
    for content, tail in (({"rows": camera_rows(3, 0)}, r"dict$"), ([[0.0] * 18], r"list$"),
                          (torch.zeros(10, 17), r"\[10, 17\]$"), (torch.zeros(0, 18), r"\[0, 18\]$"),
                          (torch.zeros(16), r"\[16\] \(a DFoT 16-D pose; the file must hold the camera rows it is "
                                            r"made from\)$")):
        torch.save(content, path)
        one_line_error(DataError, head + tail, lambda: files.rows(0))
    torch.save(np.zeros((3, 18), np.float32), path)  # numpy arrays are not in weights_only's allowlist
    one_line_error(DataError, rf"^{re.escape(path)}: cannot load poses \(UnsafeFileError: pose file "
                   rf"'{re.escape(path)}': refused, not loaded", lambda: files.rows(0))
    with open(path, "wb") as handle:
        handle.write(b"not a pickle")
    with pytest.raises(DataError, match=rf"^{re.escape(path)}: cannot load poses \(UnpicklingError: "):
        files.rows(0)  # (torch's message runs over several lines)

    empty = str(tmp_path / "empty")
    frame_dir, _ = layout(empty, 256, {})
    one_line_error(DataError, rf"^{re.escape(frame_dir)}: no videos \(\*\.mp4 or \*\.npz\) in it$",
                   lambda: DFoTFiles(empty))


def test_dfot_npz_frames_and_their_refusals(tmp_path):
    """.npz frames: whole-number float indices read those frames; an object array (pickles stay
    off), a 3-D or a float32 'video' and non-square frames are refused naming the file."""
    from gfcore.data.dfot_files import DFoTFiles

    root = str(tmp_path / "root")
    frame_dir, _ = layout(root, 8, {"v": 6})
    npz = os.path.join(frame_dir, "v.npz")
    video = frames_for(6, 0, 8).transpose(0, 3, 1, 2).copy()
    np.savez(npz, video=video)
    files = DFoTFiles(root, resolution=8)
    assert np.array_equal(files.frames(0, np.array([4.0, 1.0])), video[[4, 1]].transpose(0, 2, 3, 1))
    name = re.escape(npz)
    cases = [
        (np.array([None, 1], dtype=object),
         r"cannot read the 'video' array \(ValueError: Object arrays cannot be loaded when allow_pickle=False\)$"),
        (video[:, :, :, 0], r"expected 'video' uint8 \[T, 3, H, W\], got uint8 \[6, 3, 8\]$"),
        (video.astype(np.float32), r"expected 'video' uint8 \[T, 3, H, W\], got float32 \[6, 3, 8, 8\]$"),
        (np.zeros((6, 3, 8, 10), np.uint8), r"frames are 8x10x3, expected 8x8x3 \(data.resolution"),
    ]
    for content, tail in cases:
        np.savez(npz, video=content)
        one_line_error(DataError, rf"^{name}: " + tail, lambda: files.frames(0, [0, 1]))


def test_training_clips_defaults_and_refusals(tmp_path):
    """DFoTTrainingClips' defaults are DFoT's RE10K numbers (16 frames, stride 10 growing by 1,
    videos of >= 16 frames kept, probabilities 0.5 / 0.1 / 0.5); a subdataset of one clip is
    fine, of none refused; each bad probability is named; stream positions split by the
    subdataset size and negative ones are refused."""
    from gfcore.data.dfot_clips import DFoTTrainingClips
    from gfcore.data.dfot_files import DFoTFiles

    root = str(tmp_path / "root")
    layout(root, 8, {"a": 20, "b": 16, "c": 12})
    files = DFoTFiles(root, resolution=8)
    clips = DFoTTrainingClips(files, subdataset_size=3)
    s = clips.schedule
    assert (s.max_frames, s.frame_skip, s.frame_skip_increase, s.subdataset_size) == (16, 10, 1, 3)
    assert s.videos == [0, 1] and clips.max_frames == 16 and len(clips) == 3
    assert clips.probabilities == dict(horizontal_flip_prob=0.5, back_and_forth_prob=0.1, reverse_prob=0.5)
    assert len(DFoTTrainingClips(files, subdataset_size=1)) == 1
    one_line_error(ValueError, r"^data.subdataset_size must be >= 1 or null, got 0$",
                   lambda: DFoTTrainingClips(files, subdataset_size=0))
    for name, bad in (("horizontal_flip_prob", 1.5), ("back_and_forth_prob", -0.1)):
        one_line_error(ValueError, rf"^data.{name} must lie in \[0, 1\], got {bad}$",
                       lambda: DFoTTrainingClips(files, subdataset_size=3, **{name: bad}))
    assert clips.locate(7) == (2, 1)
    one_line_error(IndexError, r"^stream position -1 is negative$", lambda: clips.locate(-1))
