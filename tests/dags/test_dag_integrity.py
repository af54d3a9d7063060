"""Every DAG imports fast, without heavy libraries, and carries what on-call needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "datasets", "trl", "deepspeed", "sklearn", "matplotlib", "duckdb")

_PROBE = r"""
import json, sys, time
t = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag_import = time.perf_counter() - t
t = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parse = time.perf_counter() - t
dags = {}
def callbacks(cb):  # a list, or (mapped operators) the bare value from default_args
    return [type(c).__name__ for c in (cb if isinstance(cb, list) else [cb] if cb else [])]
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md),
        "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries, "doc": bool(t.doc_md or t.doc),
                              "alerts": callbacks(t.on_failure_callback)}
                  for t in dag.tasks},
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "parse_s": parse, "dags": dags,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))}))
"""


@pytest.fixture(scope="module")
def dagbag() -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO_ROOT / "dags"), json.dumps(HEAVY)],
        capture_output=True, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_dag_imports_without_errors(dagbag: dict) -> None:
    assert dagbag["errors"] == {}
    assert {"curate_dataset"} <= set(dagbag["dags"])


def test_parsing_is_fast_and_light(dagbag: dict) -> None:
    assert dagbag["parse_s"] < 2.0, f"parsing all DAGs took {dagbag['parse_s']:.2f}s"
    assert dagbag["heavy"] == [], f"heavy modules imported at parse time: {dagbag['heavy']}"


def test_dags_and_tasks_carry_owner_retries_tags_docs_and_alerting(dagbag: dict) -> None:
    for dag_id, dag in dagbag["dags"].items():
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["doc_md"], f"{dag_id} has no doc_md runbook"
        for task_id, task in dag["tasks"].items():
            assert task["owner"] == "ml-platform", f"{dag_id}.{task_id} owner"
            assert task["retries"] >= 1, f"{dag_id}.{task_id} has no retries"
            assert task["doc"], f"{dag_id}.{task_id} has no doc_md"
            assert task["alerts"] in (["LocalAlertNotifier"], ["SnsAlertNotifier"]), f"{dag_id}.{task_id} alerting"
