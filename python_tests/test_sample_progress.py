"""The progress reporter of `gfcore sample` / `gfcore eval`, and the VideoDiT sampler's window
and step reports (which change nothing sampled)."""
import io

import torch

from gfcore.sample.progress import ProgressReporter


def test_progress_reporter_rate():
    now = [0.0]
    stream = io.StringIO()
    reporter = ProgressReporter(stream, every=10, seconds=5.0, clock=lambda: now[0])
    report = reporter.steps("clip 2/8")
    for step in range(1, 51):
        now[0] += 0.1
        report("keyframes", step, 50)
    lines = stream.getvalue().splitlines()
    assert lines == [f"clip 2/8 · keyframes · step {s}/50" for s in (1, 10, 20, 30, 40, 50)]
    stream.truncate(0), stream.seek(0)
    for step in range(1, 8):  # slow steps: every 5 s as well
        now[0] += 3.0
        report("interpolation", step, 7)
    assert [int(line.split("step ")[1].split("/")[0]) for line in stream.getvalue().splitlines()] == [1, 3, 5, 7]
    silent = ProgressReporter(stream, enabled=False)
    silent.steps("x")("s", 1, 1)
    assert "x ·" not in stream.getvalue()


class _Field(torch.nn.Module):
    def forward(self, x, t, rays=None, actions=None, drop_cond=None):
        return 0.5 * x + t[..., None, None, None], None


def test_videodit_rollout_reports_windows_and_steps_and_samples_the_same():
    from gfcore.sample import rollout

    first = torch.randn(1, 2, 3, 4, 4)
    seen = []
    a = rollout(_Field(), first, 11, 4, 2, 3, "heun", generator=torch.Generator().manual_seed(0))
    b = rollout(_Field(), first, 11, 4, 2, 3, "heun", generator=torch.Generator().manual_seed(0),
                progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert torch.equal(a, b)
    # 9 new frames, 2 per window of 4 with 2 carried: 5 windows (the last with 1 new frame)
    assert seen == [(f"window {w}/5", s, 3) for w in range(1, 6) for s in (1, 2, 3)]
    # one given frame, 3 carried: 3 new frames in the first window of 4, then 1 in each of 7 more
    seen.clear()
    rollout(_Field(), first[:, :1], 11, 4, 3, 1, "euler", progress=lambda *a: seen.append(a))
    assert seen == [(f"window {w}/8", 1, 1) for w in range(1, 9)]


def test_metrics_progress_lines():
    """ProgressReporter.metrics: `metrics · clip done/total` rate-limited per clip, and one line
    `metrics · STAGE (done/total)` for each metric over all clips."""
    stream = io.StringIO()
    report = ProgressReporter(stream=stream, every=10, clock=lambda: 0.0).metrics()
    for done in (1, 2, 3):
        report("clip", done, 3)
    report("FVD", 1, 3)
    report("FVD", 2, 3)
    assert stream.getvalue().splitlines() == ["metrics · clip 1/3", "metrics · clip 3/3", "metrics · FVD (1/3)",
                                              "metrics · FVD (2/3)"]
