"""train.activation_checkpointing and train.compile: the same loss and gradients as the plain path.

Tolerances (CPU, fp32): activation checkpointing recomputes the very same ops, so loss and
gradients are bit-identical; torch.compile (inductor) fuses and reorders float arithmetic,
so loss within rtol 1e-5 and gradients within rtol 1e-4 / atol 1e-6.
"""
import json
import os

import pytest
import torch

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.data import StepBatcher, build_dataset
from gfcore.train.objective import draw_noise
from gfcore.train.trainer import TrainModule, build_training, configure_model
from conftest import saved_bytes
from trainer_helpers import one_torch_thread, tiny_data_root, tiny_overrides  # noqa: F401  (fixtures)


def _one_step(tiny_data_root, out, *extra):  # noqa: F811
    """Loss terms and gradients of one training step through the trainer's modules, with the
    model configured as train() configures it. The weights are perturbed first: at
    initialisation adaLN-Zero gates make most block gradients exactly zero."""
    cfg = load_config(tiny_overrides(tiny_data_root, out, "teacher=pointmap", *extra))
    device = torch.device("cpu")
    model, objective, teacher = build_training(cfg, device)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    configure_model(model, cfg)
    dataset = build_dataset(cfg.data, with_depth=True, generate_missing=False)
    batcher = StepBatcher(dataset, cfg.train.num_frames, cfg.train.batch_size, cfg.seed, camera=True, cache=False)
    batch = batcher.batch(0, device)
    noise = draw_noise((cfg.train.batch_size, cfg.train.num_frames, 3, *cfg.data.resolution),
                       torch.Generator().manual_seed(7), cfg.train.context_prob, cfg.train.max_context,
                       cfg.train.cond_drop_prob)
    module = TrainModule(model, objective)
    terms = module(batch, noise, teacher(batch))
    terms["loss"].backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads, model


def test_activation_checkpointing_same_loss_and_gradients_less_saved(tmp_path, tiny_data_root):  # noqa: F811
    plain_terms, plain_grads, plain_model = _one_step(tiny_data_root, str(tmp_path / "a"))
    ckpt_terms, ckpt_grads, ckpt_model = _one_step(tiny_data_root, str(tmp_path / "b"),
                                                   "train.activation_checkpointing=true")
    assert ckpt_model.activation_checkpointing and not plain_model.activation_checkpointing
    assert plain_terms.keys() == ckpt_terms.keys() and plain_grads.keys() == ckpt_grads.keys()
    for key in plain_terms:
        assert torch.equal(plain_terms[key], ckpt_terms[key]), key
    nonzero = [name for name, g in plain_grads.items() if name.startswith("model.blocks") and g.abs().sum() > 0]
    assert len(nonzero) > 10  # the blocks really take part
    for name in plain_grads:
        assert torch.equal(plain_grads[name], ckpt_grads[name]), name

    # the point of it: the blocks' activations are not kept for the backward
    x = torch.randn(2, 4, 3, 16, 16)
    t, rays = torch.rand(2, 4), torch.randn(2, 4, 6, 16, 16)

    def step(model):
        return lambda: model(x, t, rays=rays)[0].sum()

    plain_model.activation_checkpointing = False
    _, kept = saved_bytes(step(plain_model))
    plain_model.activation_checkpointing = True
    assert saved_bytes(step(plain_model))[1] < 0.5 * kept


def test_compile_same_loss_and_gradients(tmp_path, tiny_data_root):  # noqa: F811
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    plain_terms, plain_grads, _ = _one_step(tiny_data_root, str(tmp_path / "a"))
    compiled_terms, compiled_grads, model = _one_step(tiny_data_root, str(tmp_path / "b"), "train.compile=true")
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the model
    assert model._compiled_call_impl is not None and "_orig_mod" not in "".join(model.state_dict())
    for key in plain_terms:
        torch.testing.assert_close(compiled_terms[key], plain_terms[key], rtol=1e-5, atol=1e-7, msg=key)
    assert plain_grads.keys() == compiled_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(compiled_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def _losses(out):
    with open(os.path.join(out, "log.jsonl")) as handle:
        return [r for r in (json.loads(line) for line in handle) if "event" not in r]


@pytest.mark.parametrize("switch,exact", [("train.activation_checkpointing=true", True), ("train.compile=true", False)])
def test_trainer_runs_with_the_switch_match_the_plain_run(tmp_path, tiny_data_root, monkeypatch, switch,  # noqa: F811
                                                         exact):
    import torch.utils.checkpoint
    from torch._dynamo.utils import counters

    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(k) or original(*a, **k))
    torch._dynamo.reset()
    runs = {}
    for name, extra in (("plain", []), ("switched", [switch])):
        out = str(tmp_path / name)
        calls.clear()
        counters.clear()
        train(load_config(tiny_overrides(tiny_data_root, out, "teacher=pointmap", "train.steps=3", *extra)))
        runs[name] = (_losses(out), read_checkpoint(os.path.join(out, "final.pt")))
        # the switch really acts in train(): 2 blocks x 3 steps checkpointed, or graphs compiled
        if "activation_checkpointing" in switch:
            assert len(calls) == (6 if name == "switched" else 0)
            assert all(k["use_reentrant"] is False for k in calls)
        else:
            assert (counters["stats"]["unique_graphs"] > 0) == (name == "switched")
    (log_a, final_a), (log_b, final_b) = runs["plain"], runs["switched"]
    for a, b in zip(log_a, log_b):
        for key in ("loss", "diffusion", "angular", "scale", "cosine", "grad_norm"):
            if exact:
                assert a[key] == b[key], (a["step"], key)
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    for key, value in final_a["model"].items():  # checkpoints and final.pt keep the plain keys
        if exact:
            assert torch.equal(value, final_b["model"][key]), key
        else:
            torch.testing.assert_close(final_b["model"][key], value, rtol=1e-3, atol=1e-5, msg=key)
