"""`gfcore sample` and `gfcore eval --protocol` for DFoT models, on the CPU: a dfot_tiny run
trained with GF on the built-in scenes (killed and resumed), sampled with DDIM and history
guidance, with a reduced dfot256 protocol, and evaluated; a release-format checkpoint sampled
and evaluated on a RealEstate10K folder in DFoT's layout; every kind of bad input refused in one
line with nothing written; the VideoDiT sampler's progress lines."""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gfcore.cli import main
from gfcore.data.dfot_re10k import frames_to_unit, normalize, pose_from_rows, unnormalize
from gfcore.data.video import read_video, write_video
from gfcore.sample import dfot_protocol
from gfcore.sample.dfot_guidance import DFoTHistoryGuidance
from gfcore.sample.dfot_run import model_config, protocol_selection
from gfcore.train import load_config, train
from test_train_dfot import dfot_overrides
from trainer_helpers import generate_tiny_data, one_torch_thread, tiny_overrides  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

REDUCED = ["--protocol", "dfot256", "--num-frames", "12", "--max-tokens", "4", "--keyframe-density", "0.34",
           "--steps", "2"]
TINY_RELEASE = ["--model", "dfot_tiny", "--model-resolution", "16", "--model-frames", "4"]


# ------------------------------------------------------------------------------------------ fixtures


