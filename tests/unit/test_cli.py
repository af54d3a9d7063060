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
    assert str(exit_.value) == "python -m tasks.cli estimate-cost: error: Invalid isoformat string: '30.11.2026'"


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
