"""Progress lines for long sampling and evaluation runs (`gfcore sample`, `gfcore eval`).

A 256-frame DFoT rollout on a GPU runs for minutes per clip; the reporter prints lines such as

    clip 2/8 · keyframes · step 30/50
    clip 1/2 · window 3/5 · step 10/10
    metrics · clip 3/8

at a bounded rate: a counter's line is printed at its first and last value, every `every`
values, and whenever `seconds` have passed since the reporter last printed. The callbacks it
hands out have the signature of gfcore.sample.dfot_protocol.Progress: (stage, done, total).
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

Progress = Callable[[str, int, int], None]


class ProgressReporter:
    """Prints rate-limited progress lines to `stream` (default: stderr, as the trainer's bar).

    every: print each counter at multiples of this many (and at its first and last value).
    seconds: also print when this long has passed since the last line. enabled: False prints
    nothing (the callbacks still work). clock: for tests.
    """

    def __init__(self, stream: Optional[TextIO] = None, every: int = 10, seconds: float = 5.0,
                 enabled: bool = True, clock: Callable[[], float] = time.monotonic):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.stream, self.every, self.seconds = stream, int(every), float(seconds)
        self.enabled, self.clock = enabled, clock
        self._last = clock()

    def line(self, text: str) -> None:
        """Print one line now (no rate limit)."""
        if self.enabled:
            print(text, file=self.stream if self.stream is not None else sys.stderr, flush=True)
        self._last = self.clock()

    def _due(self, done: int, total: int) -> bool:
        return done in (1, total) or done % self.every == 0 or self.clock() - self._last >= self.seconds

    def count(self, text: str, done: int, total: int) -> None:
        """`text done/total`, rate-limited."""
        if self._due(done, total):
            self.line(f"{text} {done}/{total}")

    def steps(self, prefix: str) -> Progress:
        """A (stage, done, total) callback printing `prefix · stage · step done/total`."""

        def report(stage: str, done: int, total: int) -> None:
            if self._due(done, total):
                self.line(f"{prefix} · {stage} · step {done}/{total}")

        return report

    def metrics(self) -> Progress:
        """A (stage, done, total) callback for gfcore.metrics.evaluate: `metrics · clip 3/8`
        per clip, `metrics · FVD (1/3)` for the metrics computed over all clips."""

        def report(stage: str, done: int, total: int) -> None:
            if stage == "clip":
                self.count("metrics · clip", done, total)
            else:
                self.line(f"metrics · {stage} ({done}/{total})")

        return report


__all__ = ["Progress", "ProgressReporter"]