def _fingerprint(folder: Path) -> list:
    return sorted([str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in folder.rglob("*") if p.is_file() and p.name != ".made")


def _made_once(tmp_path_factory, name: str, make) -> Path:
    """make(folder) into a new temporary folder. With GFCORE_TEST_CACHE set, once into that folder
    and reused by later test sessions: scripts/mutation.py sets it for a row whose mutants cannot
    change how these fixtures are made (the sampler's modules; the fixtures train and write data).
    A session that changed the folder (a mutant writing into a run's data root) leaves a
    fingerprint that no longer matches, so the next session makes it again."""
    cache = os.environ.get("GFCORE_TEST_CACHE")
    if not cache:
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder, marker = Path(cache) / name, Path(cache) / name / ".made"
    if not marker.exists() or json.loads(marker.read_text()) != _fingerprint(folder):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        make(folder)
        marker.write_text(json.dumps(_fingerprint(folder)))
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The built-in scenes: train 4 clips x 8 frames, test 3 clips x 12 frames, 16 px."""
    from gfcore.data.synthetic import generate

    def make(folder):
        generate_tiny_data(str(folder))
        generate(str(folder), num_clips=3, num_frames=12, resolution=16, seed=1, task="camera", split="test")

    return str(_made_once(tmp_path_factory, "dfot_cli_data", make))


@pytest.fixture(scope="module")
def dfot_run(tmp_path_factory, data_root):
    """dfot_tiny with GF (pointmap teacher), 20 steps: killed after step 11, resumed from step 10."""
    from gfcore.train.trainer import CrashForTesting

    def make(folder):
        torch.set_num_threads(1)
        overrides = dfot_overrides(data_root, str(folder / "run"), "train.steps=20", "train.ckpt_every=10",
                                   "train.lr=1e-3")
        with pytest.raises(CrashForTesting):
            train(load_config(overrides + ["train.crash_after_step=11"]))
        assert train(load_config(overrides))["resumed_from"] == 10

    return str(_made_once(tmp_path_factory, "dfot_cli_run", make) / "run")


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory, data_root):
    def make(folder):
        train(load_config(tiny_overrides(data_root, str(folder / "run"), "teacher=none", "train.steps=2")))

    return str(_made_once(tmp_path_factory, "dit_cli_run", make) / "run")


@pytest.fixture
def spy(monkeypatch):
    """Records every dfot_long_rollout call (its arguments and result) and passes it through."""
    calls = []
    real = dfot_protocol.dfot_long_rollout

    def recorder(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "out": out.clone()})
        return out

    monkeypatch.setattr(dfot_protocol, "dfot_long_rollout", recorder)
    return calls


def _tiny_uvit(seed: int, **changes):
    from gfcore.models.build import build_backbone

    node = model_config("dfot_tiny", 16, 4)
    node.update(changes)
    torch.manual_seed(seed)
    return build_backbone(node)


def _release(path, model, ema_offset=None, drop=None):
    """A Lightning-style release file of `model` (and its EMA list = weights + offset)."""
    assert drop is None or drop in model.state_dict()
    state = {f"diffusion_model.model.{k}": v.clone() for k, v in model.state_dict().items() if k != drop}
    content = {"state_dict": state, "epoch": 1}
    if ema_offset is not None:
        content["optimizer_states"] = [{"ema": [p.detach() + ema_offset for p in model.parameters()]}]
    torch.save(content, path)
    return str(path)


def _rows(K, c2w, size):
    """Camera-file rows [T, 18] (normalised fx fy cx cy, 0 0, world-to-camera 3x4) of pixel K, c2w."""
    w2c = np.linalg.inv(c2w)[:, :3, :4].reshape(len(c2w), 12)
    intr = np.array([K[0, 0] / size, K[1, 1] / size, K[0, 2] / size, K[1, 2] / size, 0.0, 0.0])
    return torch.from_numpy(np.concatenate([np.tile(intr, (len(c2w), 1)), w2c], 1)).float()


@pytest.fixture(scope="module")
def re10k_root(tmp_path_factory):
    """RealEstate10K in DFoT's layout: test_256/{key}.mp4 (16 px) and test_poses/{key}.pt rows
    [T, 18]; 4 videos of 10, 7 (too short for 8 frames), 12 and 9 frames; and `bad`: 24 px frames."""
    from gfcore.data.synthetic.generate import generate_clip

    def make(root):
        for name, size in (("good", 16), ("bad", 24)):
            for index, length in enumerate((10, 7, 12, 9)):
                clip = generate_clip(3, index, length, size)
                key = f"{index:04x}cafe"
                (root / name / "test_256").mkdir(parents=True, exist_ok=True)
                (root / name / "test_poses").mkdir(parents=True, exist_ok=True)
                write_video(str(root / name / "test_256" / f"{key}.mp4"), clip["frames"])
                torch.save(_rows(clip["intrinsics"], clip["c2w"], size), root / name / "test_poses" / f"{key}.pt")

    return _made_once(tmp_path_factory, "re10k", make)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ------------------------------------------------------------------------------------ a gfcore run


def test_sample_a_dfot_run_with_ddim_and_history_guidance(tmp_path, dfot_run, data_root, spy, capsys):
    """History guidance flags map onto DFoTHistoryGuidance; the clip's first frame goes in as the
    trainer normalises frames, the poses as the trainer converts the cameras; each clip's frames
    with the run's 4-frame window (keyframe_density 1); the output is unnormalised."""
    from gfcore.data.geometry import cameras_to_dfot_poses
    from gfcore.models.dfot import ray_encoding
    from gfcore.train.data import build_dataset
    from gfcore.models.build import dfot_frames

    out = tmp_path / "s"
    assert main(["sample", dfot_run, "--out", str(out), "--steps", "3", "--num-clips", "2", "--seed", "5",
                 "--history-guidance", "stabilized_vanilla", "--history-scale", "2.5",
                 "--stabilization-level", "0.05", "--progress-every", "1"]) == 0
    assert len(spy) == 2
    cfg = load_config(dfot_overrides(data_root, "/unused"))
    dataset = build_dataset(cfg.data, with_depth=False, split="train", generate_missing=False)
    for index, call in enumerate(spy):
        kw, (model, diffusion, context, conditions, process, num_frames) = call["kwargs"], call["args"]
        assert kw["key_guidance"] == DFoTHistoryGuidance(name="stabilized_vanilla", scale=2.5, stabilization_level=0.05)
        assert (kw["steps"], kw["max_tokens"], kw["keyframe_density"], num_frames) == (3, 4, 1.0, 8)
        clip = dataset[index]
        assert torch.equal(context, dfot_frames(clip["frames"][None, :1]))
        assert torch.equal(conditions, cameras_to_dfot_poses(clip["intrinsics"], clip["c2w"], 16, 16)[None])
        assert torch.equal(process(conditions[:, :4]), ray_encoding(conditions[:, :4], 16, 16))
        assert type(model).__name__ == "UViT3DPose" and not model.training
        # the written video is the unnormalised rollout (H.264 of 16 px noise-like frames is lossy:
        # far nearer to it than to the rollout read as [0, 1] or [-1, 1] values)
        written = torch.from_numpy(read_video(str(out / f"{clip['key']}.mp4"))).float()[1:]
        def distance(unit):
            return (written - (unit.clamp(0, 1) * 255).round().permute(0, 2, 3, 1)).abs().mean()

        v = call["out"][0, 1:]
        assert 2 * distance(unnormalize(v)) < min(distance(v), distance((v + 1) / 2))
        assert (out / f"{clip['key']}.gif").is_file()
    from gfcore.io.checkpoint_file import read_checkpoint

    final = read_checkpoint(os.path.join(dfot_run, "final.pt"))  # EMA weights (the run's sample.use_ema)
    assert any(not torch.equal(final["ema"][k], final["model"][k]) for k in final["ema"])
    assert all(torch.equal(v, final["ema"][k]) for k, v in spy[0]["args"][0].state_dict().items())
    manifest = json.loads((out / "sample.json").read_text())
    assert (manifest["method"], manifest["steps"], manifest["context_frames"], manifest["seed"]) == ("ddim", 3, 1, 5)
    assert manifest["settings"]["key_guidance"]["scale"] == 2.5
    err = capsys.readouterr().err
    assert "clip 2/2 · keyframes · step " in err
    # a rerun with the same seed samples the same clips
    first = [c["out"] for c in spy]
    spy.clear()
    assert main(["sample", dfot_run, "--out", str(tmp_path / "again"), "--steps", "3", "--num-clips", "2",
                 "--seed", "5", "--history-guidance", "stabilized_vanilla", "--history-scale", "2.5",
                 "--stabilization-level", "0.05"]) == 0
    assert all(torch.equal(a, c["out"]) for a, c in zip(first, spy))
    spy.clear()
    assert main(["sample", dfot_run, "--out", str(tmp_path / "raw"), "--steps", "1", "--num-clips", "1",
                 "--weights", "raw"]) == 0
    assert all(torch.equal(v, final["model"][k]) for k, v in spy[0]["args"][0].state_dict().items())


def test_sample_with_a_reduced_dfot256_protocol(tmp_path, dfot_run, spy, capsys):
    """--protocol dfot256 takes the protocol's guidance and interpolation settings; its fields
    are overridden from the command line; progress covers both stages."""
    assert main(["sample", dfot_run, "--out", str(tmp_path / "p"), "--split", "test", "--num-clips", "2",
                 *REDUCED]) == 0
    assert len(spy) == 2
    kw = spy[0]["kwargs"]
    assert spy[0]["args"][5] == 12 and spy[0]["args"][3].shape == (1, 12, 16)
    assert (kw["max_tokens"], kw["keyframe_density"], kw["steps"], kw["interp_max_batch"]) == (4, 0.34, 2, 4)
    assert kw["key_guidance"] == DFoTHistoryGuidance(name="stabilized_vanilla", scale=4.0, stabilization_level=0.02)
    assert kw["interp_guidance"] == DFoTHistoryGuidance(name="vanilla", scale=1.5)
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("clip 1/2 · keyframes · step ") for line in err)
    last = [line for line in err if line.startswith("clip 2/2 · interpolation · step ")][-1]
    done, total = last.rsplit(" ", 1)[1].split("/")
    assert done == total  # the last step is always reported
    # the interpolation guidance has its own flags; the protocol's max_tokens must fit the model
    spy.clear()
    assert main(["sample", dfot_run, "--out", str(tmp_path / "q"), "--split", "test", "--num-clips", "1", *REDUCED,
                 "--interp-history-guidance", "fractional", "--interp-history-scale", "2"]) == 0
    assert spy[0]["kwargs"]["interp_guidance"] == DFoTHistoryGuidance(name="fractional", scale=2.0)
    assert spy[0]["kwargs"]["key_guidance"].name == "stabilized_vanilla"
    capsys.readouterr()
    assert main(["sample", dfot_run, "--out", str(tmp_path / "r"), "--protocol", "dfot256"]) == 2
    _one_line_error(capsys, "max_tokens=16", "exactly 4 frames", "--max-tokens 4")
    assert not (tmp_path / "r").exists()


