"""The evaluation run behind `python -m gfcore.metrics`: every metric its inputs allow.

Inputs: a folder of generated clips and a folder of reference clips with the same names;
optionally folders of per-clip geometry (<name>.npz, see gfcore.metrics.clips) for the
reference and for the generated clips, a folder of 360-degree revisit clips, and local
paths to the LPIPS, I3D and Inception weights. Clips are processed one at a time.
With a local VGGT checkpoint (--vggt), the geometry of every clip that has no geometry file
is estimated with VGGT's camera and depth heads (gfcore.metrics.geometry_estimate) and
written to <out>/vggt_geometry/{generated,ground_truth}/<name>.npz.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from gfcore.metrics.clips import list_clips, load_clip, load_geometry
from gfcore.metrics.curves import FrameMetricAccumulator, finite_mean, sliding_window_fvd_from_features, window_features
from gfcore.metrics.fvd import frechet_distance_features, i3d_feature_fn, load_i3d
from gfcore.metrics.geometry_estimate import estimate_geometry, load_geometry_model, read_vggt_config
from gfcore.metrics.lpips import load_lpips
from gfcore.metrics.report import markdown_report, plot_curves, unavailable, write_json
from gfcore.metrics.rpe import reprojection_error, rpe_summary
from gfcore.metrics.rve import inception_feature_fn, load_inception, revisit_fid, revisit_pair_metrics
from gfcore.metrics.weights import WeightsUnavailable


@dataclass
class EvalConfig:
    generated: Path
    reference: Path
    out: Path
    geometry: Optional[Path] = None  # reference geometry, <name>.npz
    generated_geometry: Optional[Path] = None  # e.g. VGGT estimates on the generated clips
    revisit: Optional[Path] = None  # generated 360-degree revisit clips
    lpips_weights: Optional[Path] = None
    lpips_net: str = "alex"
    i3d: Optional[Path] = None
    inception: Optional[Path] = None
    trust_weights: bool = False  # load --i3d / --inception files whose SHA-256 is not the published one
    context_frames: int = 0  # leading frames given to the model, left out of frame metrics
    fvd_frames: Optional[int] = None  # frames per clip fed to I3D (default: all)
    fvd_window: int = 16
    fvd_stride: int = 8
    ssim_border: str = "reflect"
    rpe_offsets: tuple = (1,)
    device: str = "cpu"
    max_clips: Optional[int] = None
    vggt: Optional[Path] = None  # local VGGT checkpoint: estimates geometry missing from the folders above
    vggt_config: Optional[Path] = None  # JSON of VGGT arguments (default: VGGT-1B)
    vggt_frames_per_call: int = 16
    vggt_resize: str = "square"
    vggt_dtype: str = "float32"  # autocast dtype of VGGT's aggregator: float32 (none), bfloat16, float16
    notes: list = field(default_factory=list)


def _try(loader, *args, **kwargs):
    """(model, None) or (None, reason) when the weights are not on this machine."""
    try:
        return loader(*args, **kwargs), None
    except WeightsUnavailable as exc:
        return None, str(exc)


def _paired_clips(config: EvalConfig) -> list[tuple[str, Path, Path]]:
    """(name, generated path, reference path) for the clip names both folders hold."""
    generated, reference = list_clips(config.generated), list_clips(config.reference)
    names = sorted(set(generated) & set(reference))
    if not names:
        raise ValueError(
            f"no clip names in common between --generated {config.generated} ({len(generated)} clips) and "
            f"--reference {config.reference} ({len(reference)} clips)"
        )
    unmatched = sorted(set(generated) ^ set(reference))
    if unmatched:
        config.notes.append(f"{len(unmatched)} clips without a counterpart were skipped: {unmatched[:5]}")
    names = names[: config.max_clips] if config.max_clips else names
    return [(name, generated[name], reference[name]) for name in names]


def _rpe_for(frames: torch.Tensor, geometry_dir: Optional[Path], name: str, side: str, vggt,
             config: EvalConfig) -> tuple[Optional[float], Optional[str]]:
    """RPE of one clip and where its geometry came from ("file" or "vggt"); (None, None) without any."""
    path = geometry_dir / f"{name}.npz" if geometry_dir is not None else None
    if path is not None and not path.is_file() and (geometry_dir / f"{name}.depth.npz").is_file():
        path = geometry_dir / f"{name}.depth.npz"  # a dataset split's own geometry file
    if path is not None and path.is_file():
        geometry, source = load_geometry(path, frames), "file"
    elif vggt is not None:
        estimate = estimate_geometry(frames, vggt, config.vggt_frames_per_call, config.vggt_resize,
                                     dtype=getattr(torch, config.vggt_dtype))
        out_dir = config.out / "vggt_geometry" / side
        out_dir.mkdir(parents=True, exist_ok=True)
        estimate.to_npz(out_dir / f"{name}.npz")
        geometry, source = {"depth": estimate.depth, "intrinsics": estimate.intrinsics, "c2w": estimate.c2w}, "vggt"
    elif path is not None:
        raise FileNotFoundError(f"geometry for clip {name!r} not found: {path}")
    else:
        return None, None
    result = reprojection_error(frames, geometry["depth"], geometry["intrinsics"], geometry["c2w"], offsets=config.rpe_offsets)
    return result.rpe, source


def _load_vggt(config: EvalConfig, device: torch.device):
    """The geometry model of --vggt, or None; a named file that is absent or wrong is an error."""
    if config.vggt is None:
        return None
    if config.vggt_frames_per_call < 2:  # chunks overlap by one frame
        raise ValueError(f"--vggt-frames-per-call must be >= 2, got {config.vggt_frames_per_call}")
    if config.vggt_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--vggt-dtype must be float32, bfloat16 or float16, got {config.vggt_dtype!r}")
    return load_geometry_model(config.vggt, read_vggt_config(config.vggt_config), device)


def evaluate(config: EvalConfig, progress: Optional[Callable[[str, int, int], None]] = None) -> dict:
    """Run every available metric and write results.json, results.md and PNG plots to config.out.

    progress(stage, done, total), when given, is called after each clip (stage "clip") and after
    each metric computed over all clips (stages "FVD", "RPE", "RVE"); it changes no value."""
    config.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    lpips_model, lpips_reason = _try(load_lpips, config.lpips_net, weights=config.lpips_weights)
    if lpips_model is not None:
        lpips_model = lpips_model.to(device)
    i3d, i3d_reason = _try(load_i3d, config.i3d, device, trust=config.trust_weights)
    video_features = i3d_feature_fn(i3d, device) if i3d is not None else None
    vggt = _load_vggt(config, device)

    frames_acc = FrameMetricAccumulator(lpips_model, config.ssim_border)
    per_clip, fvd_feats, window_feats = {}, {"generated": [], "reference": []}, {"generated": [], "reference": []}
    rpe_values = {"generated": {}, "ground_truth": {}}
    rpe_sources = {"generated": {}, "ground_truth": {}}
    pairs = _paired_clips(config)
    for clip_index, (name, gen_path, ref_path) in enumerate(pairs, 1):
        gen, ref = load_clip(gen_path).to(device), load_clip(ref_path).to(device)
        if gen.shape != ref.shape:
            raise ValueError(f"clip {name!r}: generated {list(gen.shape)} and reference {list(ref.shape)} differ in shape")
        if config.context_frames >= gen.shape[0]:
            raise ValueError(f"clip {name!r}: --context-frames {config.context_frames} leaves none of its {gen.shape[0]} frames")
        values = frames_acc.add(gen[config.context_frames:], ref[config.context_frames:])
        per_clip[name] = {k: finite_mean(v) for k, v in values.items()}
        if video_features is not None:
            for side, clip in (("generated", gen), ("reference", ref)):
                fvd_feats[side].append(video_features(clip[None, : config.fvd_frames]))
                window_feats[side].append(window_features(clip, video_features, config.fvd_window, config.fvd_stride))
        for side, frames, folder in (("ground_truth", ref, config.geometry), ("generated", gen, config.generated_geometry)):
            value, source = _rpe_for(frames, folder, name, side, vggt, config)
            if value is not None:
                rpe_values[side][name] = value
                rpe_sources[side][source] = rpe_sources[side].get(source, 0) + 1
                per_clip[name][f"rpe_{side}"] = value
        if progress is not None:
            progress("clip", clip_index, len(pairs))

    means = frames_acc.means()
    curves = frames_acc.curves()
    metrics = {"PSNR": means["psnr"], "SSIM": means["ssim"], "LPIPS": means.get("lpips", unavailable(lpips_reason or ""))}
    metrics["FVD"], curves["fvd_windows"] = _fvd(fvd_feats, window_feats, i3d_reason, config)
    if progress is not None:
        progress("FVD", 1, 3)
    metrics["RPE"], rpe_detail = _rpe(rpe_values, config)
    if progress is not None:
        progress("RPE", 2, 3)
    if rpe_detail is not None:
        rpe_detail["geometry_sources"] = rpe_sources
        generated, ground_truth = set(rpe_sources["generated"]), set(rpe_sources["ground_truth"])
        if generated and ground_truth and generated != ground_truth:
            config.notes.append("RPE: generated and ground-truth geometry come from different sources "
                                f"({rpe_sources}); their ratio mixes estimator and ground-truth errors")
    metrics["RVE"], rve_detail = _rve(config, lpips_model, lpips_reason, device)
    if progress is not None:
        progress("RVE", 3, 3)

    results = {
        "metrics": metrics,
        "details": {
            "clips": len(per_clip),
            "psnr_identical_frames": means["psnr_identical_frames"],
            "rpe": rpe_detail,
            "rve": rve_detail,
            "curves": curves,
            "per_clip": per_clip,
        },
        "inputs": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items() if k not in ("notes", "out")},
        "notes": config.notes,
    }
    write_json(results, config.out / "results.json")
    (config.out / "results.md").write_text(markdown_report(results))
    results["plots"] = [str(p) for p in plot_curves(curves, config.out)]
    return results


def _fvd(fvd_feats: dict, window_feats: dict, i3d_reason: Optional[str], config: EvalConfig):
    if i3d_reason is not None:
        return unavailable(i3d_reason), unavailable(i3d_reason)
    if len(fvd_feats["generated"]) < 2:
        reason = unavailable("FVD needs at least 2 clips")
        return reason, reason
    value = frechet_distance_features(torch.cat(fvd_feats["generated"]), torch.cat(fvd_feats["reference"]))
    if min(f.shape[0] for f in window_feats["generated"]) == 0:
        return value, unavailable(f"clips shorter than the {config.fvd_window}-frame FVD window")
    return value, sliding_window_fvd_from_features(window_feats["generated"], window_feats["reference"], config.fvd_window, config.fvd_stride)


def _rpe(rpe_values: dict, config: EvalConfig):
    if not rpe_values["generated"] and not rpe_values["ground_truth"]:
        return unavailable("no geometry given (--vggt CHECKPOINT to estimate it, or --geometry for the reference "
                           "and --generated-geometry for the generated clips)"), None
    summary = rpe_summary(list(rpe_values["generated"].values()), list(rpe_values["ground_truth"].values()))
    if not rpe_values["generated"]:
        return unavailable("no geometry for the generated clips (--vggt CHECKPOINT or --generated-geometry)"), summary
    return summary["generated"], summary


def _rve(config: EvalConfig, lpips_model, lpips_reason: Optional[str], device: torch.device):
    if config.revisit is None:
        return unavailable("no revisit clips (--revisit DIR of 360-degree turns)"), None
    clips = list_clips(config.revisit)
    if not clips:
        return unavailable(f"no clips in {config.revisit}"), None
    firsts, lasts = [], []
    for path in clips.values():
        clip = load_clip(path)
        firsts.append(clip[0])
        lasts.append(clip[-1])
    first, last = torch.stack(firsts).to(device), torch.stack(lasts).to(device)
    pairs = revisit_pair_metrics(first, last, lpips_model, config.ssim_border)
    detail = {"clips": len(clips), "psnr": finite_mean(pairs["psnr"]), "ssim": finite_mean(pairs["ssim"])}
    detail["lpips"] = finite_mean(pairs["lpips"]) if "lpips" in pairs else unavailable(lpips_reason or "")
    inception, reason = _try(load_inception, config.inception, device, trust=config.trust_weights)
    if inception is None:
        detail["fid"] = unavailable(reason)
    elif len(clips) < 2:
        detail["fid"] = unavailable("FID needs at least 2 revisit clips")
    else:
        detail["fid"] = revisit_fid(first, last, inception_feature_fn(inception, device))
    return detail["fid"], detail
