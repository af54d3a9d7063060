"""The review loop from the command line: export the queue, import Label Studio's answers, read the accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import cli
from tasks.common import storage
from tasks.common.storage import storage_path
from tests.unit.review.conftest import commit_day, row, sha

DT = "2026-11-04"


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PIPELINE_STORAGE_URI", f"file://{tmp_path}/store")
    (tmp_path / "store").mkdir()
    return storage_path(f"file://{tmp_path}/store")


def test_export_import_and_production_accuracy(root, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    commit_day(root, DT, [row(f"digit-{i:04d}.png", label="3", confidence=0.5 + i / 100) for i in range(30)])
    out, config = tmp_path / "tasks.json", tmp_path / "config.xml"
    cli.main(["review-export", "--out", str(out), "--config", str(config)])
    assert f"30 Label Studio task(s): {out}" in capsys.readouterr().out and "<Choices" in config.read_text()
    tasks = json.loads(out.read_text())
    for task, answer in zip(tasks[:20], ["3"] * 15 + ["5"] * 5, strict=True):  # the golden sample comes first
        task["annotations"] = [{"completed_by": 1, "result": [{**task["predictions"][0]["result"][0]}]}]
        task["annotations"][0]["result"][0]["value"] = {"choices": [answer]}
    out.write_text(json.dumps(tasks))
    cli.main(["review-import", str(out)])
    assert "20 decision(s) recorded, 0 already recorded, 0 skipped" in capsys.readouterr().out
    cli.main(["production-accuracy"])
    assert capsys.readouterr().out.startswith("2026-W45: 0.750 (15/20 reviewed golden images), 95% interval 0.531..")
    cli.main(["review-export", "--out", str(out)])  # what is decided is not asked again
    assert "10 Label Studio task(s)" in capsys.readouterr().out


def test_mislabel_flags_are_queued_from_the_command_line(root, capsys: pytest.CaptureFixture[str]) -> None:
    flags = root / storage.MODELS / "digits-v2" / "label_flags.jsonl"
    flags.parent.mkdir(parents=True)
    flag = {"schema": "label_flag/1", "sha256": sha("a"), "given_label": "1", "suggested_label": "7"}
    flags.write_text(json.dumps(flag | {"suggested_probability": 0.9}) + "\n")
    cli.main(["review-enqueue-flags", "digits-v2"])
    assert "1 likely mislabel(s) of digits-v2 queued for review" in capsys.readouterr().out
    cli.main(["production-accuracy"])
    assert capsys.readouterr().out == "no reviewed golden-sample images yet\n"
