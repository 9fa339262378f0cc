"""No file that gfcore reads can run code (issue 29): every loader refuses a pickle that would
run a command, names the class it asked for, and the command never runs; gfcore's own
checkpoints of earlier versions are refused with the convert command, and converted ones resume
and sample bit for bit; an audit of the sources keeps it so."""
import ast
import filecmp
import json
import os
from pathlib import Path

import pytest
import torch

from gfcore.io.checkpoint_file import LegacyCheckpointError, read_checkpoint
from gfcore.io.convert import main as convert_main
from gfcore.io.safe_load import UnsafeFileError, load_weights_only, sha256_of
from malicious_files import PAYLOAD_GLOBAL, write_malicious
from trainer_helpers import tiny_data_root, tiny_overrides  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "code_ran"
    yield path
    assert not path.exists(), "the malicious file's command ran"


def test_the_payload_really_runs_when_unpickled(tmp_path):
    """The fixture is live: a plain unpickling load runs its command (so a refusal below means something)."""
    ran = tmp_path / "ran"
    evil = write_malicious(tmp_path / "evil.pt", ran)
    torch.load(evil, weights_only=False)
    assert ran.exists()


def test_load_weights_only_names_the_class_and_runs_nothing(tmp_path, marker):
    evil = write_malicious(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeFileError, match=rf"^weights {str(evil)!r}: refused, not loaded: it asks for "
                                              rf"{PAYLOAD_GLOBAL}") as info:
        load_weights_only(evil, "weights")
    assert info.value.globals == [PAYLOAD_GLOBAL]


def test_load_weights_only_allowlist_is_per_call(tmp_path):
    """An allowed class loads inside the call only; torch's global allowlist is left as it was."""
    from pathlib import PurePosixPath

    path = tmp_path / "path.pt"
    torch.save({"where": PurePosixPath("/a/b")}, path)
    with pytest.raises(UnsafeFileError, match="pathlib.PurePosixPath"):
        load_weights_only(path, "file")
    assert load_weights_only(path, "file", allowed=[PurePosixPath])["where"] == PurePosixPath("/a/b")
    with pytest.raises(UnsafeFileError, match="pathlib.PurePosixPath"):
        load_weights_only(path, "file")


