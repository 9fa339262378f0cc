"""gfcore.capture: a block's output by name through a forward hook, checked against the same
model run block by block by hand, eager, compiled and with activation checkpointing."""
import copy

import pytest
import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

import gfcore


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(width), nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(),
                                                                  nn.Linear(2 * width, width))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class TinyModel(nn.Module):
    """A transformer-shaped stack; `checkpointing` recomputes each block in the backward."""

    def __init__(self, width=16, depth=4, checkpointing=None):
        super().__init__()
        self.embed = nn.Linear(3, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 3)
        self.checkpointing = checkpointing  # None, "reentrant" or "non-reentrant"

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            if self.checkpointing:
                h = checkpoint.checkpoint(block, h, use_reentrant=self.checkpointing == "reentrant")
            else:
                h = block(h)
        return self.head(h)


def by_hand(model, x, depth):
    """Block `depth`'s output computed step by step, without hooks."""
    h = model.embed(x)
    for block in model.blocks[:depth + 1]:
        h = block(h)
    return h


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 16, generator=g)


def _train_step(model, hidden, x, target):
    """Diffusion-like loss plus an alignment loss on the captured block; the gradients."""
    model.zero_grad()
    out = model(x)
    h = hidden.pop() if hidden is not None else by_hand(model, x, 1)
    loss = out.pow(2).mean() + gfcore.functional.angular_loss(h, target)
    loss.backward()
    return h.detach(), {n.replace("_orig_mod.", ""): p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["eager", "non-reentrant", "reentrant", "compile"])
def test_captured_block_equals_the_hand_computation_and_trains_the_same(mode):
    import gfcore.functional  # noqa: F401

    torch.manual_seed(0)
    plain = TinyModel()
    model = copy.deepcopy(plain)
    x, target = _data()
    if mode in ("non-reentrant", "reentrant"):
        model.checkpointing = mode  # reentrant: the captured block is the checkpointed module
    runner = torch.compile(model, backend="aot_eager") if mode == "compile" else model
    hidden = gfcore.capture(runner, "blocks.1")
    h, grads = _train_step(runner, hidden, x, target)
    h_ref, grads_ref = _train_step(plain, None, x, target)
    torch.testing.assert_close(h, h_ref, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ref.keys()
    for name, g in grads_ref.items():  # the blocks before the captured one get the alignment's gradient too
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
    assert grads_ref["blocks.0.mlp.0.weight"].abs().sum() > 0


def test_inside_a_reentrant_checkpoint_is_refused_with_the_fix():
    """blocks.1.mlp runs inside blocks.1's reentrant checkpoint, without autograd."""
    model = TinyModel(checkpointing="reentrant")
    hidden = gfcore.capture(model, "blocks.1.mlp")
    x, _ = _data()
    model(x)
    with pytest.raises(RuntimeError, match="use_reentrant=True.*Use use_reentrant=False, or capture the "
                                           "checkpointed module itself"):
        hidden.pop()
    with torch.no_grad():  # evaluation: nothing to train, nothing refused
        model(x)
        assert not hidden.pop().requires_grad


def test_pop_hands_each_output_once_and_remove_detaches():
    model = TinyModel()
    x, _ = _data()
    expected = by_hand(model, x + 1, 2)
    with gfcore.capture(model, "blocks.2") as hidden:
        with pytest.raises(RuntimeError, match="'blocks.2' has not run since the last pop"):
            hidden.pop()
        model(x)
        model(x + 1)  # the latest forward wins
        torch.testing.assert_close(hidden.pop(), expected, rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="has not run"):
            hidden.pop()
    assert not model.blocks[2]._forward_hooks  # removed on exit


def test_names_through_wrappers_and_tuple_outputs():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x * 3

    model = nn.Sequential(nn.Identity(), Pair())
    wrapped = torch.compile(model, backend="eager")
    hidden = gfcore.capture(wrapped, "1", index=1)  # _orig_mod.1 without the prefix
    wrapped(torch.ones(2))
    torch.testing.assert_close(hidden.pop(), torch.full((2,), 3.0))
    whole = gfcore.capture(model, "1")
    model(torch.ones(2))
    with pytest.raises(TypeError, match=r"'1' returns a tuple; pass index=i"):
        whole.pop()


def test_unknown_name_lists_real_ones():
    with pytest.raises(ValueError, match=r"TinyModel has no submodule 'blocks.9'; some of its names: \['blocks', "
                                         r"'blocks.0'"):
        gfcore.capture(TinyModel(), "blocks.9")
    with pytest.raises(TypeError, match="model must be an nn.Module, got function"):
        gfcore.capture(lambda x: x, "blocks.0")


def test_ddp_style_wrappers_may_be_left_out_of_the_name():
    class Wrapper(nn.Module):  # like DDP and FSDP1: the model under .module, no attribute forwarding
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    model = TinyModel()
    x, _ = _data()
    twice = Wrapper(Wrapper(model))
    hidden = gfcore.capture(twice, "blocks.1")  # module.module.blocks.1
    twice(x)
    torch.testing.assert_close(hidden.pop(), by_hand(model, x, 1), rtol=0, atol=0)
    hidden.remove()
    with pytest.raises(RuntimeError, match="'blocks.1' has not run since the last pop"):
        hidden.pop()  # remove() drops a value not yet popped
    # an unknown name lists the innermost model's names: those sharing its first part, else the first 8
    with pytest.raises(ValueError, match=r"^capture: Wrapper has no submodule 'blocks.9'; some of its names: "
                                         r"\['blocks', 'blocks.0', 'blocks.0.norm', 'blocks.0.mlp', 'blocks.0.mlp.0', "
                                         r"'blocks.0.mlp.1', 'blocks.0.mlp.2', 'blocks.1'\]$"):
        gfcore.capture(twice, "blocks.9")
    with pytest.raises(ValueError, match=r"^capture: Wrapper has no submodule 'trunk'; some of its names: "
                                         r"\['embed', 'blocks', 'blocks.0', 'blocks.0.norm', 'blocks.0.mlp', "
                                         r"'blocks.0.mlp.0', 'blocks.0.mlp.1', 'blocks.0.mlp.2'\]$"):
        gfcore.capture(twice, "trunk")
