"""Issue 18 item 1: every URI param of every DAG is refused in the first task that uses it when it lies outside the
storage root and the input roots, and nothing outside is listed or opened — checked with a Python audit hook
(every open, listdir, scandir, remove, rename, mkdir the process makes), over each DAG's real param defaults.

A new DAG or a new `*_uri` param without a case below fails `test_every_uri_param_of_every_dag_has_a_case`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from support.endpoints import endpoint_record
from tasks.common.settings import Settings, load_settings
from tasks.common.storage import ContainmentError
from tests.conftest import REPO_ROOT, encode, pattern

_PARAMS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
print(json.dumps({dag_id: dag.params.dump() for dag_id, dag in bag.dags.items()}, default=str))
"""
AUDITED = ("open", "os.listdir", "os.scandir", "os.remove", "os.rmdir", "os.rename", "os.mkdir", "shutil.rmtree")
_seen: list[tuple[str, str]] | None = None  # recording while a list


def _audit(event: str, args: tuple) -> None:
    if _seen is not None and event in AUDITED and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _seen.append((event, os.fsdecode(args[0])))


sys.addaudithook(_audit)  # hooks cannot be removed: it records only inside touched()


def touched(call: Callable[[], Any]) -> tuple[BaseException | None, list[tuple[str, str]]]:
    global _seen
    _seen = []
    try:
        call()
    except BaseException as exc:
        return exc, _seen
    finally:
        seen, _seen = _seen, None
    return None, seen


@pytest.fixture(scope="module")
def dag_params() -> dict[str, dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run(
        [sys.executable, "-c", _PARAMS, str(REPO_ROOT / "dags")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def nightly_sensor(settings: Settings, params: dict) -> Any:
    from tasks.nightly.steps import look_for_partition

    return look_for_partition(settings, params, datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC))


def backlog_plan(settings: Settings, params: dict) -> Any:
    from tasks.backlog.steps import plan_backlog

    return plan_backlog(
        settings,
        params | {"from_date": "2026-11-02", "to_date": "2026-11-03"},
        "manual__x",
        None,
        datetime(2026, 11, 4, tzinfo=UTC),
    )


def curate(settings: Settings, params: dict) -> Any:
    from tasks.curation.steps import curate as curate_step

    return curate_step(settings, params, "20261102T000000")


def smoke(settings: Settings, params: dict) -> Any:
    from tasks.serving.deployment import smoke_image

    return smoke_image(params["smoke_image_uri"], settings)


def training_dataset(settings: Settings, params: dict) -> Any:
    from tasks.training.plan import find_dataset

    return find_dataset(params["dataset_uri"], [], settings)


# (dag_id, param) -> the first task body that uses the param, called with the DAG's params.
CASES: dict[tuple[str, str], Callable[[Settings, dict], Any]] = {
    ("classify_images", "incoming_uri"): nightly_sensor,
    ("classify_backlog", "incoming_uri"): backlog_plan,
    ("curate_dataset", "raw_uri"): curate,
    ("curate_dataset", "dataset_uri"): curate,
    ("deploy_endpoint", "smoke_image_uri"): smoke,
    ("finetune_llava", "dataset_uri"): training_dataset,
}
HOSTILE = ["file:///etc/", "{outside}", "{outside}/3/a.png", "{root}/incoming/../../outside", "{root}/link"]


def test_every_uri_param_of_every_dag_has_a_case(dag_params: dict[str, dict[str, Any]]) -> None:
    uri_params = {(dag, p) for dag, params in dag_params.items() for p in params if p.endswith("_uri")}
    assert uri_params == set(CASES)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A storage root with a symlink out of it, and an outside folder holding an image and a secret."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "3").mkdir(parents=True)
    (outside / "3" / "a.png").write_bytes(encode(pattern(seed=1)))
    (outside / "secret.txt").write_bytes(b"secret")
    (root / "incoming").mkdir(parents=True)
    (root / "link").symlink_to(outside)
    # An endpoint is deployed (so nothing stops a DAG before it reaches the param) without a server to start.
    from tasks.nightly import classification

    monkeypatch.setattr(classification, "deployed_endpoint", lambda *a, **k: endpoint_record("http://127.0.0.1:9"))
    return root, outside


@pytest.mark.parametrize("uri", HOSTILE)
@pytest.mark.parametrize("case", list(CASES), ids=lambda case: f"{case[0]}.{case[1]}")
def test_a_hostile_uri_param_is_refused_before_anything_outside_is_touched(world, dag_params, case, uri) -> None:
    root, outside = world
    dag_id, param = case
    settings = load_settings({"PIPELINE_STORAGE_URI": root.as_uri()})
    hostile = uri.format(root=root.as_uri(), outside=outside.as_uri())
    params = dag_params[dag_id] | {param: hostile}
    if dag_id == "curate_dataset" and param == "dataset_uri":
        params["raw_uri"] = f"{root.as_uri()}/raw"
    call = lambda: CASES[case](settings, params)  # noqa: E731
    touched(call)  # once, so that imports (which read files of their own) are not what the audit sees
    error, seen = touched(call)

    assert isinstance(error, ContainmentError) and f"param {param}" in str(error), error
    outside_paths = [
        (event, path)
        for event, path in seen
        if path.startswith((str(outside), "/etc")) or os.path.realpath(path).startswith(str(outside))
    ]
    assert outside_paths == []
