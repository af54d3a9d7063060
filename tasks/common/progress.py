"""Progress lines for long loops: done/total, running counts per outcome, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable


class Progress:
    """Call `advance()` per item (with its `outcome`, e.g. ok/invalid/failed, to count them); a line is logged at
    most every `every_s` seconds and once at the end."""

    def __init__(
        self,
        total: int | None,
        what: str,
        *,
        log: logging.Logger,
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.what, self.log, self.every_s, self.clock = total, what, log, every_s, clock
        self.done = 0
        self.outcomes: Counter[str] = Counter()
        self.started = self.last = clock()

    def advance(self, n: int = 1, outcome: str | None = None) -> None:
        self.done += n
        if outcome is not None:
            self.outcomes[outcome] += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line())

    def finish(self) -> None:
        self.log.info(self.line(final=True))

    def line(self, *, final: bool = False) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        counts = " (" + ", ".join(f"{k} {n}" for k, n in sorted(self.outcomes.items())) + ")" if self.outcomes else ""
        if final:
            return f"{self.what}: {self.done} done{counts} in {elapsed:.1f}s ({rate:.1f}/s)"
        if not self.total:
            return f"{self.what}: {self.done} done{counts}, {rate:.1f}/s"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total
        return f"{self.what}: {self.done}/{self.total} ({pct:.0f}%){counts}, {rate:.1f}/s, ETA {eta:.0f}s"
