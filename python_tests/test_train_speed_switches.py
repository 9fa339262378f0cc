"""train.activation_checkpointing (none | full | selective) and train.compile: the same loss and
gradients as the plain path.

Tolerances (CPU, fp32): activation checkpointing recomputes the very same ops (and restores the
RNG state, so dropout draws the same masks), so loss and gradients are bit-identical;
torch.compile (inductor) fuses and reorders float arithmetic, so loss within rtol 1e-5 and
gradients within rtol 1e-4 / atol 1e-6.
"""
import json
import os
import warnings

import pytest
import torch
from omegaconf import OmegaConf

from gfcore.io.checkpoint_file import read_checkpoint
from gfcore.train import load_config, train
from gfcore.train.data import StepBatcher, build_dataset
from gfcore.train.objective import draw_noise
from gfcore.train.optim import build_optimizer
from gfcore.train.trainer import TrainModule, build_training, configure_model, draw_step_noise
from conftest import saved_bytes
from test_train_dfot import dfot_overrides
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


def _count_calls(modules):
    """{name: forward calls} of the named modules, counted by forward pre-hooks (a recomputation in
    the backward calls the module again; it may stop before the module returns, once every
    tensor the backward needs is back, so a post-hook would miss it)."""
    counts = dict.fromkeys(modules, 0)
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda *_, name=name: counts.__setitem__(name, counts[name] + 1))
    return counts


def _watch_dit(model):
    block = model.blocks[0]
    return {"spatial": block.spatial, "temporal": block.temporal, "mlp": block.mlp, "modulation": block.modulation}


def _watch_dfot(model):
    return {"transformer": model.mid_blocks[0], "resblock": model.down_blocks[0][0]}


# forward calls per training step (forward + backward) of the watched sub-modules: the
# recomputation calls a module a second time
CALLS_PER_STEP = {
    # VideoDiT: selective recomputes the attentions and the MLP, not the adaLN modulation
    "dit": {"none": dict(spatial=1, temporal=1, mlp=1, modulation=1),
            "selective": dict(spatial=2, temporal=2, mlp=2, modulation=1),
            "full": dict(spatial=2, temporal=2, mlp=2, modulation=2)},
    # UViT3DPose (dfot_tiny: use_checkpointing all off): selective recomputes the TransformerBlock
    # levels (one fused attention + MLP per block), not the conv ResBlock levels
    "dfot": {"none": dict(transformer=1, resblock=1), "selective": dict(transformer=2, resblock=1),
             "full": dict(transformer=2, resblock=2)},
}


def _overrides(arch, data_root, out, *extra):
    """The tiny VideoDiT or dfot_tiny run of the trainer tests, with the oracle pointmap teacher."""
    if arch == "dit":
        return tiny_overrides(data_root, out, "teacher=pointmap", *extra)
    return dfot_overrides(data_root, out, *extra)