def test_damage_is_not_reported_as_danger(tmp_path):
    """A truncated file raises torch's own error, not UnsafeFileError (resume=auto skips damage
    but stops at danger)."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:40])
    with pytest.raises(Exception) as info:
        load_weights_only(cut, "file")
    assert not isinstance(info.value, UnsafeFileError)


def test_a_damaged_pickle_is_one_line_that_advises_nothing_unsafe(tmp_path):
    """A legacy (non-zip) pickle with a bad opcode: pickle.UnpicklingError (damage, not danger) in
    one line that says what the unpickler found, and not torch's advice to load it with
    weights_only=False (which would run its code); the readers that wrap it name the file."""
    import pickle

    from gfcore.models.dfot.checkpoint import read_checkpoint as read_dfot

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")  # protocol 2, then opcode 'g' (103) with no valid argument
    with pytest.raises(pickle.UnpicklingError) as info:
        load_weights_only(bad, "pose file")
    message = str(info.value)
    assert message == "a damaged pickle, not a readable pose file (Unsupported operand 103)"
    with pytest.raises(Exception) as wrapped:
        read_dfot(str(bad))
    text = str(wrapped.value)
    assert len(text.splitlines()) == 1 and str(bad) in text and "weights_only" not in text
    assert text.endswith("a damaged pickle, not a readable DFoT checkpoint (Unsupported operand 103)")


# -- gfcore's own checkpoints: sample and resume ---------------------------------------------

def _run_folder_with(tmp_path, tiny_data_root, marker, where):  # noqa: F811
    """A genuine tiny run (config.yaml, checkpoints of steps 2 and 4), then its final.pt or its
    newest checkpoint replaced by the malicious file."""
    from gfcore.train import load_config, train
    from gfcore.train.checkpoint import list_checkpoints

    out = tmp_path / "run"
    train(load_config(tiny_overrides(tiny_data_root, str(out), "teacher=none", "train.steps=4")))
    assert [s for s, _ in list_checkpoints(str(out / "checkpoints"))] == [2, 4]
    target = out / "final.pt" if where == "final" else Path(list_checkpoints(str(out / "checkpoints"))[-1][1])
    write_malicious(target, marker, config={"seed": 0})
    return out, target


def test_sample_refuses_a_malicious_final_pt(tmp_path, tiny_data_root, marker, capsys):  # noqa: F811
    from gfcore.sample.run import main as sample_main

    run, evil = _run_folder_with(tmp_path, tiny_data_root, marker, "final")
    assert (run / "config.yaml").is_file()
    assert sample_main([str(run), "--out", str(tmp_path / "samples")]) == 2
    err = capsys.readouterr().err
    assert f"{evil}: it asks for {PAYLOAD_GLOBAL} when loaded" in err
    assert f"gfcore convert-checkpoint {evil} --trust" in err
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("resume", ["auto", "path"])
def test_resume_refuses_a_malicious_checkpoint(tmp_path, tiny_data_root, marker, resume):  # noqa: F811
    from gfcore.train import load_config, train
    from gfcore.train.resume import ResumeError

    run, evil = _run_folder_with(tmp_path, tiny_data_root, marker, "checkpoint")
    overrides = tiny_overrides(tiny_data_root, str(run), "teacher=none", "train.steps=6")
    if resume == "path":
        overrides.append(f"train.resume={evil}")
    with pytest.raises(ResumeError, match=PAYLOAD_GLOBAL) as info:
        train(load_config(overrides))
    assert f"gfcore convert-checkpoint {evil} --trust" in str(info.value)
    # refused, not treated as damage: the file is neither skipped for step 2's nor renamed
    assert evil.is_file() and not list(evil.parent.glob("*.corrupt*"))


# -- earlier gfcore checkpoints: refused, converted at the user's word, unchanged in effect -----

def _make_legacy(path):
    """Rewrite a checkpoint as gfcore wrote it before the safe format: the in-memory state
    (numpy generator state, config dict) pickled as it is."""
    torch.save(read_checkpoint(path), path)


def test_converted_checkpoint_resumes_bit_identical(tmp_path, tiny_data_root, capsys):  # noqa: F811
    from gfcore.train import load_config, train
    from gfcore.train.checkpoint import list_checkpoints
    from gfcore.train.resume import ResumeError
    from gfcore.train.trainer import CrashForTesting

    straight, interrupted = str(tmp_path / "straight"), str(tmp_path / "interrupted")
    train(load_config(tiny_overrides(tiny_data_root, straight, "teacher=pointmap")))
    with pytest.raises(CrashForTesting):
        train(load_config(tiny_overrides(tiny_data_root, interrupted, "teacher=pointmap", "train.crash_after_step=3")))
    ((step, ckpt),) = list_checkpoints(os.path.join(interrupted, "checkpoints"))
    assert step == 2
    _make_legacy(ckpt)
    legacy_bytes = Path(ckpt).read_bytes()
    with pytest.raises(LegacyCheckpointError, match=r"it asks for .*numpy"):
        read_checkpoint(ckpt)
    with pytest.raises(ResumeError, match=f"gfcore convert-checkpoint {ckpt} --trust"):
        train(load_config(tiny_overrides(tiny_data_root, interrupted, "teacher=pointmap")))

    assert convert_main([interrupted]) == 2  # no --trust: nothing is unpickled or changed
    assert "--trust" in capsys.readouterr().err and Path(ckpt).read_bytes() == legacy_bytes
    assert convert_main([interrupted, "--trust"]) == 0
    assert f"{ckpt}: converted (the original is kept as {ckpt}.legacy)" in capsys.readouterr().out
    assert Path(f"{ckpt}.legacy").read_bytes() == legacy_bytes
    assert convert_main([ckpt, "--trust"]) == 0 and "already in the safe format" in capsys.readouterr().out

    assert train(load_config(tiny_overrides(tiny_data_root, interrupted, "teacher=pointmap")))["resumed_from"] == 2
    a, b = read_checkpoint(os.path.join(straight, "final.pt")), read_checkpoint(os.path.join(interrupted, "final.pt"))
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after a converted resume"


def test_converted_final_pt_samples_bit_identical(tmp_path, tiny_data_root, capsys):  # noqa: F811
    from gfcore.sample.run import main as sample_main
    from gfcore.train import load_config, train

    run = tmp_path / "run"
    train(load_config(tiny_overrides(tiny_data_root, str(run), "teacher=none", "train.steps=2")))
    sample = ["--num-clips", "1", "--num-frames", "6", "--steps", "2", "--seed", "3"]
    assert sample_main([str(run), "--out", str(tmp_path / "before"), *sample]) == 0
    original = read_checkpoint(run / "final.pt")
    _make_legacy(run / "final.pt")
    assert sample_main([str(run), "--out", str(tmp_path / "refused"), *sample]) == 2
    assert f"gfcore convert-checkpoint {run / 'final.pt'} --trust" in capsys.readouterr().err
    assert convert_main([str(run / "final.pt"), "--trust"]) == 0
    converted = read_checkpoint(run / "final.pt")
    assert converted["config"] == original["config"] and converted["model_config"] == original["model_config"]
    for key in original["ema"]:
        assert torch.equal(converted["ema"][key], original["ema"][key])
    assert sample_main([str(run), "--out", str(tmp_path / "after"), *sample]) == 0
    gifs = sorted(p.name for p in (tmp_path / "before").glob("*.gif"))
    assert gifs and gifs == sorted(p.name for p in (tmp_path / "after").glob("*.gif"))
    for name in gifs:
        assert filecmp.cmp(tmp_path / "before" / name, tmp_path / "after" / name, shallow=False)


def test_convert_refuses_what_is_not_a_gfcore_checkpoint(tmp_path, capsys):
    other = tmp_path / "other.pt"
    torch.save([1, 2, 3], other)
    assert convert_main([str(other), "--trust"]) == 2
    assert "not a gfcore checkpoint" in capsys.readouterr().err and not Path(f"{other}.legacy").exists()
    assert convert_main([str(tmp_path / "absent"), "--trust"]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_rng_states_round_trip_bit_for_bit():
    import random

    import numpy as np

    from gfcore.io.checkpoint_file import pack_rng, unpack_rng
    from gfcore.train.checkpoint import rng_state, set_rng_state

    random.gauss(0, 1)  # a cached gaussian in python's and numpy's states
    np.random.standard_normal()
    saved = rng_state()
    expected = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    set_rng_state(unpack_rng(pack_rng(saved)))
    got = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_config_text_round_trips_every_experiment():
    from omegaconf import OmegaConf

    from gfcore.io.checkpoint_file import config_from_text, config_to_text
    from gfcore.train import load_config

    for experiment in ("demo", "re10k", "minecraft"):
        config = OmegaConf.to_container(load_config([f"experiment={experiment}"]), resolve=True)
        config["tricky"] = {"tiny": 1e-8, "third": 1 / 3, "interpolation": "${not.resolved}", "yes": "true",
                            "none": None, "big": 2 ** 62}
        assert config_from_text(config_to_text(config)) == config
        assert json.dumps(config_from_text(config_to_text(config))) == json.dumps(config)  # the order too


# -- third-party files -------------------------------------------------------------------------

def test_teacher_checkpoints_refuse_malicious_files(tmp_path, marker):
    from gfcore.geometry.checkpoint import CheckpointError, read_state_dict
    from gfcore.geometry.dinov2 import DINOv2ViT, dinov2_config, load_dinov2_checkpoint

    for suffix in (".pt", ".pth", ".bin", ".ckpt"):
        evil = write_malicious(tmp_path / f"vggt{suffix}", marker)
        with pytest.raises(CheckpointError, match=rf"{PAYLOAD_GLOBAL}"):
            read_state_dict(evil)
    dino = DINOv2ViT(**dinov2_config("dinov2_vits14", embed_dim=24, depth=1, num_heads=2))
    with pytest.raises(CheckpointError, match=PAYLOAD_GLOBAL):
        load_dinov2_checkpoint(dino, write_malicious(tmp_path / "dinov2.pth", marker))


def test_metric_weights_and_clips_refuse_malicious_files(tmp_path, marker):
    from gfcore.metrics.clips import load_clip
    from gfcore.metrics.weights import load_state_dict_file

    evil = write_malicious(tmp_path / "alex.pth", marker)
    with pytest.raises(UnsafeFileError, match=PAYLOAD_GLOBAL):
        load_state_dict_file(evil, "LPIPS lin weights")
    with pytest.raises(UnsafeFileError, match=PAYLOAD_GLOBAL):
        load_clip(write_malicious(tmp_path / "clip0.pt", marker))


class _Scaled(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x


@pytest.mark.parametrize("network", ["i3d", "inception"])
def test_torchscript_needs_the_published_digest_or_trust(tmp_path, monkeypatch, network):
    """A TorchScript file is code: it reaches torch.jit.load only when its SHA-256 is the
    published file's or the user passes --trust-weights."""
    from gfcore.metrics import weights
    from gfcore.metrics.fvd import load_i3d
    from gfcore.metrics.rve import load_inception

    load = {"i3d": load_i3d, "inception": load_inception}[network]
    flag = {"i3d": "--i3d", "inception": "--inception"}[network]
    path = tmp_path / f"{network}.pt"
    torch.jit.script(_Scaled()).save(str(path))
    digest = sha256_of(path)
    jit_calls = []
    real_jit_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load", lambda *a, **k: jit_calls.append(a) or real_jit_load(*a, **k))

    monkeypatch.setitem(weights.PUBLISHED_SHA256, network, None)  # no digest recorded
    with pytest.raises(UnsafeFileError, match=rf"^{flag} .*: SHA-256 {digest} is not verified \(gfcore has no "
                                              rf"published digest recorded for it\).*--trust-weights"):
        load(path)
    monkeypatch.setitem(weights.PUBLISHED_SHA256, network, "0" * 64)  # another file's digest
    with pytest.raises(UnsafeFileError, match=f"the published file's is {'0' * 64}"):
        load(path)
    assert jit_calls == []
    torch.testing.assert_close(load(path, trust=True)(torch.ones(2)), torch.full((2,), 2.0))
    monkeypatch.setitem(weights.PUBLISHED_SHA256, network, digest.upper())  # the published file itself
    torch.testing.assert_close(load(path)(torch.ones(2)), torch.full((2,), 2.0))
    assert len(jit_calls) == 2


