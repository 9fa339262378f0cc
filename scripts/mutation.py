"""Mutation testing of gfcore's core modules with mutmut, one module at a time.

    python scripts/mutation.py [MODULE ...]      # default: every module below, in order
    python scripts/mutation.py --list            # the modules and their test files
    python scripts/mutation.py --report          # only rewrite the table from saved results
    python scripts/mutation.py --survivors MODULE  # after adding tests: only the saved run's survivors again

For each module a scratch copy of the checkout (gfcore/ with its compiled extension, and
python_tests/) is made under $MUTATION_WORKDIR (default /tmp/gfcore-mutation/MODULE), mutmut
mutates only that module's files there and runs only the module's test files (mutmut further
narrows each mutant to the tests that call the mutated function). The verdicts are saved to
benchmarks/results/mutation/MODULE.json and the table benchmarks/results/mutation.md is
rebuilt from every saved module ("not run" for the others).

Surviving mutants that cannot be killed because they do not change behaviour are listed, with
the reason, in benchmarks/mutation_equivalent.json ({"mutant name": "reason"}); the score is
killed / (mutants - equivalent). Mutants that no selected test reaches ("no tests") count as
not killed. mutmut must be importable by the Python running this script (pip install mutmut),
and gfcore must be built in place (python setup.py build_ext --inplace) so the copy carries
its extension. Single process (max-children 1): the runs are CPU-heavy.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "mutation"
TABLE = ROOT / "benchmarks" / "results" / "mutation.md"
EQUIVALENT = ROOT / "benchmarks" / "mutation_equivalent.json"

# `python -m mutmut` with one fix: mutmut 3.8's fork server queues a wall-clock SIGXCPU for each
# mutant's process id and never cancels it, so at the deadline it signals whatever process holds that
# id by then. Ids wrap at 32768 here: a second mutmut run beside it, or a test's subprocess, was
# killed that way (a survivors rerun ended with exit code -24). The deadline now fires only while the
# id still names the process it was queued for (same start time in /proc).
MUTMUT = r"""
import os, signal, sys, threading

import mutmut.workers.isolation as isolation
import mutmut.workers.timeout as timeout


def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def register_timeout(pid, timeout_s):
    birth = started(pid)

    def expire():
        if birth is not None and started(pid) == birth:
            try:
                os.kill(pid, signal.SIGXCPU)
            except ProcessLookupError:
                pass

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()


timeout.register_timeout = isolation.register_timeout = register_timeout
from mutmut.__main__ import cli

