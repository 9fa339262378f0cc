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


# -- the reader's and loader's pieces, with their exact messages -------------------------------

class _Heads(torch.nn.Module):
    def __init__(self, **heads):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        for name, module in heads.items():
            setattr(self, name, module)


def test_is_zip_tells_the_two_torch_formats_apart(tmp_path):
    from gfcore.geometry.checkpoint import _is_zip

    state = {"w": torch.arange(4.0)}
    torch.save(state, tmp_path / "zip.pt")
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert _is_zip(tmp_path / "zip.pt") and not _is_zip(tmp_path / "legacy.pt")
    assert torch.equal(read_state_dict(tmp_path / "legacy.pt")["w"], state["w"])  # read without mmap


def test_absent_heads_and_the_skip_message(tmp_path, capsys):
    from gfcore.geometry.checkpoint import HEAD_PREFIXES, absent_head_prefixes, load_vggt_state_dict

    model = _Heads(camera_head=torch.nn.Identity(), depth_head=None)
    assert absent_head_prefixes(model) == [p for p in HEAD_PREFIXES if p not in ("camera_head.",)]
    state = {"weight": torch.ones(2), "depth_head.a": torch.ones(1), "track_head.b": torch.ones(1)}
    with pytest.warns(UserWarning, match=r"^src: skipping keys of heads this model does not carry: depth_head\.\*, "
                                         r"track_head\.\*$"):
        load_vggt_state_dict(model, state, source="src")
    assert torch.equal(model.weight, torch.ones(2))


def test_strict_load_lists_every_problem_and_copies_unless_assign():
    from gfcore.geometry.checkpoint import load_state_dict_strict

    model = torch.nn.Linear(2, 3)
    keys = {f"extra{i:02d}": torch.zeros(1) for i in range(22)}
    twenty = {f"extra{i:02d}": torch.zeros(1) for i in range(20)}
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, {"weight": torch.zeros(3, 2), "bias": torch.zeros(3), **twenty}, "src")
    assert str(info.value).endswith("extra19")  # twenty are all shown, no "more"
    for state, expected in (
            ({"weight": torch.zeros(3, 2)}, "src does not match the model:\n  missing keys (1): bias"),
            ({"weight": torch.zeros(3, 2), "bias": torch.zeros(3), "x": torch.zeros(1)},
             "src does not match the model:\n  unexpected keys (1): x"),
            ({"weight": torch.zeros(2, 2), "bias": torch.zeros(3)},
             "src does not match the model:\n  shape mismatches (1): weight (checkpoint [2, 2], model [3, 2])"),
            ({"weight": torch.zeros(3, 2), "bias": torch.zeros(3), **keys},
             "src does not match the model:\n  unexpected keys (22): " + ", ".join(sorted(keys)[:20])
             + " ... and 2 more")):
        with pytest.raises(CheckpointError) as info:
            load_state_dict_strict(model, state, "src")
        assert str(info.value) == expected
    with pytest.raises(CheckpointError, match=r"^state_dict does not match the model:\n  missing keys \(2\): "
                                              r"weight, bias\n  unexpected keys \(1\): x$"):
        load_state_dict_strict(model, {"x": torch.zeros(1)})
    state = {"weight": torch.ones(3, 2), "bias": torch.ones(3)}
    load_state_dict_strict(model, state)
    assert model.weight.data_ptr() != state["weight"].data_ptr()  # copied by default
    load_state_dict_strict(model, state, assign=True)
    assert model.weight.data_ptr() == state["weight"].data_ptr()


def test_vggt_checkpoint_loader_passes_assign(tmp_path):
    from gfcore.geometry.checkpoint import load_vggt_state_dict

    model = _Heads(camera_head=torch.nn.Identity(), depth_head=torch.nn.Identity(), point_head=torch.nn.Identity())
    state = {"weight": torch.full((2,), 3.0), "track_head.w": torch.ones(1)}
    path = tmp_path / "m.pt"
    torch.save(state, path)
    before = model.weight
    load_vggt_checkpoint(model, path)
    assert torch.equal(model.weight, state["weight"]) and model.weight is before  # copied into the parameter
    copied = load_vggt_state_dict(model, state)
    assert copied.weight.data_ptr() != state["weight"].data_ptr()
    assert load_vggt_state_dict(model, state, assign=True).weight.data_ptr() == state["weight"].data_ptr()
    before = model.weight
    loaded = load_vggt_checkpoint(model, path, assign=True)
    assert torch.equal(loaded.weight, state["weight"]) and loaded.weight is not before  # adopted
    with pytest.raises(CheckpointError, match=r"^state_dict does not match the model:"):
        load_vggt_state_dict(model, {"weight": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"^src does not match the model:\n  unexpected keys \(1\): "
                                              r"track_head.w$"):
        load_vggt_state_dict(model, state, source="src", skip_prefixes=())
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): camera_head.w$"):  # a present head's key
        load_vggt_state_dict(model, {"weight": torch.ones(2), "camera_head.w": torch.ones(1)})


def test_reader_messages_and_nesting(tmp_path, monkeypatch):
    bad = tmp_path / "weights.npz"
    bad.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {str(bad)!r}: unknown extension '.npz' \(expected .pt, "
                                              rf"\.pth, \.bin, \.ckpt or \.safetensors\)$"):
        read_state_dict(bad)
    torch.save({"state_dict": {"w": torch.ones(1)}, "step": 3}, tmp_path / "lightning.ckpt")
    assert list(read_state_dict(tmp_path / "lightning.ckpt")) == ["w"]
    torch.save({"w": torch.ones(1), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {str(tmp_path / 'mixed.pt')!r} does not hold a flat "
                                              r"state_dict of tensors$"):
        read_state_dict(tmp_path / "mixed.pt")
    from pathlib import PurePosixPath

    torch.save({"w": PurePosixPath("/a")}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {str(tmp_path / 'odd.pt')!r}: refused, not loaded: "
                                              r"it asks for pathlib.PurePosixPath"):
        read_state_dict(tmp_path / "odd.pt")
    import builtins

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("safetensors") else real_import(name, *a, **k))
    (tmp_path / "m.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=rf"^checkpoint {str(tmp_path / 'm.safetensors')!r}: reading "
                                              r"\.safetensors needs the 'safetensors' package \(pip install "
                                              r"safetensors\)$"):
        read_state_dict(tmp_path / "m.safetensors")


def test_save_state_dict_takes_a_mapping(tmp_path):
    save_state_dict({"w": torch.arange(3.0)}, tmp_path / "s.pt")
    assert torch.equal(read_state_dict(tmp_path / "s.pt")["w"], torch.arange(3.0))