def test_eval_cli_refuses_an_unverified_torchscript(tmp_path, capsys):
    from gfcore.metrics.cli import main as eval_main

    for name in ("generated", "reference"):
        (tmp_path / name).mkdir()
        torch.save(torch.rand(4, 3, 8, 8), tmp_path / name / "clip0.pt")
    i3d = tmp_path / "i3d.pt"
    torch.jit.script(_Scaled()).save(str(i3d))
    code = eval_main(["--generated", str(tmp_path / "generated"), "--reference", str(tmp_path / "reference"),
                      "--out", str(tmp_path / "out"), "--i3d", str(i3d)])
    assert code == 2 and "--trust-weights" in capsys.readouterr().err


# -- the audit: no unsafe load anywhere in the package ------------------------------------------

TRUSTED_MARK = "# trusted: convert-checkpoint --trust"


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _keyword(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def audit(source: str, filename: str):
    """Unsafe loads in one file's source: [(line, why)]."""
    problems, lines = [], source.splitlines()
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            # pickle itself may be imported (for pickle.UnpicklingError); its loaders are caught below
            if any(n and n.split(".")[0] in ("cPickle", "dill", "cloudpickle", "marshal", "shelve") for n in names) or (
                    isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle")
                    and any(a.name in ("load", "loads", "Unpickler") for a in node.names)):
                problems.append((node.lineno, "imports an unpickler"))
            if isinstance(node, ast.ImportFrom) and node.module == "torch" and any(a.name == "load" for a in node.names):
                problems.append((node.lineno, "from torch import load (hides the call from this audit)"))
    for call, name in _calls(tree):
        line = lines[call.lineno - 1]
        if name.endswith("torch.load") or name == "load" and "torch" in line:
            only = _keyword(call, "weights_only")
            if not (isinstance(only, ast.Constant) and only.value is True) and TRUSTED_MARK not in line:
                problems.append((call.lineno, "torch.load without weights_only=True"))
        if name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in ("pickle", "dill", "marshal"):
            problems.append((call.lineno, f"{name}"))
        if name in ("np.load", "numpy.load"):
            allow = _keyword(call, "allow_pickle")
            if not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append((call.lineno, "np.load without allow_pickle=False"))
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all"):
            problems.append((call.lineno, f"{name} (use yaml.safe_load)"))
        if name.endswith("add_safe_globals"):
            problems.append((call.lineno, "widens torch's allowlist for the whole process (use safe_globals)"))
        if name == "torch.jit.load" and "verify_sha256" not in source:
            problems.append((call.lineno, "torch.jit.load without a digest check in the module"))
    return problems


def _package_sources():
    return sorted((ROOT / "gfcore").rglob("*.py")) + sorted((ROOT / "benchmarks").rglob("*.py"))


@pytest.mark.skipif(not (ROOT / "gfcore").is_dir(), reason="needs the source checkout")
def test_audit_finds_no_unsafe_load():
    found = {str(p.relative_to(ROOT)): audit(p.read_text(), str(p)) for p in _package_sources()}
    assert {k: v for k, v in found.items() if v} == {}
    trusted = [p for p in _package_sources() if TRUSTED_MARK in p.read_text()]
    assert [str(p.relative_to(ROOT)) for p in trusted] == ["gfcore/io/convert.py"]
    assert (ROOT / "gfcore/io/convert.py").read_text().count(TRUSTED_MARK) == 1


@pytest.mark.parametrize("planted, why", [
    ("state = torch.load(path)", "torch.load without weights_only=True"),
    ("state = torch.load(path, map_location='cpu', weights_only=False)", "torch.load without weights_only=True"),
    ("import pickle\nstate = pickle.load(open(path, 'rb'))", "pickle.load"),
    ("import pickle\nstate = pickle.loads(data)", "pickle.loads"),
    ("from pickle import loads", "imports an unpickler"),
    ("import numpy as np\nx = np.load(path, allow_pickle=True)", "np.load without allow_pickle=False"),
    ("import numpy as np\nx = np.load(path)", "np.load without allow_pickle=False"),
    ("import yaml\nx = yaml.load(text, Loader=yaml.Loader)", "yaml.load (use yaml.safe_load)"),
    ("torch.serialization.add_safe_globals([object])", "widens torch's allowlist"),
    ("m = torch.jit.load(path)", "torch.jit.load without a digest check"),
    ("from torch import load", "from torch import load"),
])
def test_audit_catches_planted_unsafe_loads(planted, why):
    problems = audit("import torch\n" + planted + "\n", "planted.py")
    assert problems and any(why in p for _, p in problems), problems


# -- the pieces of the converter and the loader, one by one ------------------------------------

def test_an_allowed_class_is_not_named_among_the_refused_ones(tmp_path, marker):
    from pathlib import PurePosixPath

    evil = write_malicious(tmp_path / "mixed.pt", marker, where=PurePosixPath("/a"))
    with pytest.raises(UnsafeFileError) as info:
        load_weights_only(evil, "file", allowed=[PurePosixPath])
    assert info.value.globals == [PAYLOAD_GLOBAL]
    with pytest.raises(UnsafeFileError, match=f"it asks for pathlib.PurePosixPath, {PAYLOAD_GLOBAL}, which") as info:
        load_weights_only(evil, "file")
    assert info.value.globals == sorted(["pathlib.PurePosixPath", PAYLOAD_GLOBAL])


def test_sha256_of_reads_the_whole_file_in_chunks(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    data = bytes(range(256)) * 9000  # 2.3 MB: more than one chunk
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()
    assert sha256_of(path, chunk_bytes=1000) == hashlib.sha256(data).hexdigest()


def test_same_values_compares_like_a_checkpoint_reader():
    import numpy as np

    from gfcore.io.convert import same_values

    t = torch.arange(4.0)
    assert same_values({"a": [t, (1, 2.5, None)], "b": "x"}, {"a": ((t.clone()), [1, 2.5, None]), "b": "x"})
    assert not same_values(t, t.double())                       # dtype
    assert not same_values(t, t.reshape(2, 2))                  # shape
    assert not same_values(t, t + 1)                            # values
    assert not same_values(t, t.tolist())                       # a tensor is not a list
    assert same_values(np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.uint32))
    assert not same_values(np.arange(3, dtype=np.uint32), np.arange(3, dtype=np.int64))
    assert not same_values(np.arange(3), np.arange(1, 4))
    assert same_values(float("nan"), float("nan")) and not same_values(float("nan"), 1.0)
    assert not same_values({"a": 1}, {"a": 1, "b": 2}) and not same_values({"a": 1}, {"a": 2})
    assert not same_values([1, 2], [1, 2, 3]) and not same_values([1, 2], [1, 3])
    assert not same_values(1, 1.0) and not same_values(True, 1)  # YAML keeps types: an int stays an int
    assert not same_values(torch.arange(3), np.arange(3)) and not same_values(np.arange(3), [0, 1, 2])
    assert not same_values(np.zeros((2, 2)), np.zeros(4)) and not same_values({"a": 1}, [("a", 1)])
    assert not same_values(float("nan"), "nan") and same_values((), [])
    assert not same_values([], "") and not same_values(["a"], "a")  # sequences only match sequences


def test_checkpoint_files_of_a_run_folder(tmp_path):
    from gfcore.io.convert import checkpoint_files

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("step_00000004.pt", "step_00000002.pt", "step_00000002.pt.corrupt", "notes.txt"):
        (run / "checkpoints" / name).write_bytes(b"")
    (run / "final.pt").write_bytes(b"")
    assert checkpoint_files(str(run)) == [str(run / "final.pt"), str(run / "checkpoints" / "step_00000002.pt"),
                                          str(run / "checkpoints" / "step_00000004.pt")]
    assert checkpoint_files(str(run / "final.pt")) == [str(run / "final.pt")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^convert-checkpoint: '.*empty' holds no final.pt and no "
                                                r"checkpoints/step_\*.pt$"):
        checkpoint_files(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match=r"^convert-checkpoint: no such file or folder '.*absent'$"):
        checkpoint_files(str(tmp_path / "absent"))


def _legacy_file(path):
    import random

    import numpy as np

    state = {"model": {"w": torch.arange(3.0)}, "config": {"seed": 3, "train": {"lr": 3e-4}}, "step": 2,
             "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]}
    torch.save(state, path)
    return state


def test_convert_keeps_every_earlier_original(tmp_path, capsys):
    from gfcore.io.convert import same_values

    path = tmp_path / "final.pt"
    first = _legacy_file(path)
    (tmp_path / "final.pt.legacy").write_bytes(b"an older original")
    assert convert_main([str(path), "--trust"]) == 0
    assert f"converted (the original is kept as {path}.legacy.1)" in capsys.readouterr().out
    assert (tmp_path / "final.pt.legacy").read_bytes() == b"an older original"
    assert same_values(torch.load(f"{path}.legacy.1", weights_only=False), first)
    assert same_values(read_checkpoint(path), first) and not (tmp_path / "final.pt.converted").exists()


def test_convert_leaves_the_file_when_it_does_not_read_back_equal(tmp_path, monkeypatch, capsys):
    import gfcore.io.convert as convert

    path = tmp_path / "final.pt"
    _legacy_file(path)
    before = path.read_bytes()
    monkeypatch.setattr(convert, "same_values", lambda a, b: False)
    assert convert_main([str(path), "--trust"]) == 2
    assert "does not read back equal to the original; left unchanged" in capsys.readouterr().err
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["final.pt"]


def test_convert_cli_messages(tmp_path, capsys):
    path = tmp_path / "step_00000002.pt"
    _legacy_file(path)
    assert convert_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gfcore convert-checkpoint: error: converting unpickles the old files, which can run "
                          "code; pass --trust")
    from gfcore.cli import main as gfcore_main

    assert gfcore_main(["convert-checkpoint", str(path), "--trust"]) == 0
    assert capsys.readouterr().out == f"{path}: converted (the original is kept as {path}.legacy)\n"
    assert gfcore_main(["convert-checkpoint", str(path), "--trust"]) == 0
    assert capsys.readouterr().out == f"{path}: already in the safe format\n"


def test_refusal_names_every_class_of_zip_and_legacy_files(tmp_path, marker):
    """Zip files: every class the pickle asks for (read without running it); legacy (non-zip)
    files: the one torch names when it refuses."""
    from pathlib import PurePosixPath

    evil = write_malicious(tmp_path / "mixed.pt", marker, where=PurePosixPath("/a"))
    with pytest.raises(LegacyCheckpointError) as info:
        read_checkpoint(evil)
    assert info.value.globals == ["pathlib.PurePosixPath", PAYLOAD_GLOBAL]
    assert f"it asks for pathlib.PurePosixPath, {PAYLOAD_GLOBAL} when loaded" in str(info.value)
    old_style = tmp_path / "old_style.pt"
    from malicious_files import RunsCommand

    torch.save({"payload": RunsCommand(marker)}, old_style, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeFileError, match=rf"^weights {str(old_style)!r}: refused, not loaded: it asks for "
                                              rf"{PAYLOAD_GLOBAL}, which") as info:
        load_weights_only(old_style, "weights")
    assert info.value.globals == [PAYLOAD_GLOBAL]


def test_checkpoints_without_the_marker_or_of_another_format(tmp_path):
    """A pre-safe final.pt can hold only plain containers and so load safely: it is refused all the
    same (no marker), with the convert command; another format number is named."""
    plain = tmp_path / "final.pt"
    torch.save({"model": {"w": torch.ones(2)}, "config": {"seed": 0}}, plain)
    with pytest.raises(LegacyCheckpointError) as info:
        read_checkpoint(plain)
    assert str(info.value).startswith(f"{plain}: it is not in gfcore's safe checkpoint format (no 'gfcore_format' "
                                      f"key). gfcore reads checkpoints with weights_only=True")
    assert str(info.value).endswith(f"gfcore convert-checkpoint {plain} --trust")
    newer = tmp_path / "newer.pt"
    torch.save({"gfcore_format": 3, "model": {}}, newer)
    with pytest.raises(ValueError, match=rf"^{newer}: checkpoint format 3, this gfcore reads format 2 \(written by "
                                         rf"another gfcore version: use that version, or upgrade gfcore\)$"):
        read_checkpoint(newer)


def test_packed_rng_layout_and_a_cuda_state_round_trip():
    import random

    import numpy as np

    from gfcore.io.checkpoint_file import pack_rng, unpack_rng

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "cuda": [torch.arange(16, dtype=torch.uint8), torch.arange(8, dtype=torch.uint8)]}
    packed = pack_rng(state)
    assert packed["python"]["state"].dtype == torch.int64 and packed["numpy"]["keys"].dtype == torch.int64
    assert [t.tolist() for t in packed["cuda"]] == [list(range(16)), list(range(8))]
    back = unpack_rng(packed)
    assert back["numpy"][1].dtype == np.uint32 and np.array_equal(back["numpy"][1], state["numpy"][1])
    assert back["python"] == state["python"] and back["numpy"][2:] == state["numpy"][2:]
    assert [torch.equal(a, b) for a, b in zip(back["cuda"], state["cuda"])] == [True, True]
    assert "cuda" not in unpack_rng(pack_rng({k: v for k, v in state.items() if k != "cuda"}))
    with pytest.raises(ValueError, match="^numpy generator 'PCG64': only MT19937 states can be saved$"):
        pack_rng({**state, "numpy": ("PCG64",) + state["numpy"][1:]})


