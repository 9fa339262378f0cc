"""LPIPS in gfcore against the official `lpips` package.

The package needs torchvision only to build its backbone; the test hands it a stand-in
`torchvision.models` whose AlexNet / VGG16 feature stacks are written here from the
published layer lists, with random weights. Both implementations get the same backbone
weights and the package's own lin layers, so every other step (input scaling, channel
normalisation, lin weighting, spatial mean, sum over taps) is the package's reference.
"""
import sys
import types

import pytest
import torch
import torch.nn as nn

from gfcore.metrics.lpips import LPIPS, load_lpips
from gfcore.metrics.weights import WeightsUnavailable, lpips_package_weight_dir


pytestmark = pytest.mark.usefixtures("single_thread")


needs_lpips = pytest.mark.skipif(
    lpips_package_weight_dir() is None, reason="the lpips package (its lin weights) is not installed"
)


def _reference_features(net: str) -> nn.Sequential:
    if net == "alex":
        spec = [(3, 64, 11, 4, 2), "R", "P3", (64, 192, 5, 1, 2), "R", "P3", (192, 384, 3, 1, 1), "R",
                (384, 256, 3, 1, 1), "R", (256, 256, 3, 1, 1), "R", "P3"]
    else:
        spec, c = [], 3
        for block in ([64] * 2, [128] * 2, [256] * 3, [512] * 3, [512] * 3):
            for out in block:
                spec += [(c, out, 3, 1, 1), "R"]
                c = out
            spec.append("P2")
    layers = []
    for item in spec:
        if item == "R":
            layers.append(nn.ReLU(inplace=True))
        elif item == "P3":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))
        elif item == "P2":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            cin, cout, k, s, p = item
            layers.append(nn.Conv2d(cin, cout, k, stride=s, padding=p))
    torch.manual_seed(1234)
    for layer in layers:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.uniform_(layer.bias, -0.1, 0.1)
    return nn.Sequential(*layers)


@pytest.fixture
def reference_lpips(monkeypatch):
    """Build lpips.LPIPS with a stand-in torchvision; returns a factory by backbone name."""
    models = types.ModuleType("torchvision.models")

    def make(net):
        def build(pretrained=False, **_):
            holder = nn.Module()
            holder.features = _reference_features(net)
            return holder
        return build

    models.alexnet, models.vgg16, models.squeezenet1_1 = make("alex"), make("vgg"), make("alex")
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        monkeypatch.delitem(sys.modules, name)
    import lpips  # noqa: E402  (imported after the stand-in is in place)

    def factory(net):
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False).eval()
        ours = load_lpips(net, random_backbone=True)
        ours.load_backbone({f"features.{k}": v for k, v in _backbone_state(ref).items()})
        return ref, ours

    yield factory
    # drop the lpips modules bound to the stand-in, so later imports start afresh
    for name in [m for m in sys.modules if m == "lpips" or m.startswith("lpips.")]:
        sys.modules.pop(name, None)  # (monkeypatch then restores any lpips imported before)


def _backbone_state(ref) -> dict:
    """The package's sliced backbone, keyed by torchvision's feature index."""
    state = {}
    for name, tensor in ref.net.state_dict().items():
        _, index, kind = name.split(".")  # sliceK.INDEX.weight
        state[f"{index}.{kind}"] = tensor
    return state


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_lpips_package(reference_lpips, net):
    ref, ours = reference_lpips(net)
    g = torch.Generator().manual_seed(0)
    size = (2, 3, 67, 53) if net == "alex" else (2, 3, 35, 41)  # odd sizes
    a = torch.rand(size, generator=g)
    b = (a + 0.2 * torch.randn(size, generator=g)).clamp(0, 1)
    expected = ref(a, b, normalize=True).flatten()
    got = ours(a, b)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # non-contiguous input and an extra leading axis give the same numbers
    got_nc = ours(a.transpose(-1, -2).contiguous().transpose(-1, -2)[None], b[None])
    torch.testing.assert_close(got_nc[0], expected, rtol=1e-5, atol=1e-6)


@needs_lpips
def test_identical_is_zero_and_corruption_increases():
    model = load_lpips("alex", random_backbone=True)
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 64, 64, generator=g)
    assert model(img, img).item() == 0.0
    noisy_small = (img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    noisy_large = (img + 0.3 * torch.randn(img.shape, generator=g)).clamp(0, 1)
    assert 0 < model(img, noisy_small).item() < model(img, noisy_large).item()


@needs_lpips
def test_bf16_close_to_fp32():
    model = load_lpips("alex", random_backbone=True)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    fp32 = model(a, b)
    bf16 = model.to(torch.bfloat16)(a.bfloat16(), b.bfloat16()).float()
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.01)


def test_missing_weights_are_reported(tmp_path, monkeypatch):
    with pytest.raises(WeightsUnavailable, match="not found"):
        load_lpips("alex", weights=tmp_path / "nowhere")
    # An empty hub cache and an empty weights folder: the backbone is reported missing
    # (lin layers are looked for first, so give them explicitly).
    import gfcore.metrics.lpips as lpips_module

    monkeypatch.setattr(lpips_module, "torch_hub_checkpoint_dir", lambda: tmp_path / "hub")
    lin = tmp_path / "alex.pth"
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate([64, 192, 384, 256, 256])}, lin)
    with pytest.raises(WeightsUnavailable, match="alexnet-owt-7be5be79.pth"):
        load_lpips("alex", weights=tmp_path)


def test_bad_input_names_argument():
    model = LPIPS("alex")
    with pytest.raises(ValueError, match="pred and target"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 31))
    with pytest.raises(TypeError, match="pred"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), torch.rand(1, 3, 32, 32))


def test_corrupt_weight_file_names_file(tmp_path):
    bad = tmp_path / "alex.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="alex.pth"):
        load_lpips("alex", lin_path=bad, random_backbone=True)