def test_eval_protocol_on_a_run(tmp_path, dfot_run, spy, capsys):
    """gfcore eval --protocol: lossless generated clips (the unnormalised rollout, the context frame
    the data's own), the reference clips, the report with the context frame left out; --resume
    keeps what was sampled; an existing evaluation is not overwritten."""
    from gfcore.sample.sampler import to_uint8
    from gfcore.train.data import build_dataset

    out = tmp_path / "eval"
    args = ["eval", "--run", dfot_run, "--out", str(out), "--num-clips", "2", *REDUCED]
    recorder = dfot_protocol.dfot_long_rollout

    def drifting(*a, **k):  # a rollout whose context frame came back changed: the given one is written
        video = recorder(*a, **k).clone()
        video[:, 0] += 0.5
        return video

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dfot_protocol, "dfot_long_rollout", drifting)
        assert main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["details"]["clips"] == 2 and report["inputs"]["context_frames"] == 1
    assert np.isfinite(report["metrics"]["PSNR"]) and np.isfinite(report["metrics"]["SSIM"])
    assert len(report["details"]["curves"]["psnr"]) == 11  # 12 frames, the given one left out
    assert any("dfot256" in note for note in report["notes"])
    names = sorted(p[:-4] for p in os.listdir(out / "generated") if p.endswith(".npz"))
    assert len(names) == 2 and len(spy) == 2
    for name, call in zip(names, spy):
        generated = np.load(out / "generated" / f"{name}.npz")["video"]
        reference = np.load(out / "reference" / f"{name}.npz")["video"]
        expected = (unnormalize(call["out"][0]).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert np.array_equal(generated[1:], expected[1:].numpy())
        assert np.array_equal(generated[0], reference[0])  # the given frame, exactly
        assert (out / "generated" / "videos" / f"{name}.mp4").is_file()
    manifest = json.loads((out / "generated" / "sample.json").read_text())
    assert manifest["clips"] == names and manifest["method"] == "ddim"
    from gfcore.io.checkpoint_file import read_checkpoint
    from omegaconf import OmegaConf

    run_cfg = OmegaConf.create(read_checkpoint(os.path.join(dfot_run, "final.pt"))["config"])
    run_cfg.data.clip_frames = 12
    dataset = build_dataset(run_cfg.data, with_depth=False, split="test", generate_missing=False)
    assert np.array_equal(np.load(out / "reference" / f"{dataset[0]['key']}.npz")["video"],
                          to_uint8(dataset[0]["frames"][:12]))
    err = capsys.readouterr().err
    assert "metrics · clip 2/2" in err and "clip 2/2 · interpolation · step " in err

    # an existing evaluation: refused without --resume / --overwrite; --resume samples nothing again
    before = (out / "results.json").read_text()
    spy.clear()
    assert main(args) == 2
    _one_line_error(capsys, str(out), "--resume", "--overwrite")
    assert (out / "results.json").read_text() == before and not spy
    os.remove(out / "generated" / f"{names[1]}.npz")  # as if killed during the second clip
    assert main(args + ["--resume"]) == 0
    assert len(spy) == 1 and json.loads((out / "results.json").read_text())["metrics"] == report["metrics"]
    capsys.readouterr()
    assert main(args + ["--resume", "--seed", "9"]) == 2
    _one_line_error(capsys, "other settings (changed: seed")


# ------------------------------------------------------------------------------- released weights


def test_protocol_selection_is_the_authors_validation_choice():
    """As BaseAdvancedVideoDataset picks validation clips with num_eval_videos (their code, run here
    with Python's global random as they do)."""
    lengths, n = [300, 256, 100, 999, 257, 412, 256, 700], 256

    def authors(num_eval_videos):
        state = random.getstate()
        try:
            kept = [length for length in lengths if length >= n]
            sizes = np.cumsum([max(length - n + 1, 1) for length in kept]).tolist()
            random.seed(0)
            remap = [random.randrange(s, e) for s, e in zip([0] + sizes[:-1], sizes)]
            random.shuffle(remap)
            out = []
            import bisect
            for idx in remap[:num_eval_videos]:
                video = bisect.bisect_right(sizes, idx)
                out.append((video, idx - (sizes[video - 1] if video else 0)))
            videos = [i for i, length in enumerate(lengths) if length >= n]
            return [(videos[v], start) for v, start in out]
        finally:
            random.setstate(state)

    assert protocol_selection(lengths, n, 100) == authors(100)
    assert protocol_selection(lengths, n, 3) == authors(3)
    assert len(protocol_selection(lengths, n, None)) == 7
    assert protocol_selection(lengths, n, None, first_frames=True) == [(i, 0) for i in (0, 1, 3, 4, 5, 6, 7)]
    assert all(start + n <= lengths[v] for v, start in protocol_selection(lengths, n, None))


def test_sample_and_eval_a_release_checkpoint(tmp_path, re10k_root, spy, capsys):
    """--checkpoint with a Lightning-style file of a tiny UViT3DPose: its EMA weights by default
    (raw with --weights raw); clips of DFoT's layout as the authors' validation takes them (videos
    shorter than num_frames left out), frames normalised as DFoT does, poses its camera rows."""
    released = _tiny_uvit(seed=7)
    path = _release(tmp_path / "dfot.ckpt", released, ema_offset=0.25)
    root = re10k_root / "good"
    out = tmp_path / "s"
    assert main(["sample", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(root), "--out", str(out),
                 "--num-frames", "8", "--steps", "2", "--num-clips", "3"]) == 0
    keys = sorted(p.name[:-4] for p in (root / "test_256").iterdir())
    chosen = protocol_selection([10, 7, 12, 9], 8, 3)
    assert len(spy) == 3 and 1 not in [v for v, _ in chosen]
    for call, (video, start) in zip(spy, chosen):
        model, _, context, conditions, _, num_frames = call["args"]
        frames = read_video(str(root / "test_256" / f"{keys[video]}.mp4"))[start:start + 8]
        assert torch.equal(context, normalize(frames_to_unit(frames))[None, :1])
        rows = torch.load(root / "test_poses" / f"{keys[video]}.pt")
        assert torch.equal(conditions, pose_from_rows(rows)[None, start:start + 8]) and num_frames == 8
        for (name, p), q in zip(model.named_parameters(), released.parameters()):
            assert torch.equal(p, q + 0.25), name
    assert json.loads((out / "sample.json").read_text())["clips"] == [keys[v] for v, _ in chosen]
    spy.clear()
    assert main(["sample", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(root),
                 "--out", str(tmp_path / "raw"),
                 "--num-frames", "8", "--steps", "1", "--num-clips", "1", "--weights", "raw"]) == 0
    assert all(torch.equal(p, q) for p, q in zip(spy[0]["args"][0].parameters(), released.parameters()))

    evald = tmp_path / "eval"
    assert main(["eval", "--protocol", "dfot256", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(root),
                 "--out", str(evald), "--num-clips", "2", "--num-frames", "8", "--max-tokens", "4",
                 "--keyframe-density", "0.5", "--steps", "2"]) == 0
    report = json.loads((evald / "results.json").read_text())
    assert report["details"]["clips"] == 2 and report["inputs"]["context_frames"] == 1
    name = keys[chosen[0][0]]
    start = chosen[0][1]
    assert np.array_equal(np.load(evald / "reference" / f"{name}.npz")["video"],
                          read_video(str(root / "test_256" / f"{name}.mp4"))[start:start + 8])


# ------------------------------------------------------------------------------------- bad input


def test_bad_checkpoints_are_refused_in_one_line(tmp_path, re10k_root, dfot_run, capsys):
    from gfcore.io.checkpoint_file import read_checkpoint, write_checkpoint

    root = str(re10k_root / "good")
    out = tmp_path / "out"
    release = ["--data-root", root, "--out", str(out), "--num-frames", "8", "--steps", "1"]
    # another architecture: a UViT3DPose of other widths, and a state dict of something else
    other = _release(tmp_path / "wide.ckpt", _tiny_uvit(seed=0, channels=[32, 32, 48, 96]))
    assert main(["sample", "--checkpoint", other, *TINY_RELEASE, *release]) == 2
    _one_line_error(capsys, other, "mis-shaped keys",
                    "expected a DFoT checkpoint of --model dfot_tiny (16 px, 4 frames)")
    alien = tmp_path / "alien.pt"
    torch.save({"encoder.weight": torch.zeros(4, 4), "decoder.bias": torch.zeros(4)}, alien)
    assert main(["sample", "--checkpoint", str(alien), *TINY_RELEASE, *release]) == 2
    _one_line_error(capsys, str(alien), "missing keys", "unexpected keys")
    # a key missing
    short = _release(tmp_path / "short.ckpt", _tiny_uvit(seed=0), drop="noise_level_pos_embedding.timesteps.freqs")
    assert main(["sample", "--checkpoint", short, *TINY_RELEASE, *release]) == 2
    _one_line_error(capsys, short, "1 missing keys", "noise_level_pos_embedding.timesteps.freqs")
    # truncated files: a release and a run's final.pt
    whole = _release(tmp_path / "whole.ckpt", _tiny_uvit(seed=0))
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(open(whole, "rb").read()[:5000])
    assert main(["sample", "--checkpoint", str(cut), *TINY_RELEASE, *release]) == 2
    _one_line_error(capsys, str(cut), "could not be read", "truncated or corrupt")
    final = tmp_path / "final.pt"
    final.write_bytes(open(os.path.join(dfot_run, "final.pt"), "rb").read()[:20000])
    assert main(["sample", str(final), "--out", str(out)]) == 2
    _one_line_error(capsys, str(final), "cannot be read as a gfcore checkpoint")
    # a final.pt lacking a key; a gfcore checkpoint passed as a release
    state = read_checkpoint(os.path.join(dfot_run, "final.pt"))
    del state["ema"]
    lacking = tmp_path / "lacking" / "final.pt"
    write_checkpoint(state, str(lacking))
    assert main(["sample", str(lacking.parent), "--out", str(out)]) == 2
    _one_line_error(capsys, str(lacking), "lacks the keys ['ema']")
    assert main(["sample", "--checkpoint", os.path.join(dfot_run, "final.pt"), *TINY_RELEASE, *release]) == 2
    _one_line_error(capsys, "is a gfcore trainer checkpoint", f"gfcore sample {dfot_run}")
    # eval: the same refusals
    assert main(["eval", "--protocol", "dfot256", "--checkpoint", other, *TINY_RELEASE, "--data-root", root,
                 "--out", str(out), "--max-tokens", "4", "--num-frames", "8"]) == 2
    _one_line_error(capsys, other, "mis-shaped keys")
    assert not out.exists()


def test_frames_of_the_wrong_size_and_wrong_methods_are_refused(tmp_path, re10k_root, dfot_run, dit_run, capsys):
    path = _release(tmp_path / "dfot.ckpt", _tiny_uvit(seed=0))
    out = tmp_path / "out"
    bad = re10k_root / "bad"
    assert main(["sample", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(bad), "--out", str(out),
                 "--num-frames", "8"]) == 2
    err = _one_line_error(capsys, "frames are 24x24", "takes 16x16")
    assert str(bad / "test_256") in err
    assert main(["eval", "--protocol", "dfot256", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(bad),
                 "--out", str(out), "--num-frames", "8", "--max-tokens", "4"]) == 2
    _one_line_error(capsys, "frames are 24x24")
    assert main(["sample", "--checkpoint", path, *TINY_RELEASE, "--data-root", str(re10k_root / "good"),
                 "--out", str(out), "--num-frames", "13"]) == 2
    _one_line_error(capsys, "none of the 4 videos", "13 frames")
    assert main(["sample", dfot_run, "--out", str(out), "--method", "euler"]) == 2
    _one_line_error(capsys, "--method euler", "ddim")
    assert main(["sample", dfot_run, "--out", str(out), "--history-guidance", "sideways"]) == 2
    _one_line_error(capsys, "sideways")
    assert main(["sample", dit_run, "--out", str(out), "--method", "ddim"]) == 2
    _one_line_error(capsys, "--method ddim", "VideoDiT")
    assert main(["sample", dit_run, "--out", str(out), "--protocol", "dfot256"]) == 2
    _one_line_error(capsys, "--protocol", "VideoDiT")
    assert main(["eval", "--protocol", "dfot256", "--run", dit_run, "--out", str(out)]) == 2
    _one_line_error(capsys, "VideoDiT")
    assert not out.exists()


@pytest.mark.parametrize("command,run_flag", [(["sample"], []), (["eval", "--protocol", "dfot256"], ["--run"])])
def test_a_run_or_a_checkpoint_with_its_model_is_required(tmp_path, dit_run, command, run_flag, capsys):
    """Both commands, one check (dfot_run.check_source_arguments): neither or both sources, and
    --checkpoint without --model, are usage errors (exit code 2) naming the fix."""
    out = ["--out", str(tmp_path / "out")]
    for argv, needle in ((out, "give a run"), ([*run_flag, dit_run, "--checkpoint", "x.ckpt", "--model", "dfot_tiny",
                                                *out], "not both"),
                         (["--checkpoint", "x.ckpt", *out], "--checkpoint needs --model")):
        with pytest.raises(SystemExit) as exited:
            main([*command, *argv])
        assert exited.value.code == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_videodit_run_before_loading_its_weights(tmp_path, dit_run, monkeypatch, capsys):
    from gfcore.sample import dfot_run as module

    loaded = []
    monkeypatch.setattr(module, "load_run_model", lambda *args, **kwargs: loaded.append(args))
    assert main(["eval", "--protocol", "dfot256", "--run", dit_run, "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, os.path.join(dit_run, "final.pt"), "model.arch dit", "--protocol evaluates DFoT models")
    assert loaded == []


def test_weights_run_follows_the_runs_sample_use_ema(dit_run, monkeypatch):
    """--weights run: the run's sample.use_ema (default true); ema and raw override it."""
    import argparse

    from gfcore.io.checkpoint_file import read_checkpoint
    from gfcore.sample import dfot_run as module

    picked = []
    monkeypatch.setattr(module, "load_run_model", lambda file, state, use_ema, device: picked.append(use_ema))
    state = read_checkpoint(os.path.join(dit_run, "final.pt"))
    for use_ema in (True, False):
        state["config"]["sample"]["use_ema"] = use_ema
        monkeypatch.setattr(module, "read_run", lambda path: ("final.pt", state))
        for weights in ("run", "ema", "raw"):
            args = argparse.Namespace(checkpoint=None, run=dit_run, weights=weights, device="cpu")
            assert isinstance(module.load_source(args), module.VideoDiTRun)
    assert picked == [True, True, False, False, True, False]


# -------------------------------------------------------------------------------------- progress


def test_videodit_sample_prints_windows(tmp_path, dit_run, capsys):
    assert main(["sample", dit_run, "--out", str(tmp_path / "s"), "--num-clips", "1", "--num-frames", "6",
                 "--steps", "2", "--progress-every", "1"]) == 0
    err = capsys.readouterr().err
    assert "clip 1/1 · window 1/" in err and "step 2/2" in err


def test_a_dfot_runs_own_sample_settings_are_its_ddim_steps():
    """sample.method=ddim in a DFoT run's config: its sample.steps are the plain sampling's
    default (the VideoDiT default method, euler / heun, says nothing for DFoT: 50); the
    finetuning experiment samples with DDIM 50; --steps still overrides."""
    import argparse

    from omegaconf import OmegaConf

    from gfcore.sample.dfot_run import add_dfot_arguments, resolve_settings, run_sample_steps
    from gfcore.train import load_config

    assert run_sample_steps(OmegaConf.create({"sample": {"method": "ddim", "steps": 20}})) == 20
    assert run_sample_steps(OmegaConf.create({"sample": {"method": "heun", "steps": 10}})) is None
    assert run_sample_steps(None) is None
    cfg = load_config(["experiment=re10k_gf_finetune", "train.init_from=/x", "data.root=/x", "teacher.checkpoint=/x"])
    assert (cfg.sample.method, run_sample_steps(cfg)) == ("ddim", 50)
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int)  # gfcore sample's own (shared with VideoDiT runs)
    add_dfot_arguments(parser)
    assert resolve_settings(parser.parse_args([]), 4, None, 20).steps == 20
    assert resolve_settings(parser.parse_args([]), 4, None, None).steps == 50
    assert resolve_settings(parser.parse_args(["--steps", "7"]), 4, None, 20).steps == 7


def test_a_run_on_dfot_re10k_data_samples_realestate10k_clips(re10k_root, tmp_path):
    """A DFoT run trained on data=dfot_re10k (DFoT's training stream) is sampled, like a re10k run,
    from its RealEstate10K root's own clips (ProtocolClips), not from the training stream; split
    train is DFoT's "training" folder, as the trainer reads it."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from gfcore.sample.dfot_run import DFoTSettings, ProtocolClips, clips_for

    root = tmp_path / "dfot_layout"
    for split, folder in (("test", "test"), ("train", "training")):
        shutil.copytree(re10k_root / "good" / "test_256", root / f"{folder}_256")
        shutil.copytree(re10k_root / "good" / "test_poses", root / f"{folder}_poses")
    settings = DFoTSettings(num_frames=8, num_context=1, max_tokens=4, keyframe_density=1.0, key_guidance=None,
                            interp_guidance=None, steps=1, interp_max_batch=None, sliding_context_len=None, protocol=None)
    for kind in ("dfot_re10k", "re10k"):
        source = SimpleNamespace(kind="run", run_cfg=OmegaConf.create({"data": {"kind": kind, "root": str(root)}}),
                                 frames=4, resolution=16)
        for split, folder in (("test", "test"), ("train", "training")):
            clips = clips_for(source, settings, None, split, 1)
            assert type(clips) is ProtocolClips and len(clips) == 1, (kind, split)
            assert clips.entries[0][1].startswith(str(root / f"{folder}_256")), (kind, split)


def test_a_videodit_run_on_dfot_re10k_data_is_refused_in_one_line(tmp_path, dit_run, capsys):
    from gfcore.io.checkpoint_file import read_checkpoint, write_checkpoint

    state = read_checkpoint(os.path.join(dit_run, "final.pt"))
    state["config"]["data"]["kind"] = "dfot_re10k"
    write_checkpoint(state, str(tmp_path / "run" / "final.pt"))
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "data.kind=dfot_re10k", "synthetic, re10k, minecraft")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- VideoDiT sample in full


def _dit_run_copy(tmp_path, dit_run, data_root, history):
    """dit_run with its data copied (a run of its own: nothing reaches the shared fixtures), the
    test split's depth files removed (the sampler reads no depth) and sample.history_guidance set."""
    from gfcore.io.checkpoint_file import read_checkpoint, write_checkpoint

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    for depth in (data / "test").glob("*.depth.npz"):
        depth.unlink()
    state = read_checkpoint(os.path.join(dit_run, "final.pt"))
    state["config"]["data"]["root"] = str(data)
    if history is None:
        del state["config"]["sample"]["history_guidance"]
    else:
        state["config"]["sample"]["history_guidance"] = history
    write_checkpoint(state, str(tmp_path / "run" / "final.pt"))
    return str(tmp_path / "run"), data


def test_videodit_sample_writes_its_rollouts_and_sample_json(tmp_path, dit_run, data_root, monkeypatch, capsys):
    """gfcore sample on a VideoDiT run, end to end: the rollout's arguments (frames: the clip's
    length on --path data, 64 on revisit; its own cameras repeated or the revisit turn; the
    seeded generator; history guidance from the run's config, interpolations resolved, each
    flag overriding its key), the files written into --out only, sample.json word for word and
    the lines printed; the refusals' words."""
    from gfcore.sample import run as run_module
    from gfcore.sample.sampler import HistoryGuidance, revisit_path

    calls = []
    real = run_module.rollout

    def recorder(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "rollout", recorder)
    monkeypatch.chdir(tmp_path)  # a file written without --out's folder lands here
    history = {"mode": "fractional", "scale": 1.5, "stabilization_level": 0.125,
               "fractional_level": "${sample.history_guidance.stabilization_level}"}
    run, data = _dit_run_copy(tmp_path / "copy", dit_run, data_root, history)
    keys = sorted(p.stem for p in (data / "test").glob("*.txt"))
    split_dir = os.path.join(str(data), "test")
    assert len(keys) == 3 and all((data / "test" / f"{k}.mp4").is_file() for k in keys)

    # --path data on the test split (12-frame clips), into a folder that exists already
    out = tmp_path / "out"
    out.mkdir()
    assert main(["sample", run, "--out", str(out), "--split", "test", "--num-clips", "2", "--steps", "3",
                 "--method", "euler", "--seed", "7", "--context-frames", "3", "--progress-every", "2",
                 "--history-guidance", "stabilized", "--history-scale", "3", "--stabilization-level", "0.25",
                 "--fractional-level", "0.75"]) == 0
    captured = capsys.readouterr()
    assert len(calls) == 2
    for args, kwargs in calls:
        assert args[2:6] == (12, 4, 3, 3) and args[6] == "euler" and args[1].shape[:2] == (1, 3)
        assert isinstance(kwargs["generator"], torch.Generator) and kwargs["generator"].initial_seed() == 7
        assert kwargs["history_guidance"] == HistoryGuidance("stabilized", 3.0, 0.25, 0.75)
        assert kwargs["c2w"].shape == (1, 12, 4, 4) and kwargs["intrinsics"].shape == (1, 12, 3, 3)
        assert not torch.allclose(kwargs["c2w"][0], revisit_path(12).float())
        assert "actions" not in kwargs
    expected = {"run": os.path.abspath(run), "split": "test", "path": "data", "clips": keys[:2], "context_frames": 3,
                "steps": 3, "method": "euler", "seed": 7, "data_split_dir": os.path.abspath(split_dir)}
    assert (out / "sample.json").read_text() == json.dumps(expected, indent=1)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{k}.{ext}" for k in keys[:2] for ext in ("gif", "mp4")] + ["sample.json"])
    assert len(read_video(str(out / f"{keys[1]}.mp4"))) == 12
    lines = captured.out.splitlines()
    assert lines[:2] == [f"wrote {out}/{k}.mp4 and .gif" for k in keys[:2]]
    assert (f"score them: gfcore eval --generated {out} --reference {split_dir} --geometry {split_dir} --out "
            f"EVAL_DIR   (the first 3 frames are the given context and are left out)") in lines
    assert "clip 2/2 · window 1/" in captured.err
    for step in (1, 2, 3):  # --progress-every 2 (the default, 10, prints steps 1 and 3 only)
        assert f"step {step}/3" in captured.err

    # --path revisit: 64 frames along the revisit turn, history guidance from the run's config
    calls.clear()
    revisit = tmp_path / "revisit"
    assert main(["sample", run, "--out", str(revisit), "--split", "test", "--num-clips", "1", "--steps", "1",
                 "--method", "euler", "--seed", "2", "--path", "revisit", "--no-progress"]) == 0
    captured = capsys.readouterr()
    (args, kwargs), = calls
    assert args[2] == 64 and args[4] == 2
    assert torch.equal(kwargs["c2w"], revisit_path(64).float()[None])
    assert kwargs["history_guidance"] == HistoryGuidance("fractional", 1.5, 0.125, 0.125)
    expected = {"run": os.path.abspath(run), "split": "test", "path": "revisit", "clips": [f"{keys[0]}_revisit"],
                "context_frames": 2, "steps": 1, "method": "euler", "seed": 2,
                "data_split_dir": os.path.abspath(split_dir)}
    assert json.loads((revisit / "sample.json").read_text()) == expected
    assert sorted(p.name for p in revisit.iterdir()) == [f"{keys[0]}_revisit.gif", f"{keys[0]}_revisit.mp4",
                                                         "sample.json"]
    assert captured.out.splitlines() == [f"wrote {revisit}/{keys[0]}_revisit.mp4 and .gif"]
    assert captured.err == ""

    # no clips: no reference folder to name; a run without sample.history_guidance
    run, _ = _dit_run_copy(tmp_path / "bare", dit_run, data_root, None)
    none = tmp_path / "none"
    assert main(["sample", run, "--out", str(none), "--split", "test", "--num-clips", "0", "--steps", "1"]) == 0
    manifest = json.loads((none / "sample.json").read_text())
    assert manifest["clips"] == [] and manifest["data_split_dir"] is None
    assert "score them" not in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["bare", "copy", "none", "out", "revisit"]

    # refusals, word for word where the words are the point
    assert main(["sample", dit_run, "--out", str(tmp_path / "x"), "--method", "ddim"]) == 2
    assert _one_line_error(capsys).endswith(": --method ddim samples DFoT models; this run's model is gfcore's "
                                            "VideoDiT (model.arch dit): --method euler or heun")
    assert main(["sample", dit_run, "--out", str(tmp_path / "x"), "--max-tokens", "4", "--keyframe-density", "0.5"]) == 2
    assert _one_line_error(capsys).endswith(": --max-tokens, --keyframe-density: for DFoT models only; this run's "
                                            "model is gfcore's VideoDiT")
    assert main(["sample", dit_run, "--out", str(tmp_path / "x"), "--history-guidance", "sideways"]) == 2
    _one_line_error(capsys, "history_guidance.mode must be one of", "'sideways'")
    assert not (tmp_path / "x").exists()


def test_load_trained_model_loads_the_weights_asked_for(tmp_path, dit_run):
    """load_trained_model(run folder or final.pt, use_ema, device): the EMA or the raw weights of
    final.pt (as read back by the checkpoint reader) on the device asked for, and the run's config."""
    from gfcore.io.checkpoint_file import read_checkpoint
    from gfcore.sample.run import load_trained_model

    state = read_checkpoint(os.path.join(dit_run, "final.pt"))
    assert any(not torch.equal(state["ema"][k], state["model"][k]) for k in state["model"])
    for path in (dit_run, os.path.join(dit_run, "final.pt")):
        for use_ema, part in ((True, "ema"), (False, "model")):
            model, config = load_trained_model(path, use_ema=use_ema)
            assert config == state["config"] and not model.training
            weights = model.state_dict()
            assert weights.keys() == state[part].keys()
            assert all(torch.equal(weights[k], state[part][k]) for k in weights)
    model, _ = load_trained_model(dit_run)  # the defaults: EMA weights, on the CPU
    assert all(torch.equal(v, state["ema"][k]) for k, v in model.state_dict().items())
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    model, _ = load_trained_model(dit_run, use_ema=False, device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    # a final.pt whose model_config builds no model: refused naming the file
    from gfcore.io.checkpoint_file import write_checkpoint
    from gfcore.sample.dfot_run import SampleError

    state["model_config"]["no_such_option"] = 1
    write_checkpoint(state, str(tmp_path / "final.pt"))
    with pytest.raises(SampleError, match=f"^{tmp_path / 'final.pt'}: its model_config does not build a model"):
        load_trained_model(str(tmp_path))


def test_videodit_sample_of_an_action_run_repeats_the_clips_actions(tmp_path, monkeypatch, capsys):
    """An action-conditioned VideoDiT (data.task=action, Minecraft layout, no cameras): the rollout
    gets the clip's own actions (its {key}.npz), repeated past the clip's end, and no cameras; the
    Minecraft reader has no reference folder to name (data_split_dir null)."""
    from gfcore.sample import run as run_module

    calls = []
    real = run_module.rollout
    monkeypatch.setattr(run_module, "rollout", lambda *a, **k: calls.append(k) or real(*a, **k))
    data, run = tmp_path / "data", tmp_path / "run"
    train(load_config(tiny_overrides(str(data), str(run), "teacher=none", "train.steps=1", "data.task=action",
                                     "data.camera=false", "data.action_dim=7")))
    out = tmp_path / "out"
    assert main(["sample", str(run), "--out", str(out), "--num-clips", "1", "--num-frames", "10", "--steps", "1",
                 "--method", "euler", "--no-progress"]) == 0
    key = sorted(p.stem for p in (data / "train").glob("*.mp4"))[0]
    actions = np.load(data / "train" / f"{key}.npz")["actions"]
    assert actions.shape == (8, 7)
    (kwargs,) = calls
    assert "c2w" not in kwargs and "intrinsics" not in kwargs
    assert torch.equal(kwargs["actions"], torch.from_numpy(actions[[0, 1, 2, 3, 4, 5, 6, 7, 0, 1]]).float()[None])
    manifest = json.loads((out / "sample.json").read_text())
    assert manifest["clips"] == [key] and manifest["data_split_dir"] is None
    assert "score them" not in capsys.readouterr().out


# ------------------------------------------------------------------ model configs, release loading


def test_model_config_and_load_release_directly(tmp_path):
    """model_config: a name under gfcore/configs/model or a .yaml / .yml path, ${data.resolution.0}
    and ${train.num_frames} resolved (default 256 px, 16 frames); unknown names list the known
    ones; load_release: the file's EMA weights (default) as float32 on the device asked for, its
    input_norm (dfot where the config names none), where it came from; refusals word for word."""
    import re

    from gfcore.sample.dfot_run import CONFIG_DIR, SampleError, load_release

    tiny = Path(CONFIG_DIR) / "dfot_tiny.yaml"
    default = model_config("dfot_tiny")
    assert (default["resolution"], default["frames"], default["input_norm"]) == (256, 16, "dfot")
    text = tiny.read_text()
    for name in ("plain.yaml", "plain.yml"):
        (tmp_path / name).write_text(text.replace("input_norm: dfot", "input_norm: none"))
        node = model_config(str(tmp_path / name), 16, 4)
        assert (node["resolution"], node["frames"], node["input_norm"]) == (16, 4, "none")
    assert "input_norm" in text
    (tmp_path / "unnamed.yaml").write_text(text.replace("input_norm: dfot\n", ""))
    with pytest.raises(SampleError, match=re.escape(f"--model nope: no such model config ({CONFIG_DIR}/nope.yaml); "
                                                    "known: dfot_re10k, dfot_tiny, dit_b, dit_l, small, tiny")):
        model_config("nope")
    (tmp_path / "broken.yaml").write_text(text.replace("${train.num_frames}", "${train.no_such_key}"))
    broken = str(tmp_path / "broken.yaml")
    with pytest.raises(SampleError, match=re.escape(f"--model {broken} ({broken}): ") + ".*no_such_key"):
        model_config(broken)

    model = _tiny_uvit(seed=3)
    path = _release(tmp_path / "half.ckpt", model.half(), ema_offset=0.5)  # float16 weights in the file
    source = load_release(path, "dfot_tiny", 16, 4)
    assert (source.kind, source.path, source.model_name, source.input_norm) == ("checkpoint", path, "dfot_tiny", "dfot")
    loaded = dict(source.model.named_parameters())
    assert {p.dtype for p in loaded.values()} == {torch.float32} and not source.model.training
    for key, weight in model.named_parameters():
        assert torch.equal(loaded[key], (weight.detach() + 0.5).float()), key
    for config, norm in (("plain.yaml", "none"), ("unnamed.yaml", "dfot")):
        assert load_release(path, str(tmp_path / config), 16, 4).input_norm == norm
    source = load_release(path, "dfot_tiny", 16, 4, use_ema=False, device="meta")
    assert {p.device.type for p in source.model.parameters()} == {"meta"}
    node = load_release(path, "dfot_tiny").node  # the defaults: 256 px, 16 frames (no weight depends on them)
    assert (node["resolution"], node["frames"]) == (256, 16)
    (tmp_path / "dit.yaml").write_text("arch: dit\ndepth: 2\n")
    dit = str(tmp_path / "dit.yaml")
    with pytest.raises(SampleError, match=re.escape(f"--model {dit} is a dit model; --checkpoint loads DFoT releases "
                                                    "(--model dfot_re10k); sample a gfcore run as `gfcore sample RUN`")):
        load_release(path, dit, 16, 4)
    with pytest.raises(SampleError, match=re.escape(f"--checkpoint {tmp_path / 'none.ckpt'}: no such file")):
        load_release(str(tmp_path / "none.ckpt"), "dfot_tiny", 16, 4)
