"""benchmarks/bench_attention.py without a GPU: the dispatch table it writes (pure python, from
synthetic rows), the derived figures and the goal verdicts, the refusal handling, and one tiny
CPU run of the whole script."""
import json
import sys
from pathlib import Path

import pytest
import torch

# The benchmarks are not installed with the package: import them from the checkout, appended
# so that the installed gfcore (with its compiled extension) stays the one imported.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks import bench_attention as bench  # noqa: E402
from benchmarks.bytes_model import attention_cost, datasheet_hbm_tbps  # noqa: E402
from gfcore.ops import attention as attn  # noqa: E402
from gfcore.ops import attention_dispatch as dispatch  # noqa: E402


def _row(impl, ms, section="temporal", t=16, d=64, causal=False, dtype="bfloat16", mode="fwd+bwd", status="ok",
         correct=True, p=1024, b=4):
    shape = [b, t, p, 1024 // d, d]
    return dict(section=section, shape_name=f"T={t} D={d}", shape_BTPHD=shape, dtype=dtype, causal=causal,
                impl=impl, mode=mode, status=status, correct=correct, median_ms=ms)


# ---- the dispatch table ----------------------------------------------------------------------------

def test_dispatch_entries_pick_the_fastest_correct_per_temporal_key():
    rows = [_row("fused", 1.0), _row("reference", 3.0), _row("sdpa-flash", 0.5),  # not a candidate
            _row("fused", 2.0, causal=True, correct=False), _row("reference", 3.0, causal=True),
            _row("fused", 1.0, t=64, d=128), _row("reference", 0.9, t=64, d=128),
            _row("fused", 0.1, t=8, mode="forward"), _row("reference", 5.0, t=8, mode="forward"),  # fwd only
            _row("fused", 1.0, t=32, status="unsupported: no kernel"), _row("reference", 2.0, t=32)]
    entries = {(e["seq_len"], e["head_dim"], e.get("causal")): e for e in bench.dispatch_entries(rows)}
    assert set(entries) == {(16, 64, False), (16, 64, True), (64, 128, False), (32, 64, False)}
    assert entries[(16, 64, False)]["impl"] == "fused"
    assert entries[(16, 64, False)]["median_ms"] == {"fused": 1.0, "reference": 3.0}
    assert entries[(16, 64, True)]["impl"] == "reference"  # fused faster but wrong
    assert entries[(64, 128, False)]["impl"] == "reference"  # reference faster
    assert entries[(32, 64, False)]["impl"] == "reference"  # fused refused the shape
    for e in entries.values():
        assert e["mode"] == "temporal" and e["dtype"] == "bfloat16" and e["rope"] is False
    # What the loader accepts, and what impl="auto" then looks up.
    parsed = dispatch.parse_table({"format": dispatch.FORMAT, "entries": list(entries.values())})
    assert dispatch.lookup(parsed, "temporal", "bfloat16", 64, 16, False, causal=False) == "fused"
    assert dispatch.lookup(parsed, "temporal", "bfloat16", 64, 16, False, causal=True) == "reference"
    assert dispatch.lookup(parsed, "temporal", "float16", 64, 16, False) is None


def test_dispatch_entries_spatial_candidates_and_shapes_sharing_a_key():
    # Two spatial shapes with the same key (D=64, P=1024): totals over both, and a candidate
    # missing or wrong on one of them is out.
    rows = [_row("fused", 2.0, section="spatial", t=16), _row("views", 1.5, section="spatial", t=16),
            _row("fused", 2.0, section="spatial", t=32), _row("views", 3.0, section="spatial", t=32),
            _row("reference", 0.1, section="spatial", t=16),  # not a spatial candidate
            _row("fused", 1.0, section="spatial", p=256), _row("views", 2.0, section="spatial", p=256, correct=None)]
    entries = {e["seq_len"]: e for e in bench.dispatch_entries(rows)}
    assert entries[1024]["impl"] == "fused" and entries[1024]["median_ms"] == {"fused": 4.0, "sdpa": 4.5}
    assert len(entries[1024]["shapes_BTPHD"]) == 2
    assert entries[256]["impl"] == "fused"  # views unchecked: not usable
    assert all("causal" not in e for e in entries.values())
    rows.append(_row("fused", None, section="spatial", t=8, status="skipped: time budget"))
    rows.append(_row("views", 1.0, section="spatial", t=8))
    assert {e["seq_len"]: e["impl"] for e in bench.dispatch_entries(rows)}[1024] == "sdpa"
    rows.append(_row("views", 1.0, section="spatial", t=4, correct=False))
    assert 1024 not in {e["seq_len"] for e in bench.dispatch_entries(rows)}  # nothing usable everywhere


def test_write_dispatch_table_round_trips(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    rows = [_row("fused", 1.0, causal=True), _row("reference", 2.0, causal=True),
            _row("fused", 1.0, section="spatial"), _row("views", 0.5, section="spatial")]
    path = bench.write_dispatch_table(rows, torch.device("cpu"), out_dir=tmp_path)
    assert path.name == "attention_dispatch_sm90.json"
    table = json.loads(path.read_text())
    assert table["capability"] == [9, 0] and len(table["entries"]) == 2
    monkeypatch.setenv("GFCORE_ATTENTION_TABLE", str(path))
    monkeypatch.setattr(attn, "has_kernel", lambda op, device_type: True)
    dispatch.load_table.cache_clear()
    try:
        choose = lambda mode, seq, causal: attn._choose_impl(  # noqa: E731
            "auto", mode, "cuda", torch.bfloat16, 64, seq_len=seq, capability=(9, 0), causal=causal)
        assert choose("temporal", 16, True) == "fused"
        assert choose("temporal", 12, True) == "fused"  # nearest T
        assert choose("temporal", 16, False) == "reference"  # no non-causal entry: the default
        assert choose("spatial", 1024, False) == "sdpa"
    finally:
        dispatch.load_table.cache_clear()


# ---- figures and verdicts --------------------------------------------------------------------------

def test_rates_and_speedups_follow_the_bytes_model():
    rows = [_row("fused", 0.5, mode="forward"), _row("sdpa-flash", 2.0, mode="forward"),
            _row("sdpa-math", None, mode="forward", status="unsupported: x")]
    bench.add_rates(rows, copy_gbps=2000.0, hbm_tbps=3.35)
    bench.add_speedups(rows)
    cost = attention_cost(4, 16, 1024, 16, 64, True, False, False, 2)
    assert rows[0]["gbs"] == pytest.approx(cost["bytes"] / 0.5e-3 / 1e9)
    assert rows[0]["tflops"] == pytest.approx(cost["flops"] / 0.5e-3 / 1e12)
    assert rows[0]["pct_copy_bw"] == pytest.approx(100 * rows[0]["gbs"] / 2000)
    assert rows[0]["pct_hbm"] == pytest.approx(100 * rows[0]["gbs"] / 3350)
    assert rows[1]["fused_speedup"] == pytest.approx(4.0)
    assert "gbs" not in rows[2] and "fused_speedup" not in rows[2]


def test_datasheet_bandwidth_by_device_name():
    assert datasheet_hbm_tbps("NVIDIA H100 80GB HBM3") == 3.35
    assert datasheet_hbm_tbps("NVIDIA H200") == 4.8
    assert datasheet_hbm_tbps("NVIDIA H100 PCIe") == 2.0
    assert datasheet_hbm_tbps("NVIDIA GeForce RTX 4090") is None


def _summary_rows(fused_gbs_pct, sdpa_speedup):
    """Rows of one temporal shape whose fused rows reach fused_gbs_pct of 3.35 TB/s and whose
    SDPA backends are sdpa_speedup times slower; cudnn refuses the shape."""
    rows = []
    for mode in ("forward", "backward"):
        nbytes = attention_cost(4, 16, 1024, 16, 64, True, False, mode == "backward", 2)["bytes"]
        fused_ms = nbytes / (fused_gbs_pct / 100 * 3.35e12) * 1e3
        rows += [_row("fused", fused_ms, mode=mode), _row("sdpa-flash", fused_ms * sdpa_speedup, mode=mode),
                 _row("sdpa-math", fused_ms * 10, mode=mode), _row("sdpa-cudnn", None, mode=mode,
                                                                   status="unsupported: No available kernel")]
    bench.add_rates(rows, copy_gbps=3000.0, hbm_tbps=3.35)
    bench.add_speedups(rows)
    return rows


@pytest.mark.parametrize("pct,speedup,verdict", [
    (80, 2.5, "met"), (60, 2.5, "not met: fwd 60% HBM, bwd 60% HBM"),
    (80, 1.5, "not met: fwd 1.50x vs sdpa-flash, bwd 1.50x vs sdpa-flash")])
def test_goal_verdicts(pct, speedup, verdict):
    (line,) = bench.temporal_summary(_summary_rows(pct, speedup), "cuda")
    assert line["goal"] == verdict
    assert line["fused_fwd_pct_hbm"] == pytest.approx(pct)
    assert line["min_sdpa_speedup_bwd"] == pytest.approx(speedup)
    assert line["unsupported"] == ["sdpa-cudnn"]
    (line,) = bench.temporal_summary(_summary_rows(pct, speedup), "cpu")
    assert line["goal"] == "pending (no GPU)"


def test_goal_verdict_when_fused_is_wrong_or_refused():
    rows = _summary_rows(80, 3)
    rows[0]["correct"] = False
    assert bench.temporal_summary(rows, "cuda")[0]["goal"] == "fused incorrect"
    rows[0].update(status="unsupported: no kernel for D=64")
    assert bench.temporal_summary(rows, "cuda")[0]["goal"] == "fused forward: unsupported: no kernel for D=64"


# ---- refusals --------------------------------------------------------------------------------------

def test_refusals_are_rows_not_crashes():
    def refuse():
        raise RuntimeError("No available kernel. Aborting execution.")

    def broken():
        raise KeyError("x")

    assert bench.try_call(lambda: 3) == (3, None)
    assert bench.try_call(refuse)[1].startswith("unsupported: RuntimeError: No available kernel")
    assert bench.try_call(lambda: (_ for _ in ()).throw(ValueError("head dim 48")))[1] == \
        "unsupported: ValueError: head dim 48"
    assert bench.try_call(broken)[1].startswith("error: KeyError")


def test_budget_stops_measuring_and_flex_compiles():
    budget = bench.Budget(total_s=0, flex_compile_s=40)
    assert not budget.expired() and budget.may_compile_flex()
    budget.flex_spent_s = 41
    assert not budget.may_compile_flex()
    assert bench.Budget(total_s=1e-9, flex_compile_s=40).expired()


def test_temporal_shapes_keep_the_bytes_fixed():
    for t in bench.TEMPORAL_TS["cuda"]:
        for d in bench.TEMPORAL_DS["cuda"]:
            b, t_, p, h, d_ = bench.temporal_shape("cuda", t, d)
            assert (t_, d_) == (t, d) and b * t * p == 65536 and h * d == 1024
    configs = bench.temporal_configs("cuda", [torch.bfloat16, torch.float16], quick=False)
    assert len(configs) == 32
    assert len(bench.temporal_configs("cuda", [torch.bfloat16], quick=True)) == 8


# ---- the script on CPU -----------------------------------------------------------------------------

def test_cpu_run_writes_results(tmp_path):
    """The whole script on the CPU, tiny: every temporal implementation appears, the backends
    the CPU lacks as "unsupported", the fused rows correct, and the goals pending."""
    payload = bench.main(["--device", "cpu", "--no-flex", "--min-ms", "0", "--min-iters", "1", "--out-dir",
                          str(tmp_path), "--name", "attention_test"])
    rows = payload["results"]
    temporal = [r for r in rows if r["section"] == "temporal"]
    assert {r["impl"] for r in temporal} == set(bench.TEMPORAL_IMPLS)
    assert len(temporal) == 4 * len(bench.TEMPORAL_IMPLS) * 3
    by = {(r["impl"], r["shape_name"], r["causal"], r["mode"]): r for r in temporal}
    for key, r in by.items():
        impl = key[0]
        if impl in ("fused", "reference", "sdpa-math"):
            assert r["status"] == "ok" and r["correct"] is True and r["median_ms"] > 0, r
        elif impl in ("sdpa-cudnn", "sdpa-efficient"):
            assert r["status"].startswith("unsupported"), r
        elif impl == "flex":
            assert r["status"] == "skipped: --no-flex"
    assert {r["impl"] for r in rows if r["section"] == "spatial"} == set(bench.SPATIAL_IMPLS)
    assert all(line["goal"] == "pending (no GPU)" for line in payload["temporal_summary"])
    assert (tmp_path / "attention_test.json").exists()
    text = (tmp_path / "attention_test.md").read_text()
    assert "## Temporal pass: goals" in text and "pending (no GPU)" in text