def test_config_text_keeps_the_key_order():
    from gfcore.io.checkpoint_file import config_from_text, config_to_text

    config = {"train": {"steps": 2, "lr": 1e-4}, "model": {"depth": 2}, "a": [3, 1]}
    assert list(config_from_text(config_to_text(config))) == ["train", "model", "a"]
    assert list(config_from_text(config_to_text(config))["train"]) == ["steps", "lr"]


def test_convert_refuses_dicts_without_model_and_config(tmp_path, capsys):
    for content, shown in (({"model": {}, "step": 1}, "got dict with ['model', 'step']"),
                           ([1, 2], "got list)")):
        path = tmp_path / "ckpt.pt"
        torch.save(content, path)
        assert convert_main([str(path), "--trust"]) == 2
        assert shown in capsys.readouterr().err
    many = {"model": {}, **{f"key{i:03d}": 0 for i in range(40)}}
    path = tmp_path / "many.pt"
    torch.save(many, path)
    assert convert_main([str(path), "--trust"]) == 2
    assert f"got dict with {str(sorted(many))[:200]})" in capsys.readouterr().err  # the key list cut at 200
    path = tmp_path / "minimal.pt"
    torch.save({"model": {"w": torch.ones(1)}, "config": {"seed": 1}}, path)  # exactly the two keys
    assert convert_main([str(path), "--trust"]) == 0
    assert read_checkpoint(path)["config"] == {"seed": 1}


