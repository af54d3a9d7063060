"""The operator's CLI: works with no endpoint deployed, and says what went wrong in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import cli
from tasks.common.demo_data import write_incoming
from tasks.common.storage import storage_path


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PIPELINE_STORAGE_URI", tmp_path.as_uri())
    return tmp_path


def test_estimate_cost_with_no_endpoint_prices_the_default_one_and_says_so(
    storage: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_incoming(storage_path(storage.as_uri()) / "incoming", ["2026-11-29", "2026-11-30"], list(range(10)))
    monkeypatch.setenv("PIPELINE_BACKEND", "sagemaker")
    cli.main(["estimate-cost", "--from-date", "2026-11-29", "--to-date", "2026-11-30", "--budget-usd", "1",
              "--assumed-images-per-second", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "dt=2026-11-29: 5 images" in out and "dt=2026-11-30: 5 images" in out
    assert "no endpoint deployed: priced as the default deploy_endpoint would deploy (1 x ml.g5.xlarge" in out
    # 10 images at 2 images/s on ml.g5.xlarge ($1.408/h)
    assert f"estimate: ${10 / 2 / 3600 * 1.408:.4f} for 10 images at 2.00 images/s (assumed)" in out


def test_errors_are_one_line_without_a_traceback(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["estimate-cost", "--from-date", "2026-11-30", "--to-date", "30.11.2026", "--budget-usd", "1"])
    assert str(exit_.value) == "python -m tasks.cli estimate-cost: error: Invalid isoformat string: '30.11.2026'"
