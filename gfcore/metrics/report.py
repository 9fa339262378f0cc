"""Writing evaluation results: JSON, a markdown table in the paper's column order, PNG plots.

A metric value is either a number or a string "unavailable: <why>"; strings are written as
they are, never replaced by numbers. JSON has no inf/nan: +inf is written as "inf" and nan
as null.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

# The paper's table order (Geometry Forcing, Table 1).
COLUMNS = ("FVD", "LPIPS", "SSIM", "PSNR", "RPE", "RVE")
_FORMATS = {"FVD": "{:.1f}", "LPIPS": "{:.4f}", "SSIM": "{:.4f}", "PSNR": "{:.2f}", "RPE": "{:.4f}", "RVE": "{:.1f}"}


def unavailable(reason: str) -> str:
    return f"unavailable: {reason}"


def json_safe(value: Any) -> Any:
    """Recursively turn floats that JSON cannot hold into "inf" / "-inf" / None."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(results: dict, path: Path) -> Path:
    path.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    return path


def format_cell(column: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if column in ("FVD", "RVE") and abs(value) < 1:
        return "{:.3g}".format(value)  # keep near-zero distances from printing as 0.0
    return _FORMATS.get(column, "{:.4f}").format(value)


def markdown_report(results: dict) -> str:
    """Main table (FVD, LPIPS, SSIM, PSNR, RPE, RVE) plus the RPE and RVE breakdowns."""
    metrics = results["metrics"]
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        "| " + " | ".join(format_cell(c, metrics.get(c, unavailable("not computed"))) for c in COLUMNS) + " |",
    ]
    details = results.get("details", {})
    rpe = details.get("rpe")
    if isinstance(rpe, dict):
        lines += ["", "| RPE (px) | generated | ground truth | ratio |", "|---|---|---|---|",
                  "| mean | {} | {} | {} |".format(*(format_cell("RPE", rpe.get(k)) for k in ("generated", "ground_truth", "ratio")))]
    rve = details.get("rve")
    if isinstance(rve, dict):
        lines += ["", "| RVE (first vs last frame) | PSNR | SSIM | LPIPS | FID |", "|---|---|---|---|---|",
                  "| {} clips | {} | {} | {} | {} |".format(
                      rve.get("clips", "?"), format_cell("PSNR", rve.get("psnr")), format_cell("SSIM", rve.get("ssim")),
                      format_cell("LPIPS", rve.get("lpips")), format_cell("RVE", rve.get("fid")))]
    notes = results.get("notes", [])
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def plot_curves(curves: dict, out_dir: Path) -> list[Path]:
    """One PNG per available curve: metric vs frame index, and FVD vs window start."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    written = []
    labels = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
    for name, label in labels.items():
        values = curves.get(name)
        if not isinstance(values, list) or not values:
            continue
        # inf (frames identical to the reference, e.g. given context) cannot be drawn
        points = [(t, v) for t, v in enumerate(values) if isinstance(v, float) and math.isfinite(v)]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([t for t, _ in points], [v for _, v in points], marker="." if len(points) < 64 else None)
        if len(points) < len(values):
            ax.text(0.01, 0.02, f"{len(values) - len(points)} frame(s) identical to the reference (inf) not drawn",
                    transform=ax.transAxes, fontsize=8, color="gray")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("frame index")
        ax.set_ylabel(label)
        ax.set_title(f"{label} vs frame (mean over clips)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{name}_vs_frame.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    windows = curves.get("fvd_windows")
    if isinstance(windows, list) and windows:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([w["start"] for w in windows], [w["fvd"] for w in windows], marker="o")
        ax.set_xlabel(f"window start frame (window {windows[0]['end'] - windows[0]['start']} frames)")
        ax.set_ylabel("FVD")
        ax.set_title("FVD over sliding windows")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "fvd_vs_window.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
