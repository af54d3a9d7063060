"""Progress lines: running counts per outcome, rate and ETA."""

from __future__ import annotations

import logging

import pytest

from tasks.common.progress import Progress


def test_lines_carry_running_outcome_counts_and_the_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress(10, "dt=2026-11-30 shard 0", log=logging.getLogger("t"), every_s=5, clock=lambda: now[0])
    with caplog.at_level(logging.INFO):
        for outcome in ["ok", "ok", "invalid", "ok"]:
            now[0] += 2.5
            progress.advance(outcome=outcome)
        progress.finish()
    assert caplog.messages == [
        "dt=2026-11-30 shard 0: 2/10 (20%) (ok 2), 0.4/s, ETA 20s",
        "dt=2026-11-30 shard 0: 4/10 (40%) (invalid 1, ok 3), 0.4/s, ETA 15s",
        "dt=2026-11-30 shard 0: 4 done (invalid 1, ok 3) in 10.0s (0.4/s)",
    ]


def test_without_outcomes_the_line_is_unchanged() -> None:
    now = [0.0]
    progress = Progress(None, "scan", log=logging.getLogger("t"), clock=lambda: now[0])
    now[0] = 2.0
    progress.advance(3)
    assert progress.line() == "scan: 3 done, 1.5/s"