sys.argv[0] = "mutmut"
cli()
"""

# module -> (files mutated, test files run, extra pytest arguments)
MODULES = {
    # torch.compile(fullgraph=True) cannot trace through mutmut's trampolines: those tests are left out
    "losses": ([f"gfcore/losses/{name}.py" for name in ("__init__", "alignment", "chunked_path", "fused_path",
                                                        "modular_path", "reference", "targets")],
               ["test_alignment_loss.py", "test_alignment_dropin.py", "test_alignment_ops.py", "test_alignment_ddp.py"],
               ["-k", "not compile and not across_ranks and not callers_line"]),
    # the in-process tests of the check; the 2-rank ones run in spawned processes, which do not see mutants
    "losses/sync_check.py": (["gfcore/losses/sync_check.py"], ["test_alignment_ddp.py"],
                             ["-k", "not across_ranks and not callers_line"]),
    "functional.py": (["gfcore/functional.py"], ["test_functional.py"], ["-k", "not compile"]),
    "hidden_states.py": (["gfcore/hidden_states.py"], ["test_hidden_states.py", "test_dropin_clients.py"],
                         ["-k", "not compile"]),
    "train/optim.py": (["gfcore/train/optim.py"], ["test_train_optim.py"], []),
    "train/objective.py": (["gfcore/train/objective.py"], ["test_train_objective.py", "test_prediction_options.py",
                                                          "test_train_align_start.py"], []),
    "metrics/psnr_ssim.py": (["gfcore/metrics/psnr_ssim.py"], ["test_metrics_psnr_ssim.py"], []),
    "sample/sampler.py": (["gfcore/sample/sampler.py"], ["test_sample_sampler.py", "test_sample_history_guidance.py"], []),
    "train/checkpoint.py": (["gfcore/train/checkpoint.py"], ["test_train_resume.py"], ["-k", "not sigkilled"]),
    "train/data.py": (["gfcore/train/data.py"], ["test_train_data.py", "test_train_prefetch.py"], []),
    "metrics/rpe.py": (["gfcore/metrics/rpe.py"], ["test_metrics_rpe.py"], []),
    "metrics/rve.py": (["gfcore/metrics/rve.py"], ["test_metrics_rve_curves.py", "test_safe_loading.py"],
                       ["-k", "not audit_finds"]),
    "metrics/fvd.py": (["gfcore/metrics/fvd.py"], ["test_metrics_fvd.py", "test_safe_loading.py"],
                       ["-k", "not audit_finds"]),
    "models/dit.py": (["gfcore/models/dit.py"], ["test_models_dit.py", "test_prediction_options.py"], []),
    "ops/*_reference.py": (["gfcore/ops/alignment_reference.py", "gfcore/ops/attention_reference.py"],
                           ["test_alignment_ops.py", "test_attention_cpu.py"], ["-k", "not compile"]),
    "data/geometry.py": (["gfcore/data/geometry.py"], ["test_data_geometry.py"], []),
    "data/camera_file.py": (["gfcore/data/camera_file.py"], ["test_data_re10k.py", "test_data_geometry.py"], []),
    "data/re10k.py": (["gfcore/data/re10k.py"], ["test_data_re10k.py"], []),
    # the source audit reads mutmut's rewritten files (every mutant's code side by side): left out
    "io/*.py": (["gfcore/io/*.py"], ["test_safe_loading.py", "test_train_resume.py", "test_data_re10k.py"],
                ["-k", "not sigkilled and not audit_finds"]),
    "torch_support.py": (["gfcore/torch_support.py"], ["test_torch_support.py"], []),
    "train/resume.py": (["gfcore/train/resume.py"], ["test_train_resume_guard.py", "test_train_resume.py",
                                                    "test_safe_loading.py"], ["-k", "not sigkilled and not audit_finds"]),
    "metrics/weights.py": (["gfcore/metrics/weights.py"], ["test_metrics_weights.py", "test_metrics_fvd.py",
                                                          "test_metrics_rve_curves.py", "test_metrics_lpips.py",
                                                          "test_safe_loading.py"],
                           ["-k", "not audit_finds"]),
    "geometry/checkpoint.py": (["gfcore/geometry/checkpoint.py"], ["test_geometry_checkpoint.py",
                                                                  "test_geometry_dinov2.py", "test_safe_loading.py"],
                               ["-k", "not audit_finds"]),
    "sample/ddim.py + dfot_*.py": (["gfcore/sample/ddim.py", "gfcore/sample/dfot_guidance.py",
                                    "gfcore/sample/dfot_protocol.py"], ["test_dfot_protocol.py", "test_dfot_diffusion.py"],
                                   []),
    "models/dfot/*.py": (["gfcore/models/dfot/*.py"], ["test_models_dfot.py", "test_dfot_diffusion.py",
                                                      "test_dfot_protocol.py"], []),
    "data/dfot_*.py": (["gfcore/data/dfot_clips.py", "gfcore/data/dfot_files.py", "gfcore/data/dfot_re10k.py"],
                       ["test_data_dfot.py", "test_train_data_dfot.py"], []),
    "models/build.py": (["gfcore/models/build.py"], ["test_models_build.py", "test_train_dfot.py", "test_sample_dfot_cli.py"],
                        []),
    "train/dfot.py + dfot_data.py + models.py": (["gfcore/train/dfot.py", "gfcore/train/dfot_data.py",
                                                  "gfcore/train/models.py"],
                                                 ["test_train_dfot.py", "test_train_data_dfot.py",
                                                  "test_sample_dfot_cli.py"], []),
    "data/build.py": (["gfcore/data/build.py"], ["test_train_data.py"], []),
    "train/plan.py + memory.py": (["gfcore/train/plan.py", "gfcore/train/memory.py"], ["test_train_plan.py"], []),
    "models/checkpointing.py": (["gfcore/models/checkpointing.py"], ["test_models_dit.py", "test_train_speed_switches.py",
                                                                    "test_train_plan.py"], ["-k", "not compile"]),
    "sample/dfot_run.py + run.py + progress.py, metrics/protocol.py": (
        ["gfcore/sample/dfot_run.py", "gfcore/sample/run.py", "gfcore/sample/progress.py", "gfcore/metrics/protocol.py"],
        ["test_sample_dfot_cli.py", "test_sample_progress.py", "test_dfot_protocol.py", "test_docs.py",
         "test_demo_main.py", "test_safe_loading.py"],  # the last two: VideoDiT rollouts, load_trained_model
        ["-k", "not python_block_runs"]),  # test_docs' blocks run in subprocesses, which see no mutants
    "train/trainer.py (resume path)": (["gfcore/train/trainer.py"], ["test_train_resume.py", "test_train_resume_guard.py"],
                                       ["-k", "not sigkilled"]),
}

# Rows whose mutants cannot change what test_sample_dfot_cli's fixtures make (runs trained, data
# written, by code the row does not mutate): their tests make those once per row (GFCORE_TEST_CACHE)
# instead of once per mutant.
FIXTURE_CACHE_ROWS = ("sample/dfot_run.py + run.py + progress.py, metrics/protocol.py",)


def mutant_env(module: str, workdir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(workdir))
    if module in FIXTURE_CACHE_ROWS:
        env["GFCORE_TEST_CACHE"] = str(workdir / "fixture_cache")
    return env


# trainer.py: only its resume path is mutated. mutmut 3.8.1 applies do_not_mutate_patterns to the
# matching lines alone (a pattern matching a `def` line leaves the function's body mutated), so the
# scratch copy is marked with mutmut's pragmas instead: every top-level function or class outside
# the resume path gets "# pragma: no mutate block" on its header line (mutmut skips it whole), and
# _train_in_group()'s statements outside its resume blocks are enclosed in "# pragma: no mutate start" /
# "# pragma: no mutate end" comment lines.
# What stays mutated: JsonlLog (drops the log lines after the resumed step), the checkpoint's
# state (_full_state_dict, _optimizer_state, _state_for_checkpoint), its loading (_load_optimizer,
# _apply_hyperparameters) and the resume blocks of _train_in_group() (train's run once the process group exists).
TRAINER_RESUME = ("JsonlLog", "_full_state_dict", "_optimizer_state", "_load_optimizer", "_state_for_checkpoint",
                  "_apply_hyperparameters", "_train_in_group")
TRAINER_SKIP = ("CrashForTesting", "CachedTargetsBatcher", "TrainModule", "StepParts", "optimizer_step",
                "resolve_device", "build_alignment",
                "model_config", "build_training", "_progress", "_precision", "_wrap", "fsdp_mixed_precision",
                "configure_model", "_sample_every", "SampleVideos", "_history_guidance", "_utc_now", "alignment_start", "train",
                "_launch_local_rank", "_launch_world_size", "_on_device", "check_memory_switches", "draw_step_noise",
                "ema_device", "fsdp_offload", "grad_accum", "slice_batch", "train_objective")
# (first statement, first statement after) of each resume block of _train_in_group(): finding and checking
# the checkpoint and loading the weights, and restoring optimizer, scheduler, EMA, step and RNG.
RESUME_BLOCKS = [("found, unreadable = find_checkpoint(", "if info.is_main:"),
                 ("start_step = 0", "with_depth = ")]
PRAGMA_BLOCK = "  # pragma: no mutate block"
PRAGMA_START, PRAGMA_END = "# pragma: no mutate start", "# pragma: no mutate end"


def mark_trainer_resume_path(path: Path) -> None:
    import ast

    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    top = {node.name: node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    unknown, missing = set(top) - set(TRAINER_SKIP + TRAINER_RESUME), set(TRAINER_SKIP + TRAINER_RESUME) - set(top)
    if unknown or missing:
        raise SystemExit(f"mutation.py: update TRAINER_RESUME / TRAINER_SKIP for {path}: "
                         f"not classified {sorted(unknown)}, gone {sorted(missing)}")
    inserts = []  # (0-based line index, comment line inserted before it)
    for name in TRAINER_SKIP:
        header = top[name].body[0].lineno - 2  # the line ending the def / class header, just above its body
        if not lines[header].rstrip().endswith(":"):
            raise SystemExit(f"mutation.py: {name}'s header does not end on line {header + 1} of {path}")
        lines[header] += PRAGMA_BLOCK
    # _train_in_group(): regions of consecutive top-level statements outside the resume blocks
    body, block, regions = top["_train_in_group"].body, None, []
    for stmt in body:
        text = lines[stmt.lineno - 1].strip()
        for first, after in RESUME_BLOCKS:
            if text.startswith(first):
                block = after
        if block is not None and text.startswith(block) and not any(text.startswith(f) for f, _ in RESUME_BLOCKS):
            block = None
        if block is None:
            if regions and regions[-1][1] == stmt_index(body, stmt) - 1:
                regions[-1][1] += 1
            else:
                regions.append([stmt_index(body, stmt)] * 2)
    found = [first for first, _ in RESUME_BLOCKS
             if not any(lines[s.lineno - 1].strip().startswith(first) for s in body)]
    if found:
        raise SystemExit(f"mutation.py: resume block starts {found} are no longer statements of _train_in_group() in {path}")
    for first, last in regions:
        indent = " " * body[first].col_offset
        inserts += [(body[first].lineno - 1, indent + PRAGMA_START), (body[last].end_lineno, indent + PRAGMA_END)]
    for index, comment in sorted(inserts, reverse=True):
        lines.insert(index, comment)
    text = "\n".join(lines) + "\n"
    compile(text, str(path), "exec")  # the marks must leave valid Python
    path.write_text(text)


def stmt_index(body, stmt) -> int:
    return next(i for i, s in enumerate(body) if s is stmt)


def unmark(text: str) -> str:
    """A marked trainer.py without its marks (to compare it with the checkout)."""
    kept = [line.replace(PRAGMA_BLOCK, "") for line in text.splitlines()
            if line.strip() not in (PRAGMA_START, PRAGMA_END)]
    return "\n".join(kept) + "\n"


STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault"}


def slug(module: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in module.split(" ")[0]).strip("_")


def prepare(module: str, workdir: Path) -> None:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "gfcore", workdir / "gfcore", ignore=ignore)
    shutil.copytree(ROOT / "python_tests", workdir / "python_tests", ignore=ignore)
    shutil.copytree(ROOT / "docs", workdir / "docs", ignore=ignore)  # test_docs reads the pages and the README
    shutil.copy2(ROOT / "README.md", workdir / "README.md")
    shutil.copytree(ROOT / "scripts", workdir / "scripts", ignore=ignore)  # tests that run a script (any_batch_check)
    if not list((workdir / "gfcore").glob("_C*.so")):  # no in-place build: take the installed extension
        found = subprocess.run([sys.executable, "-c", "import gfcore._C as c; print(c.__file__)"], cwd="/",
                               capture_output=True, text=True).stdout.strip()
        if found:
            shutil.copy2(found, workdir / "gfcore")
        else:
            print("warning: no compiled gfcore._C found; tests needing the kernels will skip", file=sys.stderr)
    write_setup_cfg(module, workdir)
    if module.startswith("train/trainer.py"):
        mark_trainer_resume_path(workdir / "gfcore" / "train" / "trainer.py")


def write_setup_cfg(module: str, workdir: Path) -> None:
    """mutmut's configuration in the scratch folder: the files mutated and the module's tests."""
    files, tests, extra = MODULES[module]
    lines = ["[mutmut]", "source_paths = gfcore", "also_copy =", "    python_tests", "    docs", "    README.md", "    scripts",
             "only_mutate ="]
    lines += [f"    {f}" for f in files]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    python_tests/{t}" for t in tests]
    lines += ["pytest_add_cli_args ="] + [f"    {a}" for a in ["-p", "no:cacheprovider", "-q", *extra]]
    lines += ["process_isolation = forkserver", "timeout_multiplier = 10.0", "timeout_constant = 5.0",
              "use_git_change_detection = false"]
    (workdir / "setup.cfg").write_text("\n".join(lines) + "\n")


def collect(module: str, workdir: Path) -> dict:
    """Verdict of every mutant of the module's files, from mutmut's per-file .meta records."""
    verdicts = {}
    for meta in sorted((workdir / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            verdicts[name] = "not checked" if code is None else STATUS.get(code, "suspicious")
    return verdicts


def source_hashes(module: str, root: Path) -> dict:
    """sha256 of each file the module's run mutates (as checked out under root), to tell later
    whether a saved score still describes the code."""
    import hashlib

    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for pattern in MODULES[module][0] for f in sorted(root.glob(pattern))}


def mutant_diff(name: str, workdir: Path, python: str, env: dict) -> str:
    """The changed lines of one mutant (`mutmut show`), '-' original and '+' mutated."""
    shown = subprocess.run([python, "-m", "mutmut", "show", name], cwd=workdir, env=env, capture_output=True,
                           text=True).stdout
    lines = [line for line in shown.splitlines()
             if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return " / ".join(" ".join(line.split()) for line in lines)


def run_module(module: str, base: Path, python: str, resume: bool = False) -> dict:
    workdir = base / slug(module)
    if resume and (workdir / "mutants").is_dir():
        print(f"continuing the interrupted run in {workdir} (tests as copied then)", flush=True)
    else:
        prepare(module, workdir)
    sources = source_hashes(module, ROOT)  # the code this run mutates (copied just now)
    env = mutant_env(module, workdir)
    started = datetime.datetime.now()
    print(f"== {module}: mutmut in {workdir}", flush=True)
    run = subprocess.run([python, "-c", MUTMUT, "run", "--max-children", "1"], cwd=workdir, env=env)
    verdicts = collect(module, workdir)
    if run.returncode != 0 or not verdicts:
        print(f"mutmut failed on {module} (exit code {run.returncode}); no results saved", file=sys.stderr)
        return {}
    diffs = {name: mutant_diff(name, workdir, python, env) for name, v in verdicts.items()
             if v not in ("killed", "timeout", "segfault", "not checked")}
    record = {"module": module, "files": MODULES[module][0], "tests": MODULES[module][1],
              "pytest_args": MODULES[module][2], "mutmut_exit_code": run.returncode,
              "date": started.strftime("%Y-%m-%d %H:%M"),
              "minutes": round((datetime.datetime.now() - started).total_seconds() / 60, 1), "verdicts": verdicts,
              "sources": sources,
              "diffs": diffs}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{slug(module)}.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def rerun_survivors(module: str, base: Path, python: str) -> dict:
    """Test again, with the current tests, only the mutants of the module's saved run that were not
    killed, in that run's scratch copy. Sound while the mutated files are unchanged since that run
    and tests were only added or strengthened: a mutant killed then is killed now. Refused when a
    mutated file differs from the checkout (then a full run is needed)."""
    workdir = base / slug(module)
    path = RESULTS / f"{slug(module)}.json"
    if not path.exists() or not (workdir / "mutants").is_dir():
        raise SystemExit(f"{module}: no saved run with its scratch copy in {workdir}; run it in full first")
    record = json.loads(path.read_text())
    for pattern in MODULES[module][0]:
        for source in ROOT.glob(pattern):
            copy = workdir / source.relative_to(ROOT)
            if module.startswith("train/trainer.py"):
                changed = source.read_text() != unmark(copy.read_text())
            else:
                changed = source.read_bytes() != copy.read_bytes()
            if changed:
                raise SystemExit(f"{module}: {source.relative_to(ROOT)} changed since the saved run; run it in full")
    names = sorted(n for n, v in record["verdicts"].items() if v not in ("killed", "timeout", "segfault"))
    if not names:
        return record
    shutil.copytree(ROOT / "python_tests", workdir / "python_tests", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.rmtree(workdir / "docs", ignore_errors=True)  # test_docs reads the current pages
    shutil.copytree(ROOT / "docs", workdir / "docs")
    shutil.copy2(ROOT / "README.md", workdir / "README.md")
    shutil.rmtree(workdir / "scripts", ignore_errors=True)
    shutil.copytree(ROOT / "scripts", workdir / "scripts")
    shutil.rmtree(workdir / "fixture_cache", ignore_errors=True)  # made by the tests as they were then
    write_setup_cfg(module, workdir)  # the module's current test files (a test file added: more tests)
    (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # which test calls what: traced again
    env = mutant_env(module, workdir)
    started = datetime.datetime.now()
    print(f"== {module}: the {len(names)} mutants not killed on {record['date']}, again in {workdir}", flush=True)
    run = subprocess.run([python, "-c", MUTMUT, "run", "--max-children", "1", *names], cwd=workdir, env=env)
    verdicts = collect(module, workdir)
    if run.returncode != 0 or any(verdicts.get(n) in (None, "not checked") for n in names):
        print(f"mutmut failed on {module} (exit code {run.returncode}); no results saved", file=sys.stderr)
        return {}
    record["verdicts"].update({n: verdicts[n] for n in names})
    record["sources"] = source_hashes(module, ROOT)  # checked above: the same code as the saved run's
    record["tests"], record["pytest_args"] = MODULES[module][1], MODULES[module][2]
    record["diffs"] = {n: record["diffs"].get(n) or mutant_diff(n, workdir, python, env) for n in names
                       if record["verdicts"][n] not in ("killed", "timeout", "segfault")}
    record.setdefault("survivor_reruns", []).append(
        {"date": started.strftime("%Y-%m-%d %H:%M"), "mutants": len(names),
         "minutes": round((datetime.datetime.now() - started).total_seconds() / 60, 1)})
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record


def rounding_only(reason: str) -> bool:
    """An entry of the equivalents file that changes results by rounding only: not equivalent, so it
    counts as a survivor (it stays listed with its reason), though no tolerance-based test can kill it."""
    return reason.startswith("equivalent up to rounding")


def write_table() -> None:
    equivalent = json.loads(EQUIVALENT.read_text()) if EQUIVALENT.exists() else {}
    rows, details = [], []
    for module in MODULES:
        path = RESULTS / f"{slug(module)}.json"
        if not path.exists():
            rows.append(f"| {module} | not run | | | | | |")
            continue
        record = json.loads(path.read_text())
        verdicts = record["verdicts"]
        killed = sum(v in ("killed", "timeout", "segfault") for v in verdicts.values())
        equiv = [n for n, v in verdicts.items() if v != "killed" and n in equivalent and not rounding_only(equivalent[n])]
        accepted = [n for n, v in verdicts.items() if v != "killed" and n in equivalent and rounding_only(equivalent[n])]
        left = [n for n, v in verdicts.items() if v not in ("killed", "timeout", "segfault") and n not in equivalent]
        scored = len(verdicts) - len(equiv)
        score = f"{100 * killed / scored:.1f} %" if scored else "n/a"
        run = f"{record['date']} ({record['minutes']} min)"
        for again in record.get("survivor_reruns", []):
            run += f"; its {again['mutants']} survivors again {again['date']} ({again['minutes']} min)"
        if "sources" in record and record["sources"] != source_hashes(module, ROOT):
            run += "; **the code changed since: score stale, rerun in full**"
        survived = f"{len(left) + len(accepted)}" + (f" ({len(accepted)} rounding-level, accepted)" if accepted else "")
        rows.append(f"| {module} | {len(verdicts)} | {killed} | {survived} | {len(equiv)} | {score} | {run} |")
        if left or equiv or accepted:
            details.append(f"\n### {module}\n")
            diffs = record.get("diffs", {})
            details += [f"- `{n}`: **{verdicts[n]}**: `{diffs.get(n, '')}`" for n in sorted(left)]
            details += [f"- `{n}`: equivalent ({equivalent[n]}): `{diffs.get(n, '')}`" for n in sorted(equiv)]
            details += [f"- `{n}`: **survived, accepted** ({equivalent[n]}): `{diffs.get(n, '')}`" for n in sorted(accepted)]
    text = ["# Mutation testing (mutmut)", "",
            "`make mutation` (or `python scripts/mutation.py [MODULE ...]`) regenerates this file; "
            "score = killed / (mutants - equivalent). Timeouts count as killed; \"no tests\" (no selected "
            "test reaches the mutated function) counts as survived. Mutants that change results by rounding only "
            "(\"equivalent up to rounding\" in benchmarks/mutation_equivalent.json) are not equivalent: they count "
            "as survived and are listed as accepted, with the reason no test can kill them.", "",
            "| module | mutants | killed | survived | equivalent | score | run |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |", *rows]
    if details:
        text += ["", "## Mutants not killed", *details]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(text) + "\n")
    print(f"wrote {TABLE}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules to run (names as in --list); default: all")
    parser.add_argument("--list", action="store_true", help="print the modules and their test files")
    parser.add_argument("--report", action="store_true", help="only rebuild the table from saved results")
    parser.add_argument("--python", default=sys.executable, help="the Python that has torch and mutmut")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="finish an interrupted run in its scratch folder instead of starting afresh")
    parser.add_argument("--survivors", action="store_true",
                        help="test again only the mutants the saved run did not kill (after adding tests; "
                             "the mutated files must be unchanged and the scratch folder still there)")
    args = parser.parse_args(argv)
    if args.list:
        for module, (files, tests, extra) in MODULES.items():
            print(f"{module}: {' '.join(files)} <- {' '.join(tests)} {' '.join(extra)}")
        return 0
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"unknown modules {unknown}; see --list")
    if not args.report:
        base = Path(os.environ.get("MUTATION_WORKDIR", "/tmp/gfcore-mutation"))
        for module in args.modules or list(MODULES):
            if args.survivors:
                rerun_survivors(module, base, args.python)
            else:
                run_module(module, base, args.python, args.resume)
    write_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
