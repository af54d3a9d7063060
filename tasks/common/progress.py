"""Progress lines for long loops: done/total, rate and ETA, at most every few seconds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class Progress:
    """Call `advance()` per item; a line is logged at most every `every_s` seconds and once at the end."""

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
        self.started = self.last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line())

    def finish(self) -> None:
        self.log.info(self.line(final=True))

    def line(self, *, final: bool = False) -> str:
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        if final:
            return f"{self.what}: {self.done} done in {elapsed:.1f}s ({rate:.1f}/s)"
        if not self.total:
            return f"{self.what}: {self.done} done, {rate:.1f}/s"
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.done / self.total
        return f"{self.what}: {self.done}/{self.total} ({pct:.0f}%), {rate:.1f}/s, ETA {eta:.0f}s"
