"""The operator's CLI: works with no endpoint deployed, and says what went wrong in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import cli
from tasks.common.storage import storage_path
from tasks.model.demo_data import write_incoming


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PIPELINE_STORAGE_URI", tmp_path.as_uri())
    return tmp_path


def test_estimate_cost_with_no_endpoint_prices_the_default_one_and_says_so(
    storage: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_incoming(storage_path(storage.as_uri()) / "incoming", ["2026-11-29", "2026-11-30"], list(range(10)))
    monkeypatch.setenv("PIPELINE_BACKEND", "sagemaker")
    cli.main(
        [
            "estimate-cost",
            "--from-date",
            "2026-11-29",
            "--to-date",
            "2026-11-30",
            "--budget-usd",
            "1",
            "--assumed-images-per-second",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "dt=2026-11-29: 5 images" in out and "dt=2026-11-30: 5 images" in out
    assert "no endpoint deployed: priced as the default deploy_endpoint would deploy (1 x ml.g5.xlarge" in out
    # 10 images at 2 images/s on ml.g5.xlarge ($1.408/h)
    assert f"estimate: ${10 / 2 / 3600 * 1.408:.4f} for 10 images at 2.00 images/s (assumed)" in out


def test_errors_are_one_line_without_a_traceback(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["estimate-cost", "--from-date", "2026-11-30", "--to-date", "30.11.2026", "--budget-usd", "1"])
    assert str(exit_.value) == (
        "python -m tasks.cli estimate-cost: error: --to-date: '30.11.2026' is not a date (YYYY-MM-DD)"
    )


def test_iam_policies_renders_both_documents_for_the_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("PIPELINE_STORAGE_URI", "s3://acme-ml/llava")
    monkeypatch.setenv("PIPELINE_SAGEMAKER_ROLE_ARN", "arn:aws:iam::123456789012:role/llava-exec")
    monkeypatch.setenv("PIPELINE_KMS_KEY_ARNS", "arn:aws:kms:us-east-1:123456789012:key/k1")
    cli.main(["iam-policies", "--account-id", "123456789012", "--out", str(tmp_path)])
    airflow = json.loads((tmp_path / "airflow-role-policy.json").read_text())
    text = json.dumps(airflow)
    assert "arn:aws:iam::123456789012:role/llava-exec" in text and "acme-ml/llava/*" in text
    assert "ACCOUNT_ID" not in text and "key/k1" in text
    execution = json.loads((tmp_path / "sagemaker-execution-role-policy.json").read_text())
    assert "arn:aws:s3:::acme-ml/llava/backlog/*" in json.dumps(execution)


def _error(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    return str(exit_.value)


@pytest.mark.parametrize("value", ["2026-13-01", "2026-02-30", "yesterday", "20261101"])
def test_a_date_that_does_not_parse_is_named_by_its_flag(storage: Path, value: str) -> None:
    assert _error(["estimate-cost", "--from-date", value, "--to-date", "2026-11-30", "--budget-usd", "1"]) == (
        f"python -m tasks.cli estimate-cost: error: --from-date: {value!r} is not a date (YYYY-MM-DD)"
    )
    assert _error(["cost-report", "--day", value]) == (
        f"python -m tasks.cli cost-report: error: --day: {value!r} is not a date (YYYY-MM-DD)"
    )


@pytest.mark.parametrize("command", ["estimate-cost", "estimate-backlog", "predictions-summary", "write-incoming"])
def test_a_reversed_range_is_refused_naming_both_flags(storage: Path, command: str) -> None:
    argv = [command, "--from-date", "2026-11-30", "--to-date", "2026-11-01"]
    argv += {"estimate-cost": ["--budget-usd", "1"], "estimate-backlog": ["--budget-usd", "1"]}.get(command, [])
    argv = [*argv[:1], "file:///nowhere", *argv[1:]] if command == "write-incoming" else argv
    expected = "--to-date 2026-11-01 is before --from-date 2026-11-30"
    assert _error(argv) == f"python -m tasks.cli {command}: error: {expected}"


@pytest.mark.parametrize("command", ["estimate-cost", "estimate-backlog"])
def test_a_negative_budget_is_refused(storage: Path, command: str) -> None:
    argv = [command, "--from-date", "2026-11-01", "--to-date", "2026-11-02", "--budget-usd", "-3"]
    assert _error(argv) == f"python -m tasks.cli {command}: error: --budget-usd: -3.0 is negative"


@pytest.mark.parametrize("window", ["0", "-5"])
def test_an_empty_cost_report_window_is_refused(storage: Path, window: str) -> None:
    assert _error(["cost-report", "--window-days", window]) == (
        f"python -m tasks.cli cost-report: error: --window-days: {window} is below 1"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["predictions-summary", "--from-date", "2026-11-01", "--to-date", "2026-11-02"],
        ["estimate-cost", "--from-date", "2026-11-01", "--to-date", "2026-11-02", "--budget-usd", "1"],
        ["estimate-backlog", "--from-date", "2026-11-01", "--to-date", "2026-11-02", "--budget-usd", "1"],
        ["cost-report", "--day", "2026-11-02"],
        ["model-summary"],
    ],
)
def test_a_storage_root_that_does_not_exist_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    missing = tmp_path / "mistyped"
    monkeypatch.setenv("PIPELINE_STORAGE_URI", str(missing))
    assert _error(argv) == (
        f"python -m tasks.cli {argv[0]}: error: storage root {missing} does not exist (PIPELINE_STORAGE_URI={missing})"
    )
    assert not missing.exists()


def test_predictions_summary_prints_the_cost_report_path_only_once_it_is_written(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = ["predictions-summary", "--from-date", "2026-11-01", "--to-date", "2026-11-02"]
    cli.main(summary)
    out = capsys.readouterr().out
    assert "costs.png" not in out
    assert "cost report: none for 2026-11-02 yet (`llava-pipelines cost-report --day 2026-11-02` writes it)" in out
    cli.main(["cost-report", "--day", "2026-11-02", "--window-days", "2"])
    capsys.readouterr()
    cli.main(summary)
    report = storage / "costs" / "reports" / "day=2026-11-02" / "costs.png"
    out = capsys.readouterr().out
    assert report.is_file() and f"cost report: file://{report} (table: costs.md, costs.csv)" in out
