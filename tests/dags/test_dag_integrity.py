"""Every DAG imports fast, without heavy libraries, carries what on-call needs, and has the same shape on both
backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

HEAVY = ("torch", "transformers", "datasets", "trl", "deepspeed", "sklearn", "matplotlib", "duckdb")
DAGS = {
    "curate_dataset",
    "finetune_llava",
    "deploy_endpoint",
    "teardown_endpoint",
    "classify_images",
    "classify_backlog",
    "publish_reviews",
}
BACKENDS = ("local", "sagemaker")
_PROBE = r"""
import json, re, sys, time
from airflow.dag_processing.dagbag import DagBag
t = time.process_time()  # CPU seconds: what parsing costs, whatever else shares the cores
bag = DagBag(dag_folder=sys.argv[1])
parse = time.process_time() - t
dags = {}
def callbacks(cb):  # a list, or (mapped operators) the bare value from default_args
    return [type(c).__name__ for c in (cb if isinstance(cb, list) else [cb] if cb else [])]
def form_errors(params):  # what the trigger and backfill forms check before enabling their button
    try:
        params.validate()
    except Exception as error:
        return [str(error)]
    return [name for name, value in params.dump().items() if value == ""]  # "" reads as a missing value there
ITALIC = re.compile(r"(?<![*\w])\*(?![*\s])[^*]+?(?<![*\s])\*(?![*\w])")  # *emphasis*, not **bold**
def italics(md):
    return ITALIC.findall(md or "")
for dag_id, dag in bag.dags.items():
    dags[dag_id] = {
        "form_errors": form_errors(dag.params),
        "deadlines": [alert.name for alert in (dag.deadline or [])],
        "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md), "description": dag.description or "",
        "italics": italics(dag.doc_md),
        "tasks": {t.task_id: {"owner": t.owner, "retries": t.retries, "doc": bool(t.doc_md or t.doc),
                              "runbook": "Runbook" in (t.doc_md or ""), "italics": italics(t.doc_md),
                              "alerts": callbacks(t.on_failure_callback),
                              "upstream": sorted(t.upstream_task_ids), "leaf": not t.downstream_task_ids,
                              "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
                              "teardown": t.is_teardown}
                  for t in dag.tasks},
    }
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "parse_s": parse, "dags": dags,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))}))
"""


def parse(backend: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(REPO_ROOT / "dags"), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PIPELINE_BACKEND": backend},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bags() -> dict[str, dict]:
    return {backend: parse(backend) for backend in BACKENDS}


@pytest.fixture(scope="module")
def dagbag(bags: dict[str, dict]) -> dict:
    return bags["local"]


def test_every_dag_imports_without_errors(bags: dict[str, dict]) -> None:
    for backend, bag in bags.items():
        assert bag["errors"] == {}, backend
        assert set(bag["dags"]) == DAGS, backend


def ancestors(tasks: dict[str, dict]) -> dict[str, set[str]]:
    """Every task's transitive upstream: the order that matters, whatever edges imply it."""

    def above(task_id: str) -> set[str]:
        direct = set(tasks[task_id]["upstream"])
        return direct.union(*(above(up) for up in direct))

    return {task_id: above(task_id) for task_id in tasks}


def test_both_backends_give_every_dag_the_same_tasks_in_the_same_order(bags: dict[str, dict]) -> None:
    for dag_id in DAGS:
        local, sagemaker = (bags[backend]["dags"][dag_id]["tasks"] for backend in BACKENDS)
        assert sorted(local) == sorted(sagemaker), dag_id
        assert ancestors(local) == ancestors(sagemaker), dag_id


def test_parsing_is_fast_and_light(dagbag: dict) -> None:
    assert dagbag["parse_s"] < 2.0, f"parsing all DAGs took {dagbag['parse_s']:.2f} CPU seconds"
    assert dagbag["heavy"] == [], f"heavy modules imported at parse time: {dagbag['heavy']}"


def test_dags_and_tasks_carry_owner_retries_tags_docs_and_alerting(bags: dict[str, dict]) -> None:
    for dag_id, dag in (item for bag in bags.values() for item in bag["dags"].items()):
        assert dag["tags"], f"{dag_id} has no tags"
        assert dag["doc_md"], f"{dag_id} has no doc_md runbook"
        # the DAG list shows it under the name: one line saying what the DAG does
        assert dag["description"].strip(), f"{dag_id} has no description"
        assert "\n" not in dag["description"] and len(dag["description"]) <= 120, f"{dag_id}: one short line"
        for task_id, task in dag["tasks"].items():
            assert task["owner"] == "ml-platform", f"{dag_id}.{task_id} owner"
            assert task["retries"] >= 1, f"{dag_id}.{task_id} has no retries"
            assert task["doc"], f"{dag_id}.{task_id} has no doc_md"
            assert task["alerts"] in (["LocalAlertNotifier"], ["SnsAlertNotifier"]), f"{dag_id}.{task_id} alerting"


def test_runbooks_emphasise_with_bold_which_the_ui_shows(bags: dict[str, dict]) -> None:
    """Airflow's markdown CSS does not italicise <em>: a runbook's `*error*: action` pairs read as one run-on
    paragraph in the UI (on-call review 2026-12-02), so errors are written **error**: action."""
    for dag_id, dag in (item for bag in bags.values() for item in bag["dags"].items()):
        assert dag["italics"] == [], f"{dag_id} doc_md: write **…**, not *…*"
        for task_id, task in dag["tasks"].items():
            assert task["italics"] == [], f"{dag_id}.{task_id} doc_md: write **…**, not *…*"


def test_a_failed_task_fails_its_run(bags: dict[str, dict]) -> None:
    """A run's state is its leaves' (teardowns aside): a leaf that runs whatever happened upstream (all_done) would
    turn a run whose work failed green. Such a task must be a teardown."""
    for dag_id, dag in (item for bag in bags.values() for item in bag["dags"].items()):
        for task_id, task in dag["tasks"].items():
            if task["leaf"] and not task["teardown"]:
                assert task["trigger_rule"] not in ("all_done", "always", "one_done"), f"{dag_id}.{task_id} masks"


def test_every_dag_can_be_triggered_from_the_ui_form_with_its_defaults(bags: dict[str, dict]) -> None:
    # The Airflow 3.3 trigger/backfill forms keep the button disabled for an empty-string default (a missing value)
    # and for defaults that fail their own schema: optional values are Param(None, type=["null", ...]).
    for backend, bag in bags.items():
        for dag_id, dag in bag["dags"].items():
            assert dag["form_errors"] == [], f"{backend}: {dag_id}"


def test_the_nightly_dag_pages_when_a_night_is_overdue(bags: dict[str, dict]) -> None:
    for bag in bags.values():
        assert bag["dags"]["classify_images"]["deadlines"] == ["nightly run overdue"]


# Tasks that fail for a reason an operator can act on (a param, missing input, the endpoint, a budget, a gate).
RUNBOOK_TASKS = {
    "curate_dataset": {"curate"},
    "finetune_llava": {"plan", "train", "evaluate", "approve_promotion", "promote"},
    "deploy_endpoint": {"smoke_test"},
    "classify_images": {"plan_partition", "check_budget", "classify_shard", "quality_gate"},
}


def test_tasks_that_fail_for_an_operators_reason_carry_a_runbook(dagbag: dict) -> None:
    for dag_id, task_ids in RUNBOOK_TASKS.items():
        tasks = dagbag["dags"][dag_id]["tasks"]
        assert [t for t in sorted(task_ids) if not tasks[t]["runbook"]] == [], dag_id