def _two_steps(overrides, watch):
    """Loss terms and gradients of 2 training steps (an AdamW step between them) through the
    trainer's modules, configured as train() configures them, and the forward calls of the
    modules watch(model) names. The weights are perturbed first: at initialisation the zeroed
    gates and output layers make most block gradients exactly zero."""
    cfg = load_config(overrides)
    device = torch.device("cpu")
    model, objective, teacher = build_training(cfg, device)
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    configure_model(model, cfg)
    counts = _count_calls(watch(model))
    module = TrainModule(model, objective)
    optimizer = build_optimizer(module.parameters(), cfg.train.lr, cfg.train.weight_decay, cfg.train.betas)
    dataset = build_dataset(cfg.data, with_depth=True, generate_missing=False)
    batcher = StepBatcher(dataset, cfg.train.num_frames, cfg.train.batch_size, cfg.seed, camera=True, cache=False)
    steps = []
    for step in range(2):
        batch = batcher.batch(step, device)
        noise = draw_step_noise(cfg, module, (cfg.train.batch_size, cfg.train.num_frames, 3, *cfg.data.resolution),
                                torch.Generator().manual_seed(step))
        torch.manual_seed(step)  # the dropout masks (dfot_tiny: 0.1 on its transformer levels)
        terms = module(batch, noise, teacher(batch))
        terms["loss"].backward()
        steps.append(({k: v.detach() for k, v in terms.items()},
                      {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps, counts, model


@pytest.mark.parametrize("arch", ["dit", "dfot"])
def test_checkpointing_modes_same_losses_and_gradients_and_they_recompute(tmp_path, tiny_data_root, arch):  # noqa: F811
    """none, selective and full: bit-identical loss terms and gradients over 2 steps (CPU fp32;
    the recomputation runs the same ops, and restores the RNG state for dropout), and the
    recomputation really happens (forward calls counted by hooks, CALLS_PER_STEP)."""
    runs = {}
    for mode in ("none", "selective", "full"):
        runs[mode] = _two_steps(_overrides(arch, tiny_data_root, str(tmp_path / mode),
                                           f"train.activation_checkpointing={mode}"),
                                _watch_dit if arch == "dit" else _watch_dfot)
        assert runs[mode][1] == {k: 2 * v for k, v in CALLS_PER_STEP[arch][mode].items()}, (mode, runs[mode][1])
    plain = runs["none"][0]
    blocks = "model.blocks" if arch == "dit" else "model.mid_blocks"
    assert len([n for n, g in plain[1][1].items() if n.startswith(blocks) and g.abs().sum() > 0]) > 5
    for mode in ("selective", "full"):
        for step, ((terms, grads), (plain_terms, plain_grads)) in enumerate(zip(runs[mode][0], plain)):
            assert terms.keys() == plain_terms.keys() and grads.keys() == plain_grads.keys()
            for key in plain_terms:
                assert torch.equal(terms[key], plain_terms[key]), (mode, step, key)
            for name in plain_grads:
                assert torch.equal(grads[name], plain_grads[name]), (mode, step, name)


def test_checkpointing_keeps_fewer_activations(tmp_path, tiny_data_root):  # noqa: F811
    """The point of it: full keeps only the blocks' inputs, selective drops the attention / MLP
    internals (VideoDiT) or the transformer levels' (UViT3DPose), none keeps everything."""
    kept = {}
    for arch in ("dit", "dfot"):
        cfg = load_config(_overrides(arch, tiny_data_root, str(tmp_path)))
        model = build_training(cfg, torch.device("cpu"))[0]
        x = torch.randn(2, 4, 3, 16, 16)
        args = ((torch.rand(2, 4), torch.randn(2, 4, 6, 16, 16)) if arch == "dit"
                else (torch.rand(2, 4), torch.randn(2, 4, 180, 16, 16)))
        for mode in ("none", "selective", "full"):
            configure_model(model, OmegaConf.merge(cfg, {"train": {"activation_checkpointing": mode}}))
            out = lambda: model(x, *args)  # noqa: E731
            kept[arch, mode] = saved_bytes(lambda: out()[0].sum() if arch == "dit" else out().sum())[1]
    # measured shares of none's bytes: VideoDiT selective 0.36, full 0.10; dfot_tiny selective 0.83
    # (its transformer levels are small beside the 16 px conv levels), full 0.54 (the embeddings,
    # resamplers and output conv, outside the blocks, keep theirs)
    for arch, bound in (("dit", 0.5), ("dfot", 0.9)):
        assert kept[arch, "full"] < kept[arch, "selective"] < bound * kept[arch, "none"], kept


def test_old_booleans_and_bad_values(tmp_path, tiny_data_root):  # noqa: F811
    """true / false still mean full / none (no warning); another value is a one-line error naming
    the key, before the run folder is touched."""
    for value, mode in ((True, "full"), (False, "none")):
        cfg = load_config(tiny_overrides(tiny_data_root, str(tmp_path), f"train.activation_checkpointing={value}"))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert configure_model(build_training(cfg, torch.device("cpu"))[0], cfg).activation_checkpointing == mode
    out = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        train(load_config(tiny_overrides(tiny_data_root, str(out), "train.activation_checkpointing=some")))
    assert str(error.value) == ("train.activation_checkpointing must be none, full or selective "
                                "(or true / false for full / none), got 'some'")
    assert not out.exists()


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


@pytest.mark.parametrize("switch,exact", [("train.activation_checkpointing=true", True),
                                          ("train.activation_checkpointing=selective", True),
                                          ("train.compile=true", False)])
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
        # the switch really acts in train(): 2 blocks (full) or their 2 x 3 sub-layers (selective)
        # x 3 steps checkpointed, or graphs compiled
        if "activation_checkpointing" in switch:
            assert len(calls) == ((18 if "selective" in switch else 6) if name == "switched" else 0)
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
