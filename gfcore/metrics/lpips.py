"""LPIPS (Zhang et al. 2018, v0.1) without torchvision.

The `lpips` package cannot be imported here (it needs torchvision, which has no build for
this torch), so the network is defined in gfcore with the same layer indices as
torchvision's AlexNet / VGG16 `features`, so that it loads:
  - the backbone: torchvision's ImageNet state_dict (alexnet-owt-7be5be79.pth or
    vgg16-397923af.pth), from a given path or the torch hub cache;
  - the learned 1x1 "lin" layers: the lpips package's weights/v0.1/{alex,vgg}.pth, from a
    given path or the installed lpips package.
Nothing is downloaded; missing weights raise WeightsUnavailable.

Distance: inputs in [0, 1] are mapped to [-1, 1] and standardised with LPIPS's fixed
shift/scale; each tapped activation is unit-normalised over channels, the squared
difference is weighted by the lin layer, averaged over pixels and summed over taps.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn as nn

from gfcore.metrics.validate import check_image_pair
from gfcore.metrics.weights import (
    WeightsUnavailable,
    find_first,
    load_state_dict_file,
    lpips_package_weight_dir,
    torch_hub_checkpoint_dir,
)

# LPIPS v0.1 input standardisation (applied to images in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# torchvision checkpoint names and the lpips package's lin-layer file names.
BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
LIN_FILES = {"alex": "alex.pth", "vgg": "vgg.pth"}


def _alexnet_features() -> tuple[nn.Sequential, Sequence[int]]:
    layers = nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
    )  # torchvision's final max-pool (index 12) is not used by LPIPS
    return layers, (1, 4, 7, 9, 11)


def _vgg16_features() -> tuple[nn.Sequential, Sequence[int]]:
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers, channels = [], 3
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return nn.Sequential(*layers), (3, 8, 15, 22, 29)  # relu1_2 ... relu5_3


_BACKBONES = {"alex": _alexnet_features, "vgg": _vgg16_features}


class LPIPS(nn.Module):
    """LPIPS distance network. Call with two image batches [..., 3, H, W] in [0, 1]."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in _BACKBONES:
            raise ValueError(f"net: expected one of {sorted(_BACKBONES)}, got {net!r}")
        self.net_name = net
        self.features, self.taps = _BACKBONES[net]()
        tap_channels = [self.features[i - 1].out_channels for i in self.taps]
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in tap_channels)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def load_backbone(self, state: dict) -> None:
        """Load torchvision's AlexNet/VGG16 state_dict (keys "features.N.weight"; the
        classifier is ignored)."""
        own = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        needed = set(self.features.state_dict())
        missing = needed - set(own)
        if missing:
            raise ValueError(f"backbone state_dict lacks {sorted(missing)[:4]} (not a torchvision {self.net_name} file?)")
        self.features.load_state_dict({k: own[k] for k in needed})

    def load_lins(self, state: dict) -> None:
        """Load the lpips package's lin weights (keys "linK.model.1.weight")."""
        for k, lin in enumerate(self.lins):
            key = next((name for name in state if name.startswith(f"lin{k}.") and name.endswith("weight")), None)
            if key is None:
                raise ValueError(f"lin-layer state_dict lacks lin{k}.model.1.weight")
            lin.weight.data.copy_(state[key].reshape(lin.weight.shape))

    def _tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs, last = [], max(self.taps)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                outs.append(x)
            if index == last:
                break
        return outs

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image: [..., 3, H, W] x2 in [0, 1] -> [...]."""
        check_image_pair(pred, target, "pred", "target")
        if pred.shape[-3] != 3:
            raise ValueError(f"pred: LPIPS needs 3 colour channels, got shape {tuple(pred.shape)}")
        batch_shape = pred.shape[:-3]
        param = self.lins[0].weight
        x = pred.reshape(-1, *pred.shape[-3:]).to(param.dtype)
        y = target.reshape(-1, *target.shape[-3:]).to(param.dtype)
        both = torch.cat([x, y]) * 2 - 1
        both = (both - self.shift.to(both.dtype)) / self.scale.to(both.dtype)
        total = 0
        for feat, lin in zip(self._tapped(both), self.lins):
            # Unit length over channels (eps as in LPIPS, added to the norm).
            feat = feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            fx, fy = feat.chunk(2)
            total = total + lin((fx - fy) ** 2).mean(dim=(2, 3))
        return total.reshape(batch_shape)


def _find_in(folders: list[Optional[Path]], name: str) -> Optional[Path]:
    return find_first([folder / name for folder in folders if folder is not None])


def load_lpips(
    net: str = "alex",
    weights: Optional[os.PathLike] = None,
    backbone_path: Optional[os.PathLike] = None,
    lin_path: Optional[os.PathLike] = None,
    random_backbone: bool = False,
    seed: int = 0,
) -> LPIPS:
    """Build LPIPS with official weights from local disk.

    weights: a folder holding the torchvision backbone file and/or the lin file (the names
    in BACKBONE_FILES / LIN_FILES); backbone_path / lin_path override single files. Without
    them, the backbone is looked up in the torch hub cache and the lin layers in the
    installed lpips package. random_backbone=True (tests only) seeds a random backbone and
    still needs the lin layers. Raises WeightsUnavailable naming what is missing.
    """
    model = LPIPS(net)
    folder = Path(weights) if weights is not None else None
    if folder is not None and not folder.is_dir():
        raise WeightsUnavailable(f"LPIPS weights folder not found: {folder}")

    lin_file = Path(lin_path) if lin_path else _find_in([folder, lpips_package_weight_dir()], LIN_FILES[net])
    if lin_file is None:
        raise WeightsUnavailable(
            f"LPIPS lin layers {LIN_FILES[net]} not found (pass --lpips-weights or install the lpips package)"
        )
    model.load_lins(load_state_dict_file(lin_file, "LPIPS lin weights"))

    if random_backbone:
        generator = torch.Generator().manual_seed(seed)
        for p in model.features.parameters():
            if p.dim() > 1:  # He-normal conv weights keep activations of a sane size
                p.data.copy_(torch.randn(p.shape, generator=generator) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.data.zero_()
        return model
    backbone_file = (
        Path(backbone_path) if backbone_path else _find_in([folder, torch_hub_checkpoint_dir()], BACKBONE_FILES[net])
    )
    if backbone_file is None:
        searched = " or ".join(str(d) for d in (folder, torch_hub_checkpoint_dir()) if d)
        raise WeightsUnavailable(
            f"LPIPS backbone {BACKBONE_FILES[net]} (torchvision ImageNet weights) not found in {searched} "
            f"(pass --lpips-weights DIR)"
        )
    model.load_backbone(load_state_dict_file(backbone_file, "LPIPS backbone"))
    return model
