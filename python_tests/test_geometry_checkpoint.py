"""Checkpoint reading and strict loading (.pt, .pth, .safetensors)."""
import pytest
import torch

from gfcore.geometry import VGGT, CheckpointError, load_vggt_checkpoint, read_state_dict, save_state_dict, small_config

pytestmark = pytest.mark.usefixtures("single_thread")

HEADLESS = {"enable_camera": False, "enable_depth": False, "enable_point": False}


def build(seed, **extra):
    torch.manual_seed(seed)
    return VGGT(**{**small_config(), **HEADLESS, **extra}).eval()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors"])
def test_round_trip_gives_identical_outputs(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors", reason="safetensors not installed")
    source, target = build(0), build(1)
    path = tmp_path / f"model{suffix}"
    save_state_dict(source, path)
    load_vggt_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    images = torch.rand(1, 2, 3, 28, 28)
    with torch.no_grad():
        a, b = source.aggregator(images)[0], target.aggregator(images)[0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_nested_training_checkpoint_is_unwrapped(tmp_path):
    source, target = build(0), build(1)
    torch.save({"model": source.state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    load_vggt_checkpoint(target, tmp_path / "ckpt.pt")
    assert torch.equal(target.aggregator.camera_token, source.aggregator.camera_token)


def test_head_keys_are_skipped_with_a_message(tmp_path):
    full = build(0, enable_camera=True)
    state = full.state_dict()
    state["track_head.fake.weight"] = torch.zeros(2)
    torch.save(state, tmp_path / "full.pt")
    headless = build(1)
    with pytest.warns(UserWarning, match=r"camera_head\.\*.*track_head\.\*"):
        load_vggt_checkpoint(headless, tmp_path / "full.pt")
    assert torch.equal(headless.aggregator.register_token, full.aggregator.register_token)


def test_strict_errors_list_missing_unexpected_and_shapes(tmp_path):
    state = build(0).state_dict()
    del state["aggregator.frame_blocks.1.ls2.gamma"]
    state["aggregator.extra.weight"] = torch.zeros(3)
    state["aggregator.camera_token"] = torch.zeros(1, 2, 1, 10)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as info:
        load_vggt_checkpoint(build(1), tmp_path / "bad.pt")
    message = str(info.value)
    assert "bad.pt" in message
    assert "missing keys (1): aggregator.frame_blocks.1.ls2.gamma" in message
    assert "unexpected keys (1): aggregator.extra.weight" in message
    assert "aggregator.camera_token (checkpoint [1, 2, 1, 10], model [1, 2, 1, 384])" in message


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        read_state_dict(tmp_path / "corrupt.pt")
    (tmp_path / "weights.onnx").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown extension"):
        read_state_dict(tmp_path / "weights.onnx")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="flat state_dict"):
        read_state_dict(tmp_path / "list.pt")


def test_corrupt_safetensors_is_named(tmp_path):
    pytest.importorskip("safetensors", reason="safetensors not installed")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
