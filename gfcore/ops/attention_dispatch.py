"""Which attention implementation impl="auto" runs on CUDA: a measured table, else a default.

A table is a JSON file written by `python -m benchmarks.bench_attention --write-dispatch-table`
on a GPU (benchmarks/results/attention_dispatch_sm<major><minor>.json):

    {
      "format": "gfcore.attention_dispatch/1",
      "device": "NVIDIA H100 80GB HBM3", "capability": [9, 0],
      "torch": "2.x", "commit": "<git hash>",
      "entries": [
        {"mode": "spatial", "dtype": "bfloat16", "head_dim": 64, "seq_len": 256,
         "rope": true, "impl": "fused", "median_ms": {"sdpa": 0.41, "fused": 0.33}},
        {"mode": "temporal", "dtype": "bfloat16", "head_dim": 64, "seq_len": 16,
         "rope": false, "causal": true, "impl": "fused",
         "median_ms": {"reference": 1.9, "fused": 0.6}},
        ...
      ]
    }

Each entry names the fastest implementation that passed the correctness check at one shape
(mode, dtype, head dim, sequence length, with or without RoPE, and for the temporal pass
causal or not); median_ms is informational. The spatial pass chooses between "fused" and
"sdpa" (zero-copy views), the temporal pass between "fused" and "reference" ("sdpa" there
runs the reference too). "causal" is optional and false when absent (tables written before
it existed; spatial entries), and a spatial query is never causal. A query takes the entries
of its mode, dtype, head dim, RoPE setting and causality and uses the one whose sequence
length is nearest on a log scale. No table for the device's compute capability, or no
matching entry: the default, DEFAULT_IMPL (SDPA on zero-copy views for the spatial pass; the
reference for the temporal pass, whose sequences cannot be viewed without a copy). No GPU has
measured a table yet, so today "auto" always takes the default on CUDA.

GFCORE_ATTENTION_TABLE=<path> overrides the table file (an empty value: no table).
"""
import json
import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from gfcore._extension import assume_constant_result

FORMAT = "gfcore.attention_dispatch/1"
TABLE_IMPLS = ("sdpa", "fused", "reference")
DEFAULT_IMPL = {"spatial": "sdpa", "temporal": "reference"}
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
DTYPE_NAMES = ("float16", "bfloat16", "float32", "float64")


class DispatchTableError(ValueError):
    pass


def table_path(capability: Tuple[int, int]) -> Optional[Path]:
    """The table file for a compute capability: $GFCORE_ATTENTION_TABLE, else the committed one."""
    override = os.environ.get("GFCORE_ATTENTION_TABLE")
    if override is not None:
        return Path(override) if override else None
    return RESULTS_DIR / f"attention_dispatch_sm{capability[0]}{capability[1]}.json"


def parse_table(data: Dict, source: str = "<table>") -> List[Dict]:
    """The validated entries of a table (raises DispatchTableError naming the problem)."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DispatchTableError(f"{source}: not a {FORMAT} table")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise DispatchTableError(f"{source}: 'entries' must be a list")
    out = []
    for i, e in enumerate(entries):
        where = f"{source}: entry {i}"
        if not isinstance(e, dict):
            raise DispatchTableError(f"{where} is not an object")
        if e.get("mode") not in DEFAULT_IMPL:
            raise DispatchTableError(f"{where}: mode must be 'spatial' or 'temporal', got {e.get('mode')!r}")
        if e.get("impl") not in TABLE_IMPLS:
            raise DispatchTableError(f"{where}: impl must be one of {TABLE_IMPLS}, got {e.get('impl')!r}")
        if e.get("dtype") not in DTYPE_NAMES:
            raise DispatchTableError(f"{where}: dtype must be one of {DTYPE_NAMES}, got {e.get('dtype')!r}")
        for key in ("head_dim", "seq_len"):
            if not isinstance(e.get(key), int) or e[key] <= 0:
                raise DispatchTableError(f"{where}: {key} must be a positive integer, got {e.get(key)!r}")
        if not isinstance(e.get("rope"), bool):
            raise DispatchTableError(f"{where}: rope must be true or false, got {e.get('rope')!r}")
        if not isinstance(e.get("causal", False), bool):
            raise DispatchTableError(f"{where}: causal must be true or false, got {e.get('causal')!r}")
        if e["mode"] == "spatial" and e.get("causal", False):
            raise DispatchTableError(f"{where}: the spatial pass is never causal")
        out.append(e)
    return out


@lru_cache(maxsize=None)
def load_table(path: Optional[str]) -> Tuple[Dict, ...]:
    """Entries of the table at path; () when there is no file. Cached per path."""
    if path is None or not Path(path).exists():
        return ()
    with open(path) as f:
        data = json.load(f)
    return tuple(parse_table(data, str(path)))


def lookup(entries, mode: str, dtype_name: str, head_dim: int, seq_len: int, rope: bool,
           causal: bool = False) -> Optional[str]:
    """The impl of the matching entry with the nearest sequence length (log scale), or None."""
    best, best_dist = None, None
    want = (mode, dtype_name, head_dim, rope, causal)
    for e in entries:
        if (e["mode"], e["dtype"], e["head_dim"], e["rope"], e.get("causal", False)) != want:
            continue
        dist = abs(math.log(e["seq_len"]) - math.log(max(seq_len, 1)))
        if best_dist is None or dist < best_dist:
            best, best_dist = e["impl"], dist
    return best


# Under torch.compile the choice is made once at trace time (the file is not traced).
@assume_constant_result
def choose(mode: str, dtype_name: str, head_dim: int, seq_len: int, rope: bool,
           capability: Tuple[int, int], causal: bool = False) -> Tuple[str, str]:
    """(impl, why) for impl="auto" on a CUDA device of the given compute capability."""
    path = table_path(capability)
    entries = load_table(str(path) if path is not None else None)
    impl = lookup(entries, mode, dtype_name, head_dim, seq_len, rope, causal and mode == "temporal")
    if impl is None:
        return DEFAULT_IMPL[mode], "default (no measured entry)"
    return impl, f"table {path}"
