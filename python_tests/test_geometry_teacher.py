"""VGGTTeacher: shapes, layer selection, grid resampling, chunking, preprocessing, dtype agreement."""
import numpy as np
import pytest
import torch

from gfcore.geometry import VGGT, VGGTTeacher, resize_for_vggt, save_state_dict, small_config
from gfcore.geometry.preprocess import target_size

pytestmark = pytest.mark.usefixtures("single_thread")

HEADLESS = {"enable_camera": False, "enable_depth": False, "enable_point": False}
SIZE = 56  # stands in for 518 to keep CPU tests fast; 4 x 4 patches


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = VGGT(**{**small_config(), **HEADLESS}).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    return m


def make_teacher(model, **kwargs):
    return VGGTTeacher(model=model, **{"layers": (0, 1), "dtype": torch.float32, "image_size": SIZE, **kwargs})


def bilinear_reference(x, out_h, out_w):
    """align_corners=False bilinear resampling of [h, w, C] written out with numpy."""
    in_h, in_w = x.shape[:2]
    def coords(n_out, n_in):
        src = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        src = np.clip(src, 0, None)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo
    y0, y1, fy = coords(out_h, in_h)
    x0, x1, fx = coords(out_w, in_w)
    top = x[y0][:, x0] * (1 - fx)[None, :, None] + x[y0][:, x1] * fx[None, :, None]
    bottom = x[y1][:, x0] * (1 - fx)[None, :, None] + x[y1][:, x1] * fx[None, :, None]
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def test_features_are_patch_tokens_of_chosen_layers_resampled_to_odd_grid(model):
    teacher = make_teacher(model, layers=(1, 0))
    frames = torch.rand(2, 3, 3, SIZE, SIZE)
    feats = teacher(frames, grid=(3, 5))
    assert feats.shape == (2, 3, 2, 3, 5, 768) and feats.dtype == torch.float32
    with torch.no_grad():
        outputs, start = model.aggregator(frames)
    for slot, layer in enumerate((1, 0)):
        tokens = outputs[layer][:, :, start:].reshape(2, 3, 4, 4, 768).numpy().astype(np.float64)
        for b in range(2):
            for t in range(3):
                ref = bilinear_reference(tokens[b, t], 3, 5)
                np.testing.assert_allclose(feats[b, t, slot].numpy(), ref, rtol=1e-5, atol=1e-5)
    native = teacher(frames)
    assert native.shape == (2, 3, 2, 4, 4, 768)
    torch.testing.assert_close(native[:, :, 0], outputs[1][:, :, start:].reshape(2, 3, 4, 4, 768))


def test_long_clips_are_chunked_into_independent_calls(model):
    frames = torch.rand(1, 5, 3, SIZE, SIZE)
    chunked = make_teacher(model, frames_per_call=2)(frames, grid=(4, 4))
    single = make_teacher(model, frames_per_call=16)
    expected = torch.cat([single(frames[:, i:i + 2], grid=(4, 4)) for i in (0, 2, 4)], dim=1)
    torch.testing.assert_close(chunked, expected)
    # one 5-frame call differs: the global attention spans all frames
    assert not torch.allclose(single(frames, grid=(4, 4)), chunked)


def test_bf16_teacher_agrees_with_fp32(model):
    frames = torch.rand(1, 2, 3, SIZE, SIZE)
    fp32 = make_teacher(model)(frames, grid=(5, 3))
    bf16 = make_teacher(model, dtype=torch.bfloat16)(frames, grid=(5, 3))
    assert bf16.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(fp32.flatten(0, 4), bf16.float().flatten(0, 4), dim=-1)
    assert cos.min() > 0.99
    assert (fp32 - bf16.float()).norm() / fp32.norm() < 0.05


def test_teacher_is_frozen_and_stays_in_eval(model):
    teacher = make_teacher(model)
    parent = torch.nn.Sequential(teacher).train()
    assert not teacher.training and not teacher.vggt.training
    assert not any(p.requires_grad for p in teacher.parameters())
    frames = torch.rand(1, 1, 3, SIZE, SIZE, requires_grad=True)
    assert not parent(frames).requires_grad


