"""What the DFoT golden tests share: loading a golden .npz written by one of scripts/make_dfot_*_golden.py,
and the stand-in backbone those scripts run the authors' sampling and training code with."""
import json
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).parent / "data"


def load_golden(name: str):
    """(tensors by name, the JSON facts) of python_tests/data/NAME."""
    with np.load(DATA / name) as data:
        arrays = {k: data[k] for k in data.files}
    facts = json.loads(str(arrays.pop("facts")))
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, facts


class StandIn(torch.nn.Module):
    """The golden scripts' stand-in backbone, from the stored PREFIX.w, .a, .b: v = W @ x (over
    frames x channels, per pixel) + a_c * noise_levels + b_c * sum_k cond_k, the cond term zeroed
    for samples where external_cond_mask is True. Records each call's noise levels and mask."""

    def __init__(self, g, prefix: str = "standin"):
        super().__init__()
        self.w, self.a, self.b = g[prefix + ".w"], g[prefix + ".a"], g[prefix + ".b"]
        self.calls = []

    def forward(self, x, noise_levels, external_cond=None, external_cond_mask=None, return_latents=False):
        self.calls.append({"x": x.clone(), "noise_levels": noise_levels.clone(), "mask": external_cond_mask})
        b, t, c, h, w = x.shape
        out = torch.einsum("oi,bihw->bohw", self.w, x.reshape(b, t * c, h, w)).reshape(b, t, c, h, w)
        out = out + self.a[None, None, :, None, None] * noise_levels[:, :, None, None, None]
        if external_cond is not None:
            cond = external_cond.sum(2, keepdim=True)
            if external_cond_mask is not None:
                cond = cond * (~external_cond_mask.bool()).float()[:, None, None, None, None]
            out = out + self.b[None, None, :, None, None] * cond
        return (out, [out.mean(2)]) if return_latents else out