def test_convert_free_name_counts_up(tmp_path, capsys):
    path = tmp_path / "final.pt"
    _legacy_file(path)
    for name in ("final.pt.legacy", "final.pt.legacy.1"):
        (tmp_path / name).write_bytes(b"older")
    assert convert_main([str(path), "--trust"]) == 0
    assert f"kept as {path}.legacy.2)" in capsys.readouterr().out


def test_convert_help_says_what_it_does(capsys):
    with pytest.raises(SystemExit) as info:
        convert_main(["--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: gfcore convert-checkpoint [-h] [--trust] path")
    assert "Rewrite checkpoints of earlier gfcore versions (pickles) in the safe format that gfcore reads with " \
           "weights_only=True. Loading a pickle can run code: only for files you trust." in out
    assert " path a checkpoint file, or a run folder (final.pt and checkpoints/step_*.pt) options:" in out
    assert out.endswith(" --trust required: you trust these files (they are unpickled once to convert them)")


def test_verify_sha256_refuses_by_default(tmp_path):
    from gfcore.io.safe_load import verify_sha256

    path = tmp_path / "net.pt"
    path.write_bytes(b"code")
    with pytest.raises(UnsafeFileError, match=rf"^net {str(path)!r}: SHA-256 {sha256_of(path)} is not verified"):
        verify_sha256(path, None, "net", "--trust-weights")
    assert verify_sha256(path, None, "net", "--trust-weights", trusted=True) == sha256_of(path)