def test_non_contiguous_and_resized_inputs(model):
    teacher = make_teacher(model)
    base = torch.rand(1, 2, 40, 60, 3)
    frames = base.permute(0, 1, 4, 2, 3)  # non-contiguous [B, T, 3, 40, 60]
    out = teacher(frames, grid=(3, 3))
    ref = teacher(frames.contiguous(), grid=(3, 3))
    torch.testing.assert_close(out, ref)
    assert out.shape == (1, 2, 2, 3, 3, 768)


@pytest.mark.parametrize("mode,hw,expected", [
    ("square", (40, 60), (56, 56)),
    ("crop", (40, 60), (42, 56)),    # width -> 56, height 37.3 rounded to 3 patches
    ("crop", (90, 40), (56, 56)),    # 126 tall after the resize: centre-cropped to 56
    ("pad", (40, 60), (56, 56)),     # 42 x 56 content padded with white
    ("pad", (60, 20), (56, 56)),
])
def test_resize_modes(mode, hw, expected):
    frames = torch.rand(2, 3, *hw)
    out = resize_for_vggt(frames, mode, size=56, patch=14)
    assert tuple(out.shape[-2:]) == expected
    assert out.min() >= 0 and out.max() <= 1
    if mode == "pad" and hw == (40, 60):
        assert target_size(40, 60, "pad", 56, 14) == (42, 56)
        assert (out[..., :7, :] == 1).all() and (out[..., -7:, :] == 1).all()
    if mode == "crop" and hw == (90, 40):  # the centre rows of the uncropped 126 x 56 resize
        full = torch.nn.functional.interpolate(frames, size=(126, 56), mode="bicubic", antialias=True).clamp(0, 1)
        torch.testing.assert_close(out, full[..., 35:91, :])
    constant = torch.full((1, 3, *hw), 0.25)
    torch.testing.assert_close(resize_for_vggt(constant, mode, 56, 14)[..., 24:32, 24:32],
                               torch.full((1, 3, 8, 8), 0.25))


def test_checkpoint_path_builds_on_meta_and_loads(tmp_path, model):
    save_state_dict(model, tmp_path / "small.pt")
    teacher = VGGTTeacher(tmp_path / "small.pt", layers=(-1,), dtype=torch.float32, image_size=SIZE,
                          config=small_config())
    assert teacher.layers == [1]
    assert teacher.vggt.aggregator.image_mean.device.type == "cpu"
    frames = torch.rand(1, 2, 3, SIZE, SIZE)
    torch.testing.assert_close(teacher(frames, grid=(2, 2)), make_teacher(model, layers=(1,))(frames, grid=(2, 2)))


def test_bad_arguments_are_named(model):
    teacher = make_teacher(model)
    with pytest.raises(ValueError, match="frames must be"):
        teacher(torch.rand(2, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="float"):
        teacher(torch.zeros(1, 1, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="grid"):
        teacher(torch.rand(1, 1, 3, SIZE, SIZE), grid=(0, 4))
    with pytest.raises(ValueError, match="layers"):
        make_teacher(model, layers=(2,))
    with pytest.raises(ValueError, match="resize_mode"):
        make_teacher(model, resize_mode="stretch")
    with pytest.raises(ValueError, match="frames_per_call"):
        make_teacher(model, frames_per_call=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_teacher_matches_cpu_fp32(model, dtype):
    frames = torch.rand(1, 3, 3, 70, 98)
    cpu = make_teacher(model, frames_per_call=2)(frames, grid=(5, 7))
    gpu_model = VGGT(**{**small_config(), **HEADLESS}).cuda()
    gpu_model.load_state_dict(model.state_dict())
    gpu = make_teacher(gpu_model, frames_per_call=2, dtype=dtype)(frames.cuda(), grid=(5, 7))
    assert gpu.device.type == "cuda" and gpu.dtype == dtype and gpu.shape == cpu.shape
    cos = torch.nn.functional.cosine_similarity(cpu.flatten(0, 4), gpu.float().cpu().flatten(0, 4), dim=-1)
    assert cos.min() > (0.9999 if dtype == torch.float32 else 0.99)
